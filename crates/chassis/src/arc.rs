//! ARC (RFC 8617): reading the ARC sets of a message, verifying the chain, and sealing a new
//! set. Both daemons use it: dkim-milter verifies and seals, dmarc-milter verifies and reads
//! the sealers' ARC-Authentication-Results for its override.
//!
//! The work is split so hostile input meets our code first:
//!
//! * [`collect_sets`] groups the ARC fields by instance with our own small tag reader. It is
//!   linear in the header bytes and decides the structural answers of RFC 8617 §5.2 step 1
//!   (more than 50 sets, a missing or duplicate instance, a set without its three fields)
//!   before any DNS query or hash;
//! * only a structurally sound chain goes to mail-auth's `verify_arc` (through the
//!   [`mailauth`](crate::mailauth) door), whose answer [`crate::mailauth::judge_arc`] turns
//!   into our words; that costs at most 51 key lookups and signature checks;
//! * sealing ([`seal`]) is ours: mail-auth's sealer writes its own Authentication-Results
//!   text, and RFC 8617 wants the AAR to carry *our* A-R of the message; it also hashes the
//!   earlier sets under `cv=fail`, which §5.1.2 forbids.

use crate::authres::{self, AuthResults, ResultWord};
use crate::keycache::TxtCache;
use crate::mailauth::crypto::{HashAlgorithm, HashImpl, Sha256, SigningKey};
use crate::mailauth::dkim::{BodyHasher, Canonicalization};
use crate::mailauth::{AuthenticatedMessage, MessageAuthenticator, Parameters};
use crate::message::HeaderField;

/// RFC 8617 §4.2.1: at most 50 ARC sets; a chain with more fails.
pub const MAX_SETS: u32 = 50;

/// ARC header fields longer than this are not read (16 KiB; a real one is under 2 KiB, a
/// 4096-bit ARC-Seal under 1 KiB). The set they belong to is then malformed, and the chain
/// fails. It also bounds mail-auth's work on an `h=` list (thousands of names, not millions).
pub const MAX_FIELD_LEN: usize = 16 * 1024;

/// Tags read from one ARC field at most; past that the field is malformed.
pub const MAX_TAGS: usize = 64;

/// The three ARC header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArcField {
    Seal,
    MessageSignature,
    AuthenticationResults,
}

impl ArcField {
    /// Which ARC field `name` is, if any (case-insensitive, surrounding whitespace ignored).
    pub fn of(name: &[u8]) -> Option<ArcField> {
        let name = name.trim_ascii();
        if name.eq_ignore_ascii_case(b"ARC-Seal") {
            Some(ArcField::Seal)
        } else if name.eq_ignore_ascii_case(b"ARC-Message-Signature") {
            Some(ArcField::MessageSignature)
        } else if name.eq_ignore_ascii_case(b"ARC-Authentication-Results") {
            Some(ArcField::AuthenticationResults)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ArcField::Seal => "ARC-Seal",
            ArcField::MessageSignature => "ARC-Message-Signature",
            ArcField::AuthenticationResults => "ARC-Authentication-Results",
        }
    }
}

/// The `cv=` of an ARC-Seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cv {
    None,
    Pass,
    Fail,
}

impl Cv {
    pub fn as_str(self) -> &'static str {
        match self {
            Cv::None => "none",
            Cv::Pass => "pass",
            Cv::Fail => "fail",
        }
    }

    fn parse(v: &str) -> Option<Cv> {
        match v.to_ascii_lowercase().as_str() {
            "none" => Some(Cv::None),
            "pass" => Some(Cv::Pass),
            "fail" => Some(Cv::Fail),
            _ => None,
        }
    }
}

