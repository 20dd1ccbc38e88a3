//! Message reassembly from front-end events: headers as the MTA passed them, then the body,
//! rebuilt byte-exactly into one RFC 5322 buffer so `c=simple` signatures verify.
//!
//! Memory is bounded: headers are capped, and once the message grows past a threshold the
//! buffer spills into an unlinked temporary file that is memory-mapped at end of message, so a
//! 50 MB message costs page cache, not anonymous memory.

use std::fs::File;
use std::io::{self, Write};
use std::ops::Deref;
use std::path::PathBuf;

/// Limits for one message.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Total bytes of header data accepted; past it the message is flagged `headers_truncated`.
    pub max_header_bytes: usize,
    /// Number of header fields accepted; past it the message is flagged `headers_truncated`.
    pub max_headers: usize,
    /// Bytes kept in memory before spilling to a temporary file.
    pub spill_threshold: usize,
    /// Where spill files go (`None`: the system temp dir).
    pub temp_dir: Option<PathBuf>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 256 * 1024,
            max_headers: 1000,
            spill_threshold: 1024 * 1024,
            temp_dir: None,
        }
    }
}

/// One header field as the filter saw it: the name, and the value exactly as it follows the
/// colon (with its leading space restored when the MTA stripped it), folds as CRLF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

impl HeaderField {
    /// A field from text (`value` as it follows the colon), for callers that build one.
    pub fn new(name: &str, value: &str) -> Self {
        Self {
            name: name.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }

    pub fn name_is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
    /// The value as text (lossy), without the leading whitespace after the colon.
    pub fn value_str(&self) -> String {
        String::from_utf8_lossy(&self.value)
            .trim_start()
            .to_string()
    }
}

/// An incoming Authentication-Results field, noted whether or not it was stored: its place
/// among the message's A-R fields (1-based, as milter counts) and the authserv-id it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenAuthResults {
    pub occurrence: u32,
    /// In [`id_key`](crate::authres::id_key) form (lower case, no `/jobid`, no trailing dot);
    /// `None` when the value has no readable authserv-id.
    pub authserv_id: Option<String>,
}

/// Header facts kept for *every* field, even past the storage cap: a forged own-id
/// Authentication-Results or a second From placed after thousands of filler fields must be
/// seen as surely as one at the top (the CVE-2022-48521 class). What this keeps is bounded
/// too; past its own bounds it says so ([`overflowed`](Self::overflowed)) and the policies
/// tempfail rather than decide on a partial view.
#[derive(Debug, Clone, Default)]
pub struct HeaderScan {
    pub auth_results: Vec<SeenAuthResults>,
    /// From fields that arrived past the storage cap.
    pub from_past_cap: Vec<HeaderField>,
    from_past_cap_bytes: usize,
    pub overflowed: bool,
}

/// A-R fields noted per message; far beyond any real message (each note is a few bytes).
const MAX_SEEN_AUTH_RESULTS: usize = 20_000;
/// From fields kept past the storage cap (a real message has one).
const MAX_FROM_PAST_CAP: usize = 16;
const MAX_FROM_PAST_CAP_BYTES: usize = 16 * 1024;

impl HeaderScan {
    fn note(&mut self, name: &[u8], value: &[u8], stored: bool) {
        let name = name.trim_ascii();
        if name.eq_ignore_ascii_case(b"Authentication-Results") {
            if self.auth_results.len() >= MAX_SEEN_AUTH_RESULTS {
                self.overflowed = true;
                return;
            }
            let occurrence = self.auth_results.len() as u32 + 1;
            let authserv_id = crate::authres::authserv_id(&String::from_utf8_lossy(value))
                .map(|id| crate::authres::id_key(&id));
            self.auth_results.push(SeenAuthResults {
                occurrence,
                authserv_id,
            });
        } else if !stored && name.eq_ignore_ascii_case(b"From") {
            self.from_past_cap_bytes += value.len();
            if self.from_past_cap.len() >= MAX_FROM_PAST_CAP
                || self.from_past_cap_bytes > MAX_FROM_PAST_CAP_BYTES
            {
                self.overflowed = true;
                return;
            }
            self.from_past_cap.push(HeaderField {
                name: name.to_vec(),
                value: value.to_vec(),
            });
        }
    }
}

