//! Authentication-Results (RFC 8601): writing our own header, reading
//! trusted ones, and finding forged ones to delete.
//!
//! The writer lays results out the way OpenDKIM and OpenDMARC do (one result
//! per folded line) so that log scrapers and downstream filters keep
//! working, but it quotes anything that is not a plain token: a hostile
//! domain name must never be able to add a `;`-separated result of its own.
//!
//! The parser is written for hostile input. OpenDMARC's had buffer overflows
//! on headers with many results (OpenDMARC issue #441) and let a crafted
//! `header.d` smuggle a second domain past it (CVE-2020-12272). Here the
//! input length and the number of results are capped, nothing recurses,
//! every property value is exactly one syntactic unit, and a clause that
//! does not parse is dropped whole rather than guessed at.
//!
//! [`forged_indexes`] finds incoming headers that claim to come from us, in
//! the descending order that makes deleting them with the milter
//! change-header action safe (OpenDKIM's ascending order deleted the wrong
//! headers, CVE-2022-48521).

use std::borrow::Cow;
use std::fmt::Write as _;

/// At most this many results are kept from one header; the rest are
/// ignored and [`Parsed::truncated`] is set. Real headers carry a handful.
pub const MAX_RESULTS: usize = 64;

/// Longer header values are refused outright (64 KiB), bounding the work a
/// single header can cause.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// One result: `method=result reason="..." (comment) ptype.property=value ...`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResInfo {
    /// The method, such as `dkim`, `spf`, `dmarc`, `dkim-atps`.
    pub method: String,
    /// The result keyword, such as `pass` or `permerror`.
    pub result: String,
    /// Free text, written as `reason="..."`.
    pub reason: Option<String>,
    /// Free text, written as `(...)`, e.g. `2048-bit key`.
    pub comment: Option<String>,
    /// Properties in order, keyed `ptype.property` (e.g. `header.d`).
    pub props: Vec<(String, String)>,
}

/// A whole Authentication-Results header value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthResults {
    /// Who did the checks (usually the MTA host name).
    pub authserv_id: String,
    /// The results; empty means `none`.
    pub results: Vec<ResInfo>,
}

/// What [`parse_full`] found, with the details [`parse`] leaves out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    /// The header contents.
    pub header: AuthResults,
    /// The optional authserv-id version (`example.com 1;`).
    pub version: Option<u32>,
    /// True if more than [`MAX_RESULTS`] results were present and the
    /// excess was ignored.
    pub truncated: bool,
    /// How many `;`-separated clauses were malformed and dropped.
    pub skipped: usize,
}

/// Why a header value could not be parsed at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthResError {
    /// The value is longer than [`MAX_VALUE_LEN`].
    #[error("Authentication-Results value is {len} bytes long; at most {max} are accepted")]
    TooLong {
        /// Actual length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Nothing (or only comments) where the authserv-id belongs.
    #[error("Authentication-Results value has no authserv-id")]
    MissingAuthservId,
    /// A `"` without its closing quote.
    #[error("unterminated quoted string at byte {0}")]
    UnterminatedQuote(usize),
    /// A `(` without its closing parenthesis.
    #[error("unterminated comment at byte {0}")]
    UnterminatedComment(usize),
    /// Something other than a version number or `;` after the authserv-id.
    #[error("expected ';' after the authserv-id at byte {0}")]
    ExpectedSemicolon(usize),
    /// The authserv-id version is not a number that fits.
    #[error("bad authserv-id version at byte {0}")]
    BadVersion(usize),
}

impl ResInfo {
    /// A result with no reason, comment or properties.
    pub fn new(method: impl Into<String>, result: impl Into<String>) -> ResInfo {
        ResInfo {
            method: method.into(),
            result: result.into(),
            ..ResInfo::default()
        }
    }

    /// Adds `reason="..."`.
    pub fn with_reason(mut self, reason: impl Into<String>) -> ResInfo {
        self.reason = Some(reason.into());
        self
    }

    /// Adds `(comment)`.
    pub fn with_comment(mut self, comment: impl Into<String>) -> ResInfo {
        self.comment = Some(comment.into());
        self
    }

    /// Appends a property such as `("header.d", "example.com")`.
    pub fn with_prop(mut self, key: impl Into<String>, value: impl Into<String>) -> ResInfo {
        self.props.push((key.into(), value.into()));
        self
    }

    /// The first value of a property (`key` compared case-insensitively).
    pub fn prop(&self, key: &str) -> Option<&str> {
        self.props
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// False if the method or result has no valid characters at all; such a
    /// result cannot be written in a form that parses back.
    fn writable(&self) -> bool {
        !keyword(&self.method, false).is_empty() && !keyword(&self.result, false).is_empty()
    }

    fn write_to(&self, out: &mut String) {
        out.push_str(&keyword(&self.method, false));
        out.push('=');
        out.push_str(&keyword(&self.result, false));
        if let Some(reason) = &self.reason {
            out.push_str(" reason=");
            write_quoted(out, reason);
        }
        if let Some(comment) = &self.comment {
            let comment = sanitize_comment(comment);
            if !comment.trim().is_empty() {
                out.push_str(" (");
                out.push_str(&comment);
                out.push(')');
            }
        }
        for (key, value) in &self.props {
            // Only `ptype.property` keys can be read back; anything else
            // would make the whole result unparseable, so it is left out.
            let key = keyword(key, true);
            let well_formed = key.split_once('.').is_some_and(|(ptype, prop)| {
                !ptype.is_empty() && !prop.is_empty() && !prop.ends_with('.')
            });
            if !well_formed {
                continue;
            }
            out.push(' ');
            out.push_str(&key);
            out.push('=');
            write_pvalue(out, value);
        }
    }
}

impl AuthResults {
    /// A header with no results yet.
    pub fn new(authserv_id: impl Into<String>) -> AuthResults {
        AuthResults {
            authserv_id: authserv_id.into(),
            results: Vec::new(),
        }
    }