/// Why the ARC fields of a message do not form a chain (RFC 8617 §5.2 step 1: the chain then
/// fails, with no DNS query).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StructureError {
    #[error("more than {MAX_SETS} ARC sets")]
    TooManySets,
    #[error("{0} field without a usable instance (i=)")]
    BadInstance(&'static str),
    #[error("instance {1} has more than one {0}")]
    Duplicate(&'static str, u32),
    #[error("instance {1} has no {0}")]
    Missing(&'static str, u32),
    #[error("ARC-Seal i={0} has no usable cv=")]
    BadCv(u32),
    #[error("{0} i={1} cannot be read")]
    Malformed(&'static str, u32),
}

/// Reads `tag=value` pairs (RFC 6376 §3.2 tag-list) from an ARC field value: names trimmed and
/// lower-cased, values with all whitespace removed. `None` when the value is too long, has too
/// many tags, a tag without `=`, or a repeated tag name. Nothing here allocates more than the
/// input's size.
pub fn tags(value: &[u8]) -> Option<Vec<(String, String)>> {
    if value.len() > MAX_FIELD_LEN {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    let mut out: Vec<(String, String)> = Vec::new();
    for part in text.split(';') {
        if part.trim().is_empty() {
            continue;
        }
        if out.len() >= MAX_TAGS {
            return None;
        }
        let (name, v) = part.split_once('=')?;
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty()
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || out.iter().any(|(n, _)| *n == name)
        {
            return None;
        }
        out.push((name, v.chars().filter(|c| !c.is_whitespace()).collect()));
    }
    Some(out)
}

/// The instance of an ARC field: its `i=` tag, 1 to 50. For an ARC-Authentication-Results
/// only the leading `i=N;` is read (the rest is Authentication-Results syntax, not a
/// tag-list).
pub fn instance(kind: ArcField, value: &[u8]) -> Option<u32> {
    let digits = |v: &str| -> Option<u32> {
        let v = v.trim();
        if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse().ok().filter(|i| (1..=MAX_SETS).contains(i))
    };
    match kind {
        ArcField::AuthenticationResults => {
            let text = std::str::from_utf8(value.get(..value.len().min(MAX_FIELD_LEN))?).ok()?;
            let (first, _) = text.split_once(';')?;
            let (name, v) = first.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("i") {
                return None;
            }
            digits(v)
        }
        _ => {
            let t = tags(value)?;
            let (_, v) = t.iter().find(|(n, _)| n == "i")?;
            digits(v)
        }
    }
}

/// The Authentication-Results carried by an ARC-Authentication-Results value (what follows
/// `i=N;`), parsed with the chassis A-R parser; `None` when it does not parse.
pub fn aar_results(value: &[u8]) -> Option<AuthResults> {
    let text = std::str::from_utf8(value.get(..value.len().min(MAX_FIELD_LEN))?).ok()?;
    let (_, rest) = text.split_once(';')?;
    authres::parse(rest).ok()
}

/// One ARC set as found in the message, in the form the front end passed the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSet {
    pub instance: u32,
    pub aar: HeaderField,
    pub ams: HeaderField,
    pub seal: HeaderField,
    /// The seal's `cv=`, `d=` and `s=`.
    pub cv: Cv,
    pub domain: String,
    pub selector: String,
}

/// Groups the message's ARC fields into sets, oldest first. `Ok(empty)`: no ARC field at all.
/// Linear in the number of fields; stops at the first structural problem.
pub fn collect_sets(headers: &[HeaderField]) -> Result<Vec<RawSet>, StructureError> {
    type Slot = [Option<HeaderField>; 3];
    // Counted first: more than 50 of any field is the answer, whatever else is wrong.
    let mut counts = [0usize; 3];
    for h in headers {
        if let Some(kind) = ArcField::of(&h.name) {
            counts[kind as usize] += 1;
        }
    }
    if counts.iter().any(|&n| n > MAX_SETS as usize) {
        return Err(StructureError::TooManySets);
    }
    let mut slots: Vec<Slot> = Vec::new();
    for h in headers {
        let Some(kind) = ArcField::of(&h.name) else {
            continue;
        };
        let k = kind as usize;
        let i = instance(kind, &h.value).ok_or(StructureError::BadInstance(kind.name()))?;
        if slots.len() < i as usize {
            slots.resize(i as usize, [None, None, None]);
        }
        let slot = &mut slots[i as usize - 1][k];
        if slot.is_some() {
            return Err(StructureError::Duplicate(kind.name(), i));
        }
        *slot = Some(h.clone());
    }
    let mut sets = Vec::with_capacity(slots.len());
    for (n, slot) in slots.into_iter().enumerate() {
        let i = n as u32 + 1;
        let [seal, ams, aar] = slot;
        let seal = seal.ok_or(StructureError::Missing("ARC-Seal", i))?;
        let ams = ams.ok_or(StructureError::Missing("ARC-Message-Signature", i))?;
        let aar = aar.ok_or(StructureError::Missing("ARC-Authentication-Results", i))?;
        let t = tags(&seal.value).ok_or(StructureError::Malformed("ARC-Seal", i))?;
        let get = |name: &str| {
            t.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let cv = Cv::parse(&get("cv")).ok_or(StructureError::BadCv(i))?;
        sets.push(RawSet {
            instance: i,
            cv,
            domain: get("d").to_ascii_lowercase(),
            selector: get("s"),
            aar,
            ams,
            seal,
        });
    }
    Ok(sets)
}

/// One set of a verified chain, for the A-R (`arc.chain=`) and for dmarc-milter's override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSummary {
    pub instance: u32,
    /// The sealer: the ARC-Seal's `d=` (lower case).
    pub domain: String,
    pub selector: String,
    pub cv: Cv,
    /// The sealer's ARC-Authentication-Results, when it parses.
    pub results: Option<AuthResults>,
}

/// The verdict on a message's ARC chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// `none`, `pass`, `fail` or `temperror` (a key lookup failed: the sender may retry).
    pub word: ResultWord,
    /// Why it is not `pass`, in our words.
    pub reason: Option<String>,
    /// The sets, oldest first (empty when the fields do not form a chain).
    pub sets: Vec<SetSummary>,
    /// The cv= of the newest set, when there is one.
    pub newest_cv: Option<Cv>,
}

impl Chain {
    pub fn none() -> Chain {
        Chain {
            word: ResultWord::None,
            reason: None,
            sets: Vec::new(),
            newest_cv: None,
        }
    }

    fn fail(reason: impl Into<String>, sets: Vec<SetSummary>) -> Chain {
        let newest_cv = sets.last().map(|s| s.cv);
        Chain {
            word: ResultWord::Fail,
            reason: Some(reason.into()),
            sets,
            newest_cv,
        }
    }

    /// The sealers' `d=`, oldest first, `:`-separated (the `arc.chain=` property as Gmail and
    /// OpenARC write it).
    pub fn chain_domains(&self) -> String {
        self.sets
            .iter()
            .map(|s| s.domain.as_str())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The A-R result: `arc=WORD [reason] smtp.remote-ip=IP arc.chain=D1:D2`.
    pub fn res_info(&self, remote_ip: Option<std::net::IpAddr>) -> authres::ResInfo {
        let mut r = authres::ResInfo::new("arc", self.word.as_str());
        if let Some(why) = &self.reason {
            r = r.with_reason(why.clone());
        }
        if let Some(ip) = remote_ip {
            r = r.with_prop("smtp.remote-ip", ip.to_string());
        }
        if !self.sets.is_empty() {
            r = r.with_prop("arc.chain", self.chain_domains());
        }
        r
    }

    /// The `cv=` a new set sealed over this chain carries (RFC 8617 §5.1): `None` for no
    /// chain, `pass` for a passing one, `fail` otherwise. `None` (the Rust one) when nothing
    /// may be sealed: the newest set already says `cv=fail` (§5.1 step 1), or the answer is a
    /// temporary error (sealing `fail` would break a chain a retry may validate).
    pub fn cv_to_seal(&self) -> Option<Cv> {
        if self.newest_cv == Some(Cv::Fail) {
            return None;
        }
        match self.word {
            ResultWord::None => Some(Cv::None),
            ResultWord::Pass => Some(Cv::Pass),
            ResultWord::TempError => None,
            _ => Some(Cv::Fail),
        }
    }
}

fn summaries(sets: &[RawSet]) -> Vec<SetSummary> {
    sets.iter()
        .map(|s| SetSummary {
            instance: s.instance,
            domain: s.domain.clone(),
            selector: s.selector.clone(),
            cv: s.cv,
            results: aar_results(&s.aar.value),
        })
        .collect()
}

/// Verifies the ARC chain of a message: our structural checks on `headers` (every field, as
/// the front end passed them), then mail-auth on `am` (the same message parsed by
/// [`crate::dkimparse`], with the newest AMS's body hash in place). Key records come from
/// `keys` first, then DNS; the caller bounds the time.
pub async fn verify(
    auth: &MessageAuthenticator,
    keys: &TxtCache,
    headers: &[HeaderField],
    am: &AuthenticatedMessage<'_>,
) -> Chain {
    let sets = match collect_sets(headers) {
        Ok(sets) if sets.is_empty() => return Chain::none(),
        Ok(sets) => sets,
        Err(e) => return Chain::fail(e.to_string(), Vec::new()),
    };
    let summary = summaries(&sets);
    // RFC 8617 §5.2 step 2 (and 1a): the oldest set says cv=none, every later one cv=pass.
    for s in &sets {
        let want = if s.instance == 1 { Cv::None } else { Cv::Pass };
        if s.cv != want {
            return Chain::fail(
                format!("ARC-Seal i={} has cv={}", s.instance, s.cv.as_str()),
                summary,
            );
        }
    }
    // mail-auth parsed the same fields; if it could not, the set is malformed.
    if am.has_arc_errors
        || am.as_headers.len() != sets.len()
        || am.ams_headers.len() != sets.len()
        || am.aar_headers.len() != sets.len()
    {
        let why = am
            .errors
            .iter()
            .find_map(|e| match &e.header {
                crate::mailauth::Error::Arc(_) => Some(crate::mailauth::error_words(&e.header)),
                _ => None,
            })
            .unwrap_or("ARC header cannot be parsed");
        return Chain::fail(format!("malformed ARC set: {why}"), summary);
    }
    let out = auth
        .verify_arc(Parameters::new(am).with_txt_cache(keys))
        .await;
    let (word, reason) = crate::mailauth::judge_arc(out.result());
    let newest_cv = summary.last().map(|s| s.cv);
    Chain {
        word,
        reason,
        sets: summary,
        newest_cv,
    }
}

/// The body hash spec (`c=` body part, algorithm, `l=`) of the newest ARC-Message-Signature
/// in a header block, so it can be computed as the body streams past.
pub fn newest_ams_spec(am: &AuthenticatedMessage<'_>) -> Option<crate::dkimparse::BodyHashSpec> {
    let ams = am.ams_headers.iter().max_by_key(|h| h.header.i)?;
    Some((
        ams.header.cb,
        HashAlgorithm::from(ams.header.a),
        ams.header.l,
    ))
}

// ---------------------------------------------------------------------------
// Sealing

/// Who seals and how.
pub struct Sealer<'a, K> {
    pub domain: &'a str,
    pub selector: &'a str,
    pub key: &'a K,
    /// Header fields to sign in the ARC-Message-Signature, each occurrence present; a name
    /// listed more often than it occurs is oversigned.
    pub sign_headers: &'a [String],
    /// The AMS body canonicalization (its header canonicalization is always relaxed, so the
    /// fold the MTA gives our new field cannot break it).
    pub body_canon: Canonicalization,
    /// Seconds since the epoch, for `t=`.
    pub timestamp: u64,
}

/// A new ARC set: field values in the front-end form of [`crate::verdict::HeaderEdit`] (no
/// leading space, folds as `\n\t`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSet {
    pub instance: u32,
    pub cv: Cv,
    pub aar: String,
    pub ams: String,
    pub seal: String,
}

/// Why a message is not sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the chain already carries {MAX_SETS} ARC sets")]
    Full,
    #[error("the newest ARC set says cv=fail")]
    AlreadyFailed,
    #[error("the chain and the new instance disagree")]
    Inconsistent,
    #[error("no header field to sign")]
    NothingToSign,
    #[error("signing failed: {0}")]
    Signing(String),
}