/// What the policy needs of the body, decided at end of headers: the bytes themselves (to
/// sign), or only DKIM body hashes computed as it streams past (to verify). Not keeping the
/// body means a message of any size costs no buffer and no spill file.
#[derive(Debug, Clone)]
pub struct BodyPlan {
    pub keep_body: bool,
    pub hashes: Vec<crate::dkimparse::BodyHashSpec>,
}

impl Default for BodyPlan {
    /// Keep everything, hash nothing early: what a policy that has not said otherwise gets.
    fn default() -> Self {
        Self {
            keep_body: true,
            hashes: Vec::new(),
        }
    }
}

enum Sink {
    Memory(Vec<u8>),
    File(File, usize),
}

/// Collects one message. Feed `header` calls, then `end_of_headers`, then `body` chunks, then
/// `finish` at end of message.
pub struct MessageBuilder {
    limits: Limits,
    leading_space: bool,
    headers: Vec<HeaderField>,
    header_bytes: usize,
    headers_truncated: bool,
    scan: HeaderScan,
    sink: Sink,
    headers_done: bool,
    io_error: Option<String>,
    /// The header block as written at end of headers (for [`BodyPlan`] decisions).
    header_block: Vec<u8>,
    keep_body: bool,
    hashers: crate::dkimparse::BodyHashers,
}

impl MessageBuilder {
    /// `leading_space` says whether the MTA passes header values with the space after the colon
    /// intact (milter SMFIP_HDR_LEADSPC). Without it, one space is re-added, as the MTA ate one.
    pub fn new(limits: Limits, leading_space: bool) -> Self {
        Self {
            limits,
            leading_space,
            headers: Vec::new(),
            header_bytes: 0,
            headers_truncated: false,
            scan: HeaderScan::default(),
            sink: Sink::Memory(Vec::new()),
            headers_done: false,
            io_error: None,
            header_block: Vec::new(),
            keep_body: true,
            hashers: Default::default(),
        }
    }