    /// The header value (without the `Authentication-Results:` name), each
    /// result on its own line folded with a bare `\n\t` (the MTA adds the
    /// CR), or `ID; none` if there are no results.
    ///
    /// Everything that came from outside (domains, selectors, reasons) is
    /// quoted or cleaned so the value always parses back to exactly the
    /// results given.
    pub fn to_value(&self) -> String {
        let mut out = String::new();
        write_authserv_id(&mut out, &self.authserv_id);
        out.push(';');
        let mut results = self.results.iter().filter(|r| r.writable()).peekable();
        if results.peek().is_none() {
            out.push_str(" none");
            return out;
        }
        for (i, res) in results.enumerate() {
            if i > 0 {
                out.push(';');
            }
            out.push_str("\n\t");
            res.write_to(&mut out);
        }
        out
    }
}

/// RFC 2045 token characters: printable ASCII except tspecials.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

/// RFC 5322 atext.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|part| !part.is_empty() && part.bytes().all(is_atext))
}

/// Keeps only the characters a method, result or property name may have;
/// these come from our own code, so this is a guard, not a translation.
fn keyword(s: &str, allow_dot: bool) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || (allow_dot && *c == '.'))
        .collect()
}

/// The authserv-id is written bare if it is a token, with `/` also allowed
/// because OpenDKIM's `AuthservIDWithJobID` writes `host/QUEUEID` bare and
/// consumers expect that; anything else is quoted.
fn write_authserv_id(out: &mut String, id: &str) {
    if !id.is_empty() && id.bytes().all(|b| b == b'/' || is_token_byte(b)) {
        out.push_str(id);
    } else {
        write_quoted(out, id);
    }
}

/// A property value: bare if it is a token or `[local-part]@domain` (as in
/// `header.i=@example.com`), otherwise a quoted-string.
fn write_pvalue(out: &mut String, value: &str) {
    let bare = is_token(value)
        || value.rsplit_once('@').is_some_and(|(local, domain)| {
            (local.is_empty() || is_dot_atom(local)) && is_dot_atom(domain)
        });
    if bare {
        out.push_str(value);
    } else {
        write_quoted(out, value);
    }
}

/// A quoted-string with `"` and `\` escaped; control characters (CR, LF,
/// NUL ...) are dropped and tabs become spaces, so the value can neither end
/// the header nor the string early.
fn write_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Makes comment text safe inside `( )`: control characters go, backslashes
/// are escaped, and parentheses that do not pair up are dropped, so the
/// comment always ends exactly where we close it.
fn sanitize_comment(s: &str) -> String {
    let chars: Vec<char> = s
        .chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .filter(|c| !c.is_control())
        .collect();
    let mut keep = vec![true; chars.len()];
    let mut open: Vec<usize> = Vec::new();
    for (i, c) in chars.iter().enumerate() {
        match c {
            '(' => open.push(i),
            // A `)` is kept only if it closes an earlier `(`.
            ')' => keep[i] = open.pop().is_some(),
            _ => {}
        }
    }
    for i in open {
        keep[i] = false;
    }
    let mut out = String::with_capacity(chars.len());
    for (c, k) in chars.into_iter().zip(keep) {
        if !k {
            continue;
        }
        if c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------
// Parser

/// Parses a header value (the text after the colon; leading whitespace and
/// folds are fine). Malformed clauses are dropped; see [`parse_full`] for
/// how many, and whether the result list was truncated.
pub fn parse(value: &str) -> Result<AuthResults, AuthResError> {
    parse_full(value).map(|p| p.header)
}

/// Like [`parse`], also reporting the version, truncation and skipped
/// clauses.
///
/// Method, result, `reason`, ptype and property names are lowercased;
/// values keep their case. Only the first comment of each result is kept
/// (it is where OpenDKIM puts the key size and OpenDMARC the policy). A
/// clause with any syntax error (for example `header.d=evil.com
/// example.com`, or an unterminated comment inside a value) is dropped
/// whole, so a result is never built from a guess.
pub fn parse_full(value: &str) -> Result<Parsed, AuthResError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(AuthResError::TooLong {
            len: value.len(),
            max: MAX_VALUE_LEN,
        });
    }
    let mut cur = Cursor::new(value);
    cur.skip_cfws(None)?;
    let id = cur.authserv_id()?.ok_or(AuthResError::MissingAuthservId)?;
    cur.skip_cfws(None)?;
    let mut parsed = Parsed::default();
    if cur.peek().is_some_and(|b| b.is_ascii_digit()) {
        let start = cur.pos;
        let digits = cur.take_while(|b| b.is_ascii_digit());
        parsed.version = Some(
            digits
                .parse()
                .map_err(|_| AuthResError::BadVersion(start))?,
        );
        cur.skip_cfws(None)?;
    }
    match cur.peek() {
        Some(b';') => {}
        _ => return Err(AuthResError::ExpectedSemicolon(cur.pos)),
    }
    parsed.header.authserv_id = id;
    while cur.peek() == Some(b';') {
        cur.pos += 1;
        if parsed.header.results.len() >= MAX_RESULTS {
            // Anything non-blank after the cap counts as ignored results.
            let mut rest = cur.clone();
            if rest.skip_cfws(None).is_err() || rest.peek().is_some() {
                parsed.truncated = true;
            }
            break;
        }
        let start = cur.pos;
        match cur.clause() {
            Ok(Some(res)) => parsed.header.results.push(res),
            Ok(None) => {}
            Err(()) => {
                parsed.skipped += 1;
                cur.pos = start;
                cur.recover();
            }
        }
    }
    Ok(parsed)
}