/// RFC 6376 §3.4.2 relaxed header canonicalization of one field, CRLF-terminated unless
/// `last`.
pub fn relaxed_header(name: &[u8], value: &[u8], last: bool, out: &mut Vec<u8>) {
    for b in name.trim_ascii() {
        out.push(b.to_ascii_lowercase());
    }
    out.push(b':');
    let mut pending_space = false;
    let mut started = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => pending_space = started,
            _ => {
                if pending_space {
                    out.push(b' ');
                    pending_space = false;
                }
                started = true;
                out.push(b);
            }
        }
    }
    if !last {
        out.extend_from_slice(b"\r\n");
    }
}

/// The `h=` list for `headers`: every occurrence of each configured name present, plus the
/// oversigning repeats the list asks for (a name listed twice is signed once more than it
/// occurs, so nobody can add one later).
pub fn ams_header_list(sign_headers: &[String], headers: &[HeaderField]) -> Vec<String> {
    let mut list: Vec<String> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for name in sign_headers {
        let lower = name.to_ascii_lowercase();
        if ArcField::of(lower.as_bytes()).is_some()
            || lower == "authentication-results"
            || lower.is_empty()
        {
            // RFC 8617 §4.1.2: the AMS never signs ARC fields or Authentication-Results.
            continue;
        }
        if seen.contains(&lower) {
            list.push(name.clone());
            continue;
        }
        seen.push(lower);
        let n = headers.iter().filter(|h| h.name_is(name)).count();
        for _ in 0..n {
            list.push(name.clone());
        }
    }
    list
}