    /// Adds one header field; folds may arrive as bare LF and are normalised to CRLF.
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        if self.headers_done {
            return;
        }
        let cost = name.len() + value.len() + 4;
        if self.headers_truncated
            || self.header_bytes + cost > self.limits.max_header_bytes
            || self.headers.len() >= self.limits.max_headers
        {
            self.headers_truncated = true;
            self.scan.note(name, &self.stored_form(value), false);
            return;
        }
        self.header_bytes += cost;
        let v = self.stored_form(value);
        self.scan.note(name, &v, true);
        self.headers.push(HeaderField {
            name: name.to_vec(),
            value: v,
        });
    }

    /// A value as it is stored: the leading space restored when the MTA ate it, folds as CRLF.
    fn stored_form(&self, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(value.len() + 2);
        if !self.leading_space {
            v.push(b' ');
        }
        let mut prev = 0u8;
        for &b in value {
            if b == b'\n' && prev != b'\r' {
                v.push(b'\r');
            }
            v.push(b);
            prev = b;
        }
        v
    }

    /// Marks the end of the header block and writes it into the buffer.
    pub fn end_of_headers(&mut self) {
        if self.headers_done {
            return;
        }
        self.headers_done = true;
        let mut block = Vec::with_capacity(self.header_bytes + 2);
        for h in &self.headers {
            block.extend_from_slice(&h.name);
            block.push(b':');
            block.extend_from_slice(&h.value);
            block.extend_from_slice(b"\r\n");
        }
        block.extend_from_slice(b"\r\n");
        self.append(&block);
        self.header_block = block;
    }

    /// The header block (fields and the empty line) once `end_of_headers` has run.
    pub fn header_block(&self) -> &[u8] {
        &self.header_block
    }

    /// Applies the policy's [`BodyPlan`]; call after `end_of_headers`, before the body.
    pub fn plan_body(&mut self, plan: BodyPlan) {
        self.keep_body = plan.keep_body;
        self.hashers = crate::dkimparse::BodyHashers::new(&plan.hashes);
    }

    /// Appends a body chunk (the MTA sends CRLF line ends).
    pub fn body(&mut self, chunk: &[u8]) {
        if !self.headers_done {
            self.end_of_headers();
        }
        if !self.hashers.is_empty() {
            self.hashers.write(chunk);
        }
        if self.keep_body {
            self.append(chunk);
        }
    }

    fn append(&mut self, data: &[u8]) {
        if self.io_error.is_some() {
            return;
        }
        let result = match &mut self.sink {
            Sink::Memory(buf) if buf.len() + data.len() <= self.limits.spill_threshold => {
                buf.extend_from_slice(data);
                Ok(())
            }
            Sink::Memory(buf) => {
                let spilled = std::mem::take(buf);
                self.spill(spilled, data)
            }
            Sink::File(f, len) => {
                *len += data.len();
                f.write_all(data)
            }
        };
        if let Err(e) = result {
            self.io_error = Some(format!("cannot write message spill file: {e}"));
        }
    }

    fn spill(&mut self, existing: Vec<u8>, data: &[u8]) -> io::Result<()> {
        let mut f = match &self.limits.temp_dir {
            Some(dir) => tempfile::tempfile_in(dir)?,
            None => tempfile::tempfile()?,
        };
        f.write_all(&existing)?;
        f.write_all(data)?;
        self.sink = Sink::File(f, existing.len() + data.len());
        Ok(())
    }

    /// The header fields seen so far.
    pub fn headers(&self) -> &[HeaderField] {
        &self.headers
    }

    /// True when header data went past the configured limits and some fields were dropped.
    pub fn headers_truncated(&self) -> bool {
        self.headers_truncated
    }

    /// Ends the message and returns it as one contiguous buffer.
    pub fn finish(mut self) -> io::Result<Message> {
        if !self.headers_done {
            self.end_of_headers();
        }
        if let Some(e) = self.io_error.take() {
            return Err(io::Error::other(e));
        }
        let bytes = match self.sink {
            Sink::Memory(v) => MessageBytes::Memory(v),
            Sink::File(f, len) => {
                if len == 0 {
                    MessageBytes::Memory(Vec::new())
                } else {
                    // SAFETY: the file is an unlinked temporary owned by this message alone; nobody
                    // else can change it while the map lives.
                    let map = unsafe { memmap2::Mmap::map(&f)? };
                    MessageBytes::Mapped(map)
                }
            }
        };
        Ok(Message {
            headers: self.headers,
            headers_truncated: self.headers_truncated,
            scan: self.scan,
            bytes,
            body_kept: self.keep_body,
            body_hashes: self.hashers.finish(),
        })
    }
}

/// The bytes of a whole message, in memory or mapped from its spill file.
pub enum MessageBytes {
    Memory(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl Deref for MessageBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            MessageBytes::Memory(v) => v,
            MessageBytes::Mapped(m) => m,
        }
    }
}

/// One complete message: the header fields as seen (for occurrence counting) and the raw bytes
/// (the header block alone when the plan did not keep the body).
pub struct Message {
    pub headers: Vec<HeaderField>,
    pub headers_truncated: bool,
    /// Facts about every header field, including those past the storage cap.
    pub scan: HeaderScan,
    pub bytes: MessageBytes,
    /// False when only body hashes were computed and the body itself was not stored.
    pub body_kept: bool,
    /// DKIM body hashes computed while the body streamed past, as the plan asked.
    pub body_hashes: Vec<crate::dkimparse::BodyHash>,
}

impl Message {
    /// Builds a message from raw RFC 5322 bytes (CRLF or LF): for tests, tools and other front ends.
    pub fn from_raw(raw: &[u8]) -> io::Result<Message> {
        let mut b = MessageBuilder::new(Limits::default(), true);
        let (headers, body) = split_raw(raw);
        for (n, v) in headers {
            b.header(&n, &v);
        }
        b.end_of_headers();
        b.body(&body);
        b.finish()
    }

    pub fn raw(&self) -> &[u8] {
        &self.bytes
    }