/// Bytes that may appear in an unquoted value. RFC 2045 tokens are
/// stricter, but real headers carry `/`, `=`, `+` (base64 in `header.b`),
/// `@` and UTF-8 bare. What matters for safety is what ends a value:
/// whitespace, `;`, `(`, `)`, `"` and `\` always do.
fn is_value_byte(b: u8) -> bool {
    b >= 0x80 || (b.is_ascii_graphic() && !b";()\"\\".contains(&b))
}

/// RFC 8601 keywords, with `_` tolerated.
fn is_keyword_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

#[derive(Clone)]
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Cursor<'a> {
        Cursor { text, pos: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    /// Consumes bytes while `f` holds; the run always ends at an ASCII byte
    /// or the end, so slicing at the boundaries is valid UTF-8.
    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        self.text.get(start..self.pos).unwrap_or("")
    }

    /// Skips whitespace (including CR and LF, which only appear in folds)
    /// and comments; comments are collected into `comments` if given.
    fn skip_cfws(&mut self, mut comments: Option<&mut Vec<String>>) -> Result<(), AuthResError> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r' | b'\n') => self.pos += 1,
                Some(b'(') => {
                    let text = self.comment()?;
                    if let Some(c) = comments.as_deref_mut() {
                        c.push(text);
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// Reads a (possibly nested) comment starting at `(`; returns its text
    /// without the outer parentheses. Iterative, so nesting depth costs no
    /// stack.
    fn comment(&mut self) -> Result<String, AuthResError> {
        let start = self.pos;
        self.pos += 1;
        let mut depth = 1usize;
        let mut text = Vec::new();
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b'\\' => {
                    if let Some(next) = self.peek() {
                        self.pos += 1;
                        text.push(next);
                    }
                }
                b'(' => {
                    depth += 1;
                    text.push(b);
                }
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(unfold(&text));
                    }
                    text.push(b);
                }
                _ => text.push(b),
            }
        }
        Err(AuthResError::UnterminatedComment(start))
    }

    /// Reads a quoted-string starting at `"`; returns its unescaped content
    /// with folds removed.
    fn quoted(&mut self) -> Result<String, AuthResError> {
        let start = self.pos;
        self.pos += 1;
        let mut text = Vec::new();
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b'\\' => {
                    if let Some(next) = self.peek() {
                        self.pos += 1;
                        text.push(next);
                    }
                }
                b'"' => return Ok(unfold(&text)),
                _ => text.push(b),
            }
        }
        Err(AuthResError::UnterminatedQuote(start))
    }

    /// The authserv-id: a quoted-string or a token (with `/` allowed for
    /// OpenDKIM's `id/jobid`). `Ok(None)` if neither is there.
    fn authserv_id(&mut self) -> Result<Option<String>, AuthResError> {
        match self.peek() {
            Some(b'"') => self.quoted().map(Some),
            _ => {
                let id = self.take_while(|b| b == b'/' || is_token_byte(b));
                Ok((!id.is_empty()).then(|| id.to_string()))
            }
        }
    }

    /// A reason or property value: one quoted-string (optionally followed
    /// directly by `@domain`, for a quoted local-part) or one bare run.
    fn value(&mut self) -> Result<String, ()> {
        match self.peek() {
            Some(b'"') => {
                let mut v = self.quoted().map_err(|_| ())?;
                if self.peek() == Some(b'@') {
                    v.push_str(self.take_while(is_value_byte));
                }
                Ok(v)
            }
            _ => {
                let v = self.take_while(is_value_byte);
                if v.is_empty() {
                    Err(())
                } else {
                    Ok(v.to_string())
                }
            }
        }
    }

    fn keyword(&mut self) -> Result<String, ()> {
        let k = self.take_while(is_keyword_byte);
        if k.is_empty() {
            Err(())
        } else {
            Ok(k.to_ascii_lowercase())
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), ()> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(())
        }
    }

    fn at_clause_end(&self) -> bool {
        matches!(self.peek(), None | Some(b';'))
    }

    /// Parses one clause after its `;`, leaving the cursor on the next `;`
    /// or at the end. `Ok(None)` for an empty clause or `none`.
    fn clause(&mut self) -> Result<Option<ResInfo>, ()> {
        // Comments before the result are skipped; of those after it, the
        // first is kept as the result's comment.
        let mut comments = Vec::new();
        let ws =
            |c: &mut Self, comments: &mut Vec<String>| c.skip_cfws(Some(comments)).map_err(|_| ());
        let skip = |c: &mut Self| c.skip_cfws(None).map_err(|_| ());
        skip(self)?;
        if self.at_clause_end() {
            return Ok(None);
        }
        let method = self.keyword()?;
        skip(self)?;
        if method == "none" && self.at_clause_end() {
            return Ok(None);
        }
        if self.peek() == Some(b'/') {
            self.pos += 1;
            skip(self)?;
            if self.take_while(|b| b.is_ascii_digit()).is_empty() {
                return Err(());
            }
            skip(self)?;
        }
        self.expect(b'=')?;
        skip(self)?;
        let result = self.keyword()?;
        let mut res = ResInfo::new(method, result);
        loop {
            // Each unit must be followed by whitespace, a comment, `;` or
            // the end: `header.d=a"b"` or `pass(x)y` stay errors because the
            // next unit would then have to start with an invalid byte.
            ws(self, &mut comments)?;
            if self.at_clause_end() {
                break;
            }
            let name = self.keyword()?;
            ws(self, &mut comments)?;
            match self.peek() {
                Some(b'=') if name == "reason" && res.reason.is_none() && res.props.is_empty() => {
                    self.pos += 1;
                    ws(self, &mut comments)?;
                    res.reason = Some(self.value()?);
                }
                Some(b'.') => {
                    self.pos += 1;
                    ws(self, &mut comments)?;
                    let property = self.take_while(|b| is_keyword_byte(b) || b == b'.');
                    if property.is_empty() {
                        return Err(());
                    }
                    ws(self, &mut comments)?;
                    self.expect(b'=')?;
                    ws(self, &mut comments)?;
                    let v = self.value()?;
                    res.props
                        .push((format!("{name}.{}", property.to_ascii_lowercase()), v));
                }
                _ => return Err(()),
            }
        }
        res.comment = comments.into_iter().next();
        Ok(Some(res))
    }

    /// After a bad clause: skips to the next `;` outside quotes and
    /// comments, or to the end if a quote or comment never closes.
    fn recover(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b';' => return,
                b'"' => {
                    if self.quoted().is_err() {
                        self.pos = self.text.len();
                    }
                }
                b'(' => {
                    if self.comment().is_err() {
                        self.pos = self.text.len();
                    }
                }
                _ => self.pos += 1,
            }
        }
    }
}