/// The signed header fields in hash order (RFC 6376 §5.4.2: per name, bottom-up; a name
/// with no occurrence left contributes nothing).
fn signed_fields<'h>(list: &[String], headers: &'h [HeaderField]) -> Vec<&'h HeaderField> {
    let mut used = vec![false; headers.len()];
    let mut out = Vec::with_capacity(list.len());
    for name in list {
        if let Some(pos) = (0..headers.len())
            .rev()
            .find(|&i| !used[i] && headers[i].name_is(name))
        {
            used[pos] = true;
            out.push(&headers[pos]);
        }
    }
    out
}

fn b64(data: &[u8]) -> String {
    // Standard alphabet with padding; written here to keep the chassis free of a base64
    // dependency for this one use.
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = match chunk.len() {
            3 => (chunk[0] as u32) << 16 | (chunk[1] as u32) << 8 | chunk[2] as u32,
            2 => (chunk[0] as u32) << 16 | (chunk[1] as u32) << 8,
            _ => (chunk[0] as u32) << 16,
        };
        for k in 0..4 {
            if k <= chunk.len() {
                s.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The body hash of `body` (CRLF lines) under `canon`, SHA-256 over the whole body.
pub fn body_hash(body: &[u8], canon: Canonicalization) -> Vec<u8> {
    let mut h = BodyHasher::new(Sha256::hasher(), canon, 0);
    h.write(body);
    let (ctx, _) = h.finish();
    use crate::mailauth::crypto::HashContext;
    ctx.complete().as_ref().to_vec()
}

/// Folds an `h=` list onto lines of about 70 characters, at the colons.
fn fold_h(list: &[String]) -> String {
    let mut out = String::from("h=");
    let mut line = 2usize;
    for (i, name) in list.iter().enumerate() {
        if i > 0 {
            out.push(':');
            line += 1;
        }
        if line + name.len() > 70 {
            out.push_str("\n\t");
            line = 1;
        }
        out.push_str(name);
        line += name.len();
    }
    out
}

/// The instance a new set gets: one more than the highest readable `i=` among the
/// message's ARC fields (1 when there is none), whether or not they form a chain.
pub fn next_instance(headers: &[HeaderField]) -> u32 {
    headers
        .iter()
        .filter_map(|h| ArcField::of(&h.name).and_then(|k| instance(k, &h.value)))
        .max()
        .map_or(1, |i| i + 1)
}

/// Seals a message: ARC-Authentication-Results `i=N; <ar_value>`, an ARC-Message-Signature
/// over `headers` and `body`, and an ARC-Seal over the chain and the new set.
///
/// `prior` is the message's chain ([`collect_sets`], oldest first), hashed into the seal only
/// when `cv` is not `fail` (RFC 8617 §5.1.2: a failed chain is sealed as if our set were the
/// only one); pass an empty slice when the fields do not form a chain. `instance` comes from
/// [`next_instance`], `cv` from [`Chain::cv_to_seal`]. `ar_value` is the
/// Authentication-Results value to record (authserv-id first), in the front-end form.
pub fn seal<K: SigningKey<Hasher = Sha256>>(
    sealer: &Sealer<'_, K>,
    headers: &[HeaderField],
    body: &[u8],
    ar_value: &str,
    prior: &[RawSet],
    instance: u32,
    cv: Cv,
) -> Result<SealedSet, SealError> {
    if prior.last().is_some_and(|s| s.cv == Cv::Fail) {
        return Err(SealError::AlreadyFailed);
    }
    if instance > MAX_SETS {
        return Err(SealError::Full);
    }
    if cv != Cv::Fail && prior.len() as u32 + 1 != instance {
        return Err(SealError::Inconsistent);
    }
    let cv = if instance == 1 && cv != Cv::Fail {
        Cv::None
    } else {
        cv
    };
    let algorithm = sealer.key.algorithm().name();
    let aar = format!("i={instance}; {}", ar_value.trim_start());

    let list = ams_header_list(sealer.sign_headers, headers);
    if list.is_empty() {
        return Err(SealError::NothingToSign);
    }
    let canon_name = match sealer.body_canon {
        Canonicalization::Relaxed => "relaxed",
        Canonicalization::Simple => "simple",
    };
    let bh = b64(&body_hash(body, sealer.body_canon));
    let ams_unsigned = format!(
        "i={instance}; a={algorithm}; c=relaxed/{canon_name}; d={}; s={};\n\tt={};\n\t{};\n\tbh={bh};\n\tb=",
        sealer.domain,
        sealer.selector,
        sealer.timestamp,
        fold_h(&list)
    );
    let mut input = Vec::new();
    for h in signed_fields(&list, headers) {
        relaxed_header(&h.name, &h.value, false, &mut input);
    }
    relaxed_header(
        b"ARC-Message-Signature",
        ams_unsigned.as_bytes(),
        true,
        &mut input,
    );
    let b = sealer
        .key
        .sign(input.as_slice())
        .map_err(|e| SealError::Signing(crate::mailauth::error_words(&e).into()))?;
    let ams = format!("{ams_unsigned}{}", b64(&b));

    let seal_unsigned = format!(
        "i={instance}; a={algorithm}; cv={}; d={}; s={};\n\tt={};\n\tb=",
        cv.as_str(),
        sealer.domain,
        sealer.selector,
        sealer.timestamp
    );
    let mut input = Vec::new();
    if cv != Cv::Fail {
        for s in prior {
            relaxed_header(&s.aar.name, &s.aar.value, false, &mut input);
            relaxed_header(&s.ams.name, &s.ams.value, false, &mut input);
            relaxed_header(&s.seal.name, &s.seal.value, false, &mut input);
        }
    }
    relaxed_header(
        b"ARC-Authentication-Results",
        aar.as_bytes(),
        false,
        &mut input,
    );
    relaxed_header(b"ARC-Message-Signature", ams.as_bytes(), false, &mut input);
    relaxed_header(b"ARC-Seal", seal_unsigned.as_bytes(), true, &mut input);
    let b = sealer
        .key
        .sign(input.as_slice())
        .map_err(|e| SealError::Signing(crate::mailauth::error_words(&e).into()))?;
    let seal = format!("{seal_unsigned}{}", b64(&b));
    Ok(SealedSet {
        instance,
        cv,
        aar,
        ams,
        seal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, value: &str) -> HeaderField {
        HeaderField::new(name, value)
    }

    fn set(i: u32, cv: &str, d: &str) -> Vec<HeaderField> {
        vec![
            field(
                "ARC-Seal",
                &format!(" i={i}; a=rsa-sha256; cv={cv}; d={d}; s=s; b=AAAA"),
            ),
            field(
                "ARC-Message-Signature",
                &format!(
                    " i={i}; a=rsa-sha256; c=relaxed/relaxed; d={d}; s=s; h=from; bh=AAAA; b=AAAA"
                ),
            ),
            field(
                "ARC-Authentication-Results",
                &format!(" i={i}; mx.{d}; dkim=pass header.d=author.example"),
            ),
        ]
    }

    #[test]
    fn tags_are_read_strictly() {
        assert_eq!(
            tags(b" i=1; a = rsa-sha256;\r\n\tb=AB\r\n CD ;").unwrap(),
            vec![
                ("i".into(), "1".into()),
                ("a".into(), "rsa-sha256".into()),
                ("b".into(), "ABCD".into())
            ]
        );
        assert!(tags(b"i=1; i=2").is_none(), "repeated tag");
        assert!(tags(b"i=1; novalue").is_none());
        assert!(tags(b"=x").is_none());
        assert!(tags(&vec![b'a'; MAX_FIELD_LEN + 1]).is_none());
        let many: String = (0..=MAX_TAGS).map(|n| format!("t{n}=1;")).collect();
        assert!(tags(many.as_bytes()).is_none());
    }

    #[test]
    fn instances_are_1_to_50() {
        assert_eq!(instance(ArcField::Seal, b"i=1; cv=none"), Some(1));
        assert_eq!(instance(ArcField::Seal, b"i=50; cv=pass"), Some(50));
        assert_eq!(instance(ArcField::Seal, b"i=51; cv=pass"), None);
        assert_eq!(instance(ArcField::Seal, b"i=0"), None);
        assert_eq!(instance(ArcField::Seal, b"i=-1"), None);
        assert_eq!(instance(ArcField::Seal, b"i=99999999999999999999"), None);
        assert_eq!(
            instance(ArcField::AuthenticationResults, b" i=3; mx; dkim=pass"),
            Some(3)
        );
        assert_eq!(
            instance(ArcField::AuthenticationResults, b" mx; i=3; dkim=pass"),
            None
        );
    }

    #[test]
    fn structure_is_checked_before_any_lookup() {
        let mut h = set(1, "none", "a.example");
        h.extend(set(2, "pass", "b.example"));
        let sets = collect_sets(&h).unwrap();
        assert_eq!(sets.len(), 2);
        assert_eq!(
            (sets[1].instance, sets[1].domain.as_str()),
            (2, "b.example")
        );
        assert_eq!(
            aar_results(&sets[0].aar.value).unwrap().authserv_id,
            "mx.a.example"
        );
        // A gap: instance 1 missing.
        let gap = set(2, "pass", "b.example");
        assert_eq!(
            collect_sets(&gap),
            Err(StructureError::Missing("ARC-Seal", 1))
        );
        // A duplicate.
        let mut dup = set(1, "none", "a.example");
        dup.extend(set(1, "none", "b.example"));
        assert_eq!(
            collect_sets(&dup),
            Err(StructureError::Duplicate("ARC-Seal", 1))
        );
        // i=51.
        assert_eq!(
            collect_sets(&set(51, "pass", "a.example")),
            Err(StructureError::BadInstance("ARC-Seal"))
        );
        // A set without its AAR.
        let mut partial = set(1, "none", "a.example");
        partial.pop();
        assert_eq!(
            collect_sets(&partial),
            Err(StructureError::Missing("ARC-Authentication-Results", 1))
        );
        // 1,000 sets: refused at the 51st seal, whatever the instances say.
        let mut many = Vec::new();
        for _ in 0..1000 {
            many.extend(set(1, "none", "a.example"));
        }
        assert_eq!(collect_sets(&many), Err(StructureError::TooManySets));
        assert_eq!(collect_sets(&[field("From", " a@b")]), Ok(Vec::new()));
    }

    #[test]
    fn relaxed_canonicalization() {
        let mut out = Vec::new();
        relaxed_header(b"Subject ", b" \tHello  \r\n\tWorld \t", false, &mut out);
        assert_eq!(out, b"subject:Hello World\r\n");
        let mut out = Vec::new();
        relaxed_header(b"ARC-Seal", b"i=1;\n\tb=", true, &mut out);
        assert_eq!(out, b"arc-seal:i=1; b=");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64(raw.as_bytes()), enc);
        }
    }

    #[test]
    fn header_list_signs_each_occurrence_and_oversigns() {
        let headers = vec![
            field("Received", " x"),
            field("From", " a@b"),
            field("Subject", " s"),
            field("Received", " y"),
        ];
        let list = ams_header_list(
            &[
                "From".into(),
                "Received".into(),
                "To".into(),
                "ARC-Seal".into(),
                "From".into(),
            ],
            &headers,
        );
        assert_eq!(list, vec!["From", "Received", "Received", "From"]);
        let fields = signed_fields(&list, &headers);
        let values: Vec<&[u8]> = fields.iter().map(|f| f.value.as_slice()).collect();
        assert_eq!(values, vec![&b" a@b"[..], b" y", b" x"]);
    }

    #[test]
    fn cv_to_seal_follows_rfc_8617() {
        let mut c = Chain::none();
        assert_eq!(c.cv_to_seal(), Some(Cv::None));
        c.word = ResultWord::Pass;
        c.newest_cv = Some(Cv::Pass);
        assert_eq!(c.cv_to_seal(), Some(Cv::Pass));
        c.word = ResultWord::Fail;
        assert_eq!(c.cv_to_seal(), Some(Cv::Fail));
        c.newest_cv = Some(Cv::Fail);
        assert_eq!(c.cv_to_seal(), None, "never seal over cv=fail");
        c.newest_cv = Some(Cv::Pass);
        c.word = ResultWord::TempError;
        assert_eq!(c.cv_to_seal(), None);
    }
}