    /// Values of every header named `name`, in order, as text without leading whitespace.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|h| h.name_is(name))
            .map(HeaderField::value_str)
            .collect()
    }

    /// Every From field of the message, stored or past the storage cap, in order of arrival
    /// (stored ones come first: the cap only ever drops a tail).
    pub fn from_fields(&self) -> impl Iterator<Item = &HeaderField> {
        self.headers
            .iter()
            .filter(|h| h.name_is("From"))
            .chain(self.scan.from_past_cap.iter())
    }

    /// Every incoming Authentication-Results field, stored or not.
    pub fn auth_results_seen(&self) -> &[SeenAuthResults] {
        &self.scan.auth_results
    }

    pub fn is_spilled(&self) -> bool {
        matches!(self.bytes, MessageBytes::Mapped(_))
    }
}

/// A header field as `(name, value after the colon)`.
pub type RawHeader = (Vec<u8>, Vec<u8>);

/// Splits a raw message into header fields (value after the colon, folds kept as LF the way an
/// MTA passes them) and a CRLF body.
pub fn split_raw(raw: &[u8]) -> (Vec<RawHeader>, Vec<u8>) {
    let mut headers: Vec<RawHeader> = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        let end = raw[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i + 1)
            .unwrap_or(raw.len());
        let line = &raw[pos..end];
        let content = strip_eol(line);
        pos = end;
        if content.is_empty() {
            break;
        }
        if (content[0] == b' ' || content[0] == b'\t') && !headers.is_empty() {
            let last = headers.last_mut().expect("checked non-empty");
            last.1.push(b'\n');
            last.1.extend_from_slice(content);
            continue;
        }
        match content.iter().position(|&b| b == b':') {
            Some(colon) => {
                let name = trim_end(&content[..colon]).to_vec();
                headers.push((name, content[colon + 1..].to_vec()));
            }
            None => {
                // Not a header: treat it as the start of the body, as mail parsers do.
                pos -= line.len();
                break;
            }
        }
    }
    let mut body = Vec::with_capacity(raw.len() - pos + 16);
    let mut prev = 0u8;
    for &b in &raw[pos..] {
        if b == b'\n' && prev != b'\r' {
            body.push(b'\r');
        }
        body.push(b);
        prev = b;
    }
    (headers, body)
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_end(s: &[u8]) -> &[u8] {
    let mut end = s.len();
    while end > 0 && (s[end - 1] == b' ' || s[end - 1] == b'\t') {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_folded_headers_with_crlf_and_leading_space() {
        let mut b = MessageBuilder::new(Limits::default(), true);
        b.header(b"Subject", b"  Hello\n\tfolded   world");
        b.header(b"X-NoSpace", b"value");
        b.end_of_headers();
        b.body(b"line 1\r\n");
        let m = b.finish().unwrap();
        assert_eq!(
            m.raw(),
            b"Subject:  Hello\r\n\tfolded   world\r\nX-NoSpace:value\r\n\r\nline 1\r\n"
        );
    }

    #[test]
    fn without_leading_space_one_space_is_restored() {
        let mut b = MessageBuilder::new(Limits::default(), false);
        b.header(b"From", b"a@example.com");
        let m = b.finish().unwrap();
        assert_eq!(m.raw(), b"From: a@example.com\r\n\r\n");
    }

    #[test]
    fn spills_past_threshold_and_reads_back_identically() {
        let limits = Limits {
            spill_threshold: 100,
            ..Limits::default()
        };
        let mut b = MessageBuilder::new(limits, true);
        b.header(b"From", b" a@example.com");
        let chunk = vec![b'x'; 70];
        let mut expected = b"From: a@example.com\r\n\r\n".to_vec();
        for _ in 0..5 {
            b.body(&chunk);
            expected.extend_from_slice(&chunk);
        }
        let m = b.finish().unwrap();
        assert!(m.is_spilled());
        assert_eq!(m.raw(), &expected[..]);
    }

    /// A plan that hashes instead of keeping: nothing is stored or spilled, whatever the size,
    /// and the hashes are the ones the stored body would give.
    #[test]
    fn hashing_plan_stores_no_body() {
        let limits = Limits {
            spill_threshold: 300,
            ..Limits::default()
        };
        let sig =
            " v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=s; h=from; bh=AAAA; b=AAAA";
        let chunk = b"some body  text \r\n".repeat(50);
        let mut kept = MessageBuilder::new(limits.clone(), true);
        let mut hashed = MessageBuilder::new(limits, true);
        for b in [&mut kept, &mut hashed] {
            b.header(b"DKIM-Signature", sig.as_bytes());
            b.header(b"From", b" a@example.com");
            b.end_of_headers();
        }
        let specs = crate::dkimparse::body_specs(hashed.header_block(), 10);
        assert_eq!(specs.len(), 1);
        hashed.plan_body(BodyPlan {
            keep_body: false,
            hashes: specs,
        });
        for _ in 0..20 {
            kept.body(&chunk);
            hashed.body(&chunk);
        }
        let (kept, hashed) = (kept.finish().unwrap(), hashed.finish().unwrap());
        assert!(kept.is_spilled() && kept.body_kept);
        assert!(!hashed.is_spilled() && !hashed.body_kept);
        assert!(hashed.raw().ends_with(b"From: a@example.com\r\n\r\n"));
        let from_file = crate::dkimparse::parse_capped(kept.raw(), 10).unwrap();
        let from_stream =
            crate::dkimparse::parse_capped_with(hashed.raw(), 10, &hashed.body_hashes).unwrap();
        assert_eq!(
            from_stream.message.body_hashes,
            from_file.message.body_hashes
        );
    }

    #[test]
    fn header_cap_flags_truncation() {
        let limits = Limits {
            max_header_bytes: 50,
            ..Limits::default()
        };
        let mut b = MessageBuilder::new(limits, true);
        b.header(b"A", b" short");
        b.header(b"B", &[b'y'; 100]);
        b.header(b"C", b" after");
        assert!(b.headers_truncated());
        assert_eq!(b.headers().len(), 1);
    }

    /// Past the cap nothing more is stored, but every A-R is noted with its occurrence and
    /// claimed id, and From fields are kept, so neither can hide behind filler fields.
    #[test]
    fn scan_sees_past_the_cap() {
        let limits = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        let mut b = MessageBuilder::new(limits, true);
        b.header(b"Authentication-Results", b" other.example; spf=pass");
        for _ in 0..5 {
            b.header(b"X-Filler", b" x");
        }
        b.header(b"Authentication-Results", b" MX.Example; dmarc=pass");
        b.header(b"From", b" a@evil.example");
        let m = b.finish().unwrap();
        assert!(m.headers_truncated);
        assert_eq!(m.headers.len(), 3);
        assert_eq!(
            m.auth_results_seen(),
            &[
                SeenAuthResults {
                    occurrence: 1,
                    authserv_id: Some("other.example".into())
                },
                SeenAuthResults {
                    occurrence: 2,
                    authserv_id: Some("mx.example".into())
                }
            ]
        );
        let froms: Vec<String> = m.from_fields().map(HeaderField::value_str).collect();
        assert_eq!(froms, vec!["a@evil.example".to_string()]);
        assert!(!m.scan.overflowed);
    }

    #[test]
    fn scan_bounds_itself() {
        let limits = Limits {
            max_headers: 1,
            ..Limits::default()
        };
        let mut b = MessageBuilder::new(limits, true);
        for _ in 0..(MAX_FROM_PAST_CAP + 2) {
            b.header(b"From", b" a@example.com");
        }
        assert!(b.finish().unwrap().scan.overflowed);
    }

    #[test]
    fn split_raw_handles_lf_and_folds() {
        let (h, body) = split_raw(b"From: a@b\nSubject: x\n y\n\nbody\nmore\n");
        assert_eq!(h.len(), 2);
        assert_eq!(h[1], (b"Subject".to_vec(), b" x\n y".to_vec()));
        assert_eq!(body, b"body\r\nmore\r\n");
    }

    #[test]
    fn from_raw_round_trips_crlf_message() {
        let raw = b"From: a@example.com\r\nSubject: hi\r\n\tthere\r\n\r\nBody\r\n";
        let m = Message::from_raw(raw).unwrap();
        assert_eq!(m.raw(), raw);
        assert_eq!(
            m.header_values("subject"),
            vec!["hi\r\n\tthere".to_string()]
        );
    }
}