/// Collected bytes back to text, with folding CR/LF removed.
fn unfold(bytes: &[u8]) -> String {
    let kept: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| *b != b'\r' && *b != b'\n')
        .collect();
    String::from_utf8_lossy(&kept).into_owned()
}

// ---------------------------------------------------------------------------
// Forged-header detection

/// The authserv-id of an A-R value with any `/jobid` suffix removed (as
/// OpenDKIM's `AuthservIDWithJobID` writes it), or `None` if there is none.
///
/// Only the leading id is needed, so this succeeds even when the rest of
/// the value is garbage: an attacker must not escape removal of a forged
/// header by breaking its syntax after our id. The id is read as a
/// quoted-string or as a run of token characters, after skipping leading
/// whitespace and comments.
pub fn authserv_id(value: &str) -> Option<String> {
    let mut cur = Cursor::new(value);
    // Bounded: comments and quotes are scanned linearly; an unterminated
    // leading comment means there is no id to be read.
    cur.skip_cfws(None).ok()?;
    let start = cur.pos;
    let id = match cur.authserv_id() {
        Ok(id) => id?,
        // An unterminated quoted id: take what follows the quote so that
        // `"mx.example.net` is still recognised as ours.
        Err(_) => {
            cur.pos = start + 1;
            let rest = cur.take_while(|b| b == b'/' || is_token_byte(b));
            if rest.is_empty() {
                return None;
            }
            rest.to_string()
        }
    };
    let id = id.split('/').next().unwrap_or("").trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// Normal form for comparing ids: `/jobid` removed, one trailing dot
/// removed, lowercased.
pub fn id_key(id: &str) -> String {
    let id = id.split('/').next().unwrap_or("").trim();
    id.strip_suffix('.').unwrap_or(id).to_ascii_lowercase()
}

/// The 1-based occurrence indexes, among the headers named
/// Authentication-Results (case-insensitively), whose authserv-id is one of
/// `ours`, in descending order.
///
/// Ids compare case-insensitively, ignoring a `/jobid` suffix and a
/// trailing dot on either side. Deleting the returned occurrences one by one
/// with the milter change-header action is correct whether or not the MTA
/// renumbers the remaining headers after each deletion, because deleting a
/// later occurrence never moves an earlier one. Header values that are not
/// UTF-8 are read lossily for the id check.
pub fn forged_indexes<N, V>(headers: &[(N, V)], ours: &[String]) -> Vec<u32>
where
    N: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let ours: Vec<String> = ours
        .iter()
        .map(|o| id_key(o))
        .filter(|o| !o.is_empty())
        .collect();
    let mut found = Vec::new();
    let mut occurrence: u32 = 0;
    for (name, value) in headers {
        if !name
            .as_ref()
            .trim_ascii()
            .eq_ignore_ascii_case(b"Authentication-Results")
        {
            continue;
        }
        occurrence = occurrence.saturating_add(1);
        let value: Cow<'_, str> = String::from_utf8_lossy(value.as_ref());
        if let Some(id) = authserv_id(&value) {
            if ours.contains(&id_key(&id)) {
                found.push(occurrence);
            }
        }
    }
    found.reverse();
    found
}

/// RFC 8601 result words, as both daemons report them (DKIM: pass, fail, neutral, policy,
/// temperror, permerror; DMARC: pass, fail, none, temperror, permerror).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultWord {
    Pass,
    Fail,
    None,
    Neutral,
    Policy,
    TempError,
    PermError,
}

impl ResultWord {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultWord::Pass => "pass",
            ResultWord::Fail => "fail",
            ResultWord::None => "none",
            ResultWord::Neutral => "neutral",
            ResultWord::Policy => "policy",
            ResultWord::TempError => "temperror",
            ResultWord::PermError => "permerror",
        }
    }
}

/// Writes `results` as a one-line summary for logs, e.g.
/// `dkim=pass header.d=example.com`; used by tests and debug output.
pub fn summary(results: &AuthResults) -> String {
    let mut out = String::new();
    for (i, r) in results.results.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let _ = write!(out, "{}={}", r.method, r.result);
        for (k, v) in &r.props {
            let _ = write!(out, " {k}={v}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dkim_pass() -> ResInfo {
        ResInfo::new("dkim", "pass")
            .with_comment("2048-bit key")
            .with_prop("header.d", "example.com")
            .with_prop("header.i", "@example.com")
            .with_prop("header.a", "rsa-sha256")
            .with_prop("header.s", "sel1")
            .with_prop("header.b", "AbCdEfGh")
    }

    #[test]
    fn writer_layout() {
        let ar = AuthResults {
            authserv_id: "mx.example.net".into(),
            results: vec![dkim_pass()],
        };
        assert_eq!(
            ar.to_value(),
            "mx.example.net;\n\tdkim=pass (2048-bit key) header.d=example.com header.i=@example.com header.a=rsa-sha256 header.s=sel1 header.b=AbCdEfGh"
        );
        let ar = AuthResults {
            authserv_id: "mx.example.net".into(),
            results: vec![
                ResInfo::new("dkim", "fail")
                    .with_reason("signature verification failed")
                    .with_comment("1024-bit key; unprotected")
                    .with_prop("header.d", "example.com"),
                ResInfo::new("dkim-atps", "neutral"),
            ],
        };
        assert_eq!(
            ar.to_value(),
            "mx.example.net;\n\tdkim=fail reason=\"signature verification failed\" (1024-bit key; unprotected) header.d=example.com;\n\tdkim-atps=neutral"
        );
        assert_eq!(
            AuthResults::new("mx.example.net").to_value(),
            "mx.example.net; none"
        );
        // OpenDKIM's AuthservIDWithJobID form stays bare.
        assert_eq!(
            AuthResults::new("mx.example.net/4XyZ12").to_value(),
            "mx.example.net/4XyZ12; none"
        );
        assert_eq!(AuthResults::new("odd id;").to_value(), "\"odd id;\"; none");
        let mut bad = AuthResults::new("mx");
        bad.results.push(ResInfo::new("  ", "pass"));
        assert_eq!(bad.to_value(), "mx; none");
    }

    #[test]
    fn writer_quotes_hostile_values() {
        let ar = AuthResults {
            authserv_id: "mx.example.net".into(),
            results: vec![ResInfo::new("dkim", "pass")
                .with_reason("bad \"quote\" \\ and\r\nnewline")
                .with_comment("unbalanced ) ( (ok) \\ \x07bell")
                .with_prop("header.d", "evil.com; dkim=pass header.d=paypal.com")
                .with_prop("header.s", "a b")
                .with_prop("header.b", "ab/cd+ef")
                .with_prop("header.i", "user@example.com")
                .with_prop("header.x", "(x")
                .with_prop("bad key;", "v")
                .with_prop(".d", "v")
                .with_prop("header.", "v")],
        };
        let v = ar.to_value();
        assert_eq!(
            v,
            "mx.example.net;\n\tdkim=pass reason=\"bad \\\"quote\\\" \\\\ andnewline\" (unbalanced   (ok) \\\\ bell) header.d=\"evil.com; dkim=pass header.d=paypal.com\" header.s=\"a b\" header.b=\"ab/cd+ef\" header.i=user@example.com header.x=\"(x\""
        );
        let back = parse(&v).unwrap();
        assert_eq!(back.results.len(), 1);
        let r = &back.results[0];
        assert_eq!(r.reason.as_deref(), Some("bad \"quote\" \\ andnewline"));
        assert_eq!(
            r.prop("header.d"),
            Some("evil.com; dkim=pass header.d=paypal.com")
        );
        assert_eq!(r.prop("header.s"), Some("a b"));
        assert_eq!(r.prop("header.b"), Some("ab/cd+ef"));
        assert_eq!(r.prop("header.i"), Some("user@example.com"));
        assert_eq!(r.comment.as_deref(), Some("unbalanced   (ok) \\ bell"));
    }

    #[test]
    fn round_trip() {
        let ar = AuthResults {
            authserv_id: "mx.example.net".into(),
            results: vec![
                dkim_pass(),
                ResInfo::new("dkim", "fail")
                    .with_reason("key revoked")
                    .with_prop("header.d", "ex\"ample.org")
                    .with_prop("header.b", "x/y=z+"),
                ResInfo::new("spf", "pass").with_prop("smtp.mailfrom", "example.com"),
                ResInfo::new("dmarc", "pass")
                    .with_comment("p=reject dis=none")
                    .with_prop("header.from", "example.com"),
                ResInfo::new("arc", "pass").with_prop("arc.chain", "a.example:b.example"),
            ],
        };
        assert_eq!(parse(&ar.to_value()).unwrap(), ar);
        // Also with CRLF folds, as the header arrives from the MTA.
        let crlf = ar.to_value().replace('\n', "\r\n");
        assert_eq!(parse(&crlf).unwrap(), ar);
        let empty = AuthResults::new("mx.example.net");
        assert_eq!(parse(&empty.to_value()).unwrap(), empty);
    }

    #[test]
    fn parses_opendkim_and_opendmarc_samples() {
        let v = " mx.example.net; dkim=pass (2048-bit key; unprotected) header.d=example.com header.i=@example.com header.a=rsa-sha256 header.s=sel1 header.b=AbCdEfGh; dkim-atps=neutral";
        let p = parse(v).unwrap();
        assert_eq!(p.authserv_id, "mx.example.net");
        assert_eq!(p.results.len(), 2);
        let d = &p.results[0];
        assert_eq!((d.method.as_str(), d.result.as_str()), ("dkim", "pass"));
        assert_eq!(d.comment.as_deref(), Some("2048-bit key; unprotected"));
        assert_eq!(d.prop("header.d"), Some("example.com"));
        assert_eq!(d.prop("header.i"), Some("@example.com"));
        assert_eq!(d.prop("header.a"), Some("rsa-sha256"));
        assert_eq!(d.prop("header.s"), Some("sel1"));
        assert_eq!(d.prop("header.b"), Some("AbCdEfGh"));
        assert_eq!(p.results[1], ResInfo::new("dkim-atps", "neutral"));

        let p = parse("mx.example.net; dmarc=pass (p=reject dis=none) header.from=example.com")
            .unwrap();
        assert_eq!(
            p.results,
            vec![ResInfo::new("dmarc", "pass")
                .with_comment("p=reject dis=none")
                .with_prop("header.from", "example.com")]
        );
        let p = parse("mx.example.net; spf=pass smtp.mailfrom=example.com").unwrap();
        assert_eq!(
            p.results,
            vec![ResInfo::new("spf", "pass").with_prop("smtp.mailfrom", "example.com")]
        );
        let p = parse("mx.example.net; dkim=permerror (bad message/signature format)").unwrap();
        assert_eq!(p.results[0].result, "permerror");
        // OpenDKIM writes header.b with '/' and '+' unquoted.
        let p = parse("mx; dkim=pass header.b=Ab/Cd+Ef=").unwrap();
        assert_eq!(p.results[0].prop("header.b"), Some("Ab/Cd+Ef="));
    }

    #[test]
    fn rfc8601_syntax() {
        // Version, CFWS everywhere, case-folding, method version, quoted id.
        let v = "(c1) \"Example.COM\" (c2) 1 (c3); (c4)\r\n DKIM (c5) / 1 (c6) = (first) PASS (c7)\n\treason (c8) = \"Good \\\"sig\\\"\" Header (c9) . D (c10) = Example.Org (c11)";
        let p = parse_full(v).unwrap();
        assert_eq!(p.version, Some(1));
        assert_eq!(p.header.authserv_id, "Example.COM");
        let r = &p.header.results[0];
        assert_eq!(r.method, "dkim");
        assert_eq!(r.result, "pass");
        assert_eq!(r.reason.as_deref(), Some("Good \"sig\""));
        assert_eq!(r.comment.as_deref(), Some("c7"));
        assert_eq!(
            r.props,
            vec![("header.d".to_string(), "Example.Org".to_string())]
        );
        // none, alone or with trailing junk whitespace.
        let p = parse_full("example.org 1; none").unwrap();
        assert!(p.header.results.is_empty());
        assert_eq!(p.version, Some(1));
        assert!(parse("example.org; none ").unwrap().results.is_empty());
        // Nested comments and a quoted local-part.
        let p = parse(
            "example.org; dkim=pass ((nested) (deeper (still))) header.i=\"john doe\"@example.com",
        )
        .unwrap();
        assert_eq!(
            p.results[0].comment.as_deref(),
            Some("(nested) (deeper (still))")
        );
        assert_eq!(p.results[0].prop("header.i"), Some("john doe@example.com"));
        // Trailing and doubled semicolons are tolerated.
        let p = parse("example.org;; spf=pass smtp.mailfrom=a.example;").unwrap();
        assert_eq!(p.results.len(), 1);
        // Header errors.
        assert_eq!(parse(""), Err(AuthResError::MissingAuthservId));
        assert_eq!(
            parse("  (only a comment) "),
            Err(AuthResError::MissingAuthservId)
        );
        assert!(matches!(
            parse("example.org"),
            Err(AuthResError::ExpectedSemicolon(_))
        ));
        assert!(matches!(
            parse("example.org dkim=pass"),
            Err(AuthResError::ExpectedSemicolon(_))
        ));
        assert!(matches!(
            parse("example.org 99999999999; none"),
            Err(AuthResError::BadVersion(_))
        ));
        assert!(matches!(
            parse("\"example.org; none"),
            Err(AuthResError::UnterminatedQuote(0))
        ));
        assert!(matches!(
            parse("(example.org; none"),
            Err(AuthResError::UnterminatedComment(0))
        ));
        let long = format!("x; {}", "a".repeat(MAX_VALUE_LEN));
        assert!(matches!(parse(&long), Err(AuthResError::TooLong { .. })));
    }

    #[test]
    fn injection_attempts() {
        // A value is one unit: trailing words make the whole clause invalid.
        let p = parse_full("mx; dkim=pass header.d=evil.com example.com").unwrap();
        assert!(p.header.results.is_empty());
        assert_eq!(p.skipped, 1);
        // ';' always separates clauses (outside quotes).
        let p = parse("mx; dkim=fail header.d=evil.com;dkim=pass header.d=example.com").unwrap();
        assert_eq!(p.results.len(), 2);
        assert_eq!(p.results[0].prop("header.d"), Some("evil.com"));
        assert_eq!(p.results[1].prop("header.d"), Some("example.com"));
        // CVE-2020-12272: a '(' inside the domain starts a comment, never
        // part of the value; unterminated, the clause is dropped.
        let p = parse_full("mx; dkim=pass header.d=example.net(.example.com").unwrap();
        assert!(p.header.results.is_empty());
        let p = parse("mx; dkim=pass header.d=example.net(.example.com)").unwrap();
        assert_eq!(p.results[0].prop("header.d"), Some("example.net"));
        // Quotes glued to a value are not part of it.
        let p = parse_full("mx; dkim=pass header.d=example.com\"evil.com\"").unwrap();
        assert!(p.header.results.is_empty());
        // A quoted ';' stays inside the value.
        let p = parse("mx; dkim=pass header.d=\"a;dkim=pass\" header.s=s").unwrap();
        assert_eq!(p.results.len(), 1);
        assert_eq!(p.results[0].prop("header.d"), Some("a;dkim=pass"));
        assert_eq!(p.results[0].prop("header.s"), Some("s"));
        // A bad clause does not take good neighbours with it.
        let p = parse_full("mx; spf=pass smtp.mailfrom=a.example; dkim=pass header.d=\"x\" y; dmarc=pass header.from=a.example").unwrap();
        assert_eq!(p.skipped, 1);
        let methods: Vec<&str> = p.header.results.iter().map(|r| r.method.as_str()).collect();
        assert_eq!(methods, ["spf", "dmarc"]);
        // Recovery skips quoted ';' inside the bad clause.
        let p = parse_full("mx; dkim=pass header.d=x y \"; dmarc=pass\"; spf=pass").unwrap();
        let methods: Vec<&str> = p.header.results.iter().map(|r| r.method.as_str()).collect();
        assert_eq!(methods, ["spf"]);
        // Duplicate reason or a reason after properties is an error.
        assert!(parse("mx; dkim=pass reason=a reason=b")
            .unwrap()
            .results
            .is_empty());
        assert!(parse("mx; dkim=pass header.d=a reason=b")
            .unwrap()
            .results
            .is_empty());
    }

    #[test]
    fn result_cap() {
        let many: String = (0..100)
            .map(|i| format!("; dkim=pass header.d=d{i}.example"))
            .collect();
        let p = parse_full(&format!("mx{many}")).unwrap();
        assert_eq!(p.header.results.len(), MAX_RESULTS);
        assert!(p.truncated);
        assert_eq!(p.header.results[63].prop("header.d"), Some("d63.example"));
        let exact: String = (0..MAX_RESULTS)
            .map(|i| format!("; spf=pass smtp.mailfrom=d{i}.example"))
            .collect();
        let p = parse_full(&format!("mx{exact}; ")).unwrap();
        assert_eq!(p.header.results.len(), MAX_RESULTS);
        assert!(!p.truncated);
    }

    #[test]
    fn never_panics() {
        let mut inputs: Vec<String> = [
            "",
            ";",
            ";;;;",
            " ; ",
            "\"",
            "(",
            ")",
            "\\",
            "\"\\",
            "(\\",
            "x;\"",
            "x;(",
            "x; dkim",
            "x; dkim=",
            "x; dkim=pass header",
            "x; dkim=pass header.",
            "x; dkim=pass header.d",
            "x; dkim=pass header.d=",
            "x; dkim=pass reason",
            "x; dkim=pass reason=",
            "x; dkim/=pass",
            "x; dkim/1",
            "x; =pass",
            "x; dkim=pass header.d=\"",
            "x; dkim=pass ((((",
            "x; dkim=pass ))))",
            "x 1",
            "x 1 2;",
            "\0",
            "x;\0dkim=pass",
            "x; dkim=pass header.d=\0",
            "é; dkim=pässe header.d=ü.example",
            "x; dkim=pass header.d=\"é\"@",
            "\u{feff}x; none",
            "x;\r\n",
            "x;\r\n\t",
            "\r\n\r\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        inputs.push(";".repeat(10_000));
        inputs.push(format!("x{}", ";".repeat(10_000)));
        inputs.push(format!("x; dkim=pass {}", "(".repeat(10_000)));
        inputs.push(format!(
            "x; dkim=pass {}{}",
            "(".repeat(10_000),
            ")".repeat(10_000)
        ));
        inputs.push(format!("x; {}", "\"".repeat(10_001)));
        inputs.push(format!("x; {}", "a.b=c ".repeat(5_000)));
        for s in &inputs {
            let _ = parse_full(s);
            let _ = authserv_id(s);
            let _ = forged_indexes(
                &[("Authentication-Results", s.as_bytes())],
                &["x".to_string()],
            );
        }
    }

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn authserv_id_extraction() {
        assert_eq!(
            authserv_id(" mx.example.net; dkim=pass").as_deref(),
            Some("mx.example.net")
        );
        assert_eq!(
            authserv_id("mx.example.net/4XyZ; dkim=pass").as_deref(),
            Some("mx.example.net")
        );
        assert_eq!(
            authserv_id("(c) \"MX.example.net\" 1; none").as_deref(),
            Some("MX.example.net")
        );
        assert_eq!(
            authserv_id("\r\n\tmx.example.net;").as_deref(),
            Some("mx.example.net")
        );
        // Broken after the id: still identified.
        assert_eq!(
            authserv_id("mx.example.net; dkim=pass (((").as_deref(),
            Some("mx.example.net")
        );
        assert_eq!(
            authserv_id("mx.example.net(").as_deref(),
            Some("mx.example.net")
        );
        assert_eq!(
            authserv_id("\"mx.example.net").as_deref(),
            Some("mx.example.net")
        );
        assert_eq!(
            authserv_id("mx.example.net\u{a0}; x").as_deref(),
            Some("mx.example.net")
        );
        assert_eq!(authserv_id(""), None);
        assert_eq!(authserv_id("  ; dkim=pass"), None);
        assert_eq!(authserv_id("(unterminated mx.example.net"), None);
        assert_eq!(authserv_id("/jobonly;"), None);
    }

    #[test]
    fn forged_header_indexes() {
        let ours = vec!["mx.example.net".to_string()];
        let ar = "Authentication-Results";
        // One forged header among others.
        let h = headers(&[
            ("Received", "from x"),
            (ar, "other.example; dkim=pass"),
            (ar, "mx.example.net; dkim=pass header.d=paypal.com"),
            ("From", "a@b"),
        ]);
        assert_eq!(forged_indexes(&h, &ours), vec![2]);
        // Two, with case differences and a /jobid suffix.
        let h = headers(&[
            ("authentication-results", "MX.Example.NET; dkim=pass"),
            ("Subject", "hi"),
            (ar, "other.example; spf=pass"),
            ("AUTHENTICATION-RESULTS", "mx.example.net/4XyZ; dkim=pass"),
        ]);
        assert_eq!(forged_indexes(&h, &ours), vec![3, 1]);
        // Five interleaved with others, folded, quoted, broken, commented.
        let h = headers(&[
            (ar, "a.example; none"),
            (ar, "mx.example.net;\r\n\tdkim=pass"),
            ("X-Other", "mx.example.net; dkim=pass"),
            (ar, "\"mx.example.net\"; dkim=pass"),
            (ar, "b.example; dkim=pass"),
            (ar, "(hello) mx.example.net.; spf=pass"),
            (ar, "mx.example.net.evil; dkim=pass"),
            (ar, "mx.example.net; dkim=pass header.d=\"unterminated"),
            (ar, "notmx.example.net; dkim=pass"),
            (ar, "mx.example.net (((; dmarc=pass"),
        ]);
        assert_eq!(forged_indexes(&h, &ours), vec![9, 7, 5, 3, 2]);
        // Several of our ids; ours given with a job id; none found.
        let two = vec![
            "mx1.example.net/job".to_string(),
            "MX2.example.net".to_string(),
        ];
        let h = headers(&[
            (ar, "mx2.example.net; none"),
            (ar, "x; none"),
            (ar, "mx1.example.net/Q1; none"),
        ]);
        assert_eq!(forged_indexes(&h, &two), vec![3, 1]);
        assert!(forged_indexes(&h, &[]).is_empty());
        assert!(forged_indexes(&h, &["".to_string()]).is_empty());
        // Non-UTF-8 values and byte-slice headers.
        let raw: Vec<(&[u8], &[u8])> = vec![
            (
                b"Authentication-Results",
                b"mx.example.net; dkim=pass header.d=\xff\xfe",
            ),
            (b"Authentication-Results", b"\xffmx.example.net; dkim=pass"),
        ];
        assert_eq!(forged_indexes(&raw, &ours), vec![1]);
    }

    #[test]
    fn summary_line() {
        let ar = AuthResults {
            authserv_id: "mx".into(),
            results: vec![
                ResInfo::new("dkim", "pass").with_prop("header.d", "a.example"),
                ResInfo::new("spf", "none"),
            ],
        };
        assert_eq!(summary(&ar), "dkim=pass header.d=a.example; spf=none");
    }
}
