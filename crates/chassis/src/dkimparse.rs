//! Parsing a message for DKIM verification without handing hostile input a CPU lever. mail-auth's
//! parser hashes the body once per distinct (c=, a=, l=) among *all* DKIM-Signature fields before
//! any cap can apply, so 1,000 forged signatures with distinct `l=` would cost 1,000 passes over
//! the body. Here only the header block goes through its parser; the signature list is capped;
//! then just the kept signatures' body hashes are computed. Both daemons verify through this.

use crate::mailauth::crypto::{HashAlgorithm, HashContext, HashImpl, Sha1, Sha256};
use crate::mailauth::dkim::BodyHasher;
use crate::mailauth::dkim::Canonicalization;
use crate::mailauth::{AuthenticatedMessage, Error};

/// One body hash a signature needs: body canonicalization, hash algorithm and `l=` (0 = the
/// whole body).
pub type BodyHashSpec = (Canonicalization, HashAlgorithm, u64);

/// A computed body hash, in the shape of `AuthenticatedMessage::body_hashes`.
pub type BodyHash = (Canonicalization, HashAlgorithm, u64, Vec<u8>);

enum RunningHash {
    Sha1(BodyHasher<<Sha1 as HashImpl>::Context>),
    Sha256(BodyHasher<<Sha256 as HashImpl>::Context>),
}

/// Body hashes computed while the body streams past, so a message that is only verified never
/// has to be stored: no buffer, no spill file, one pass over each chunk as it arrives.
#[derive(Default)]
pub struct BodyHashers {
    running: Vec<(BodyHashSpec, RunningHash)>,
}

impl BodyHashers {
    /// One hasher per distinct spec.
    pub fn new(specs: &[BodyHashSpec]) -> Self {
        let mut running: Vec<(BodyHashSpec, RunningHash)> = Vec::new();
        for &(c, a, l) in specs {
            if running.iter().any(|(s, _)| *s == (c, a, l)) {
                continue;
            }
            let h = match a {
                HashAlgorithm::Sha1 => RunningHash::Sha1(BodyHasher::new(Sha1::hasher(), c, l)),
                HashAlgorithm::Sha256 => {
                    RunningHash::Sha256(BodyHasher::new(Sha256::hasher(), c, l))
                }
            };
            running.push(((c, a, l), h));
        }
        Self { running }
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Feeds the next body chunk (CRLF line ends, as the MTA sends them).
    pub fn write(&mut self, chunk: &[u8]) {
        for (_, h) in &mut self.running {
            match h {
                RunningHash::Sha1(h) => h.write(chunk),
                RunningHash::Sha256(h) => h.write(chunk),
            }
        }
    }

    /// The finished hashes.
    pub fn finish(self) -> Vec<BodyHash> {
        self.running
            .into_iter()
            .map(|((c, a, l), h)| {
                let digest = match h {
                    RunningHash::Sha1(h) => h.finish().0.complete(),
                    RunningHash::Sha256(h) => h.finish().0.complete(),
                };
                (c, a, l, digest.as_ref().to_vec())
            })
            .collect()
    }
}

/// The body hashes that the signatures [`parse_capped`] would keep from this header block need,
/// so they can be computed while the body arrives. `header_block` ends with the empty line.
pub fn body_specs(header_block: &[u8], cap: usize) -> Vec<BodyHashSpec> {
    let Some(msg) = AuthenticatedMessage::parse_with_opts(header_block, None, false) else {
        return Vec::new();
    };
    let mut specs: Vec<BodyHashSpec> = Vec::new();
    for h in msg.dkim_headers.iter().take(cap) {
        let spec = (h.header.cb, HashAlgorithm::from(h.header.a), h.header.l);
        if !specs.contains(&spec) {
            specs.push(spec);
        }
    }
    // ARC: only the newest ARC-Message-Signature is checked (RFC 8617 §5.2), one hash more.
    if let Some(spec) = crate::arc::newest_ams_spec(&msg) {
        if !specs.contains(&spec) {
            specs.push(spec);
        }
    }
    specs
}

/// A message ready for `verify_dkim`, and how many signatures were left out by the cap.
pub struct CappedMessage<'x> {
    pub message: AuthenticatedMessage<'x>,
    /// Signatures (well-formed or not) beyond the cap.
    pub ignored: usize,
    /// DKIM-Signature fields mail-auth could not parse at all (missing required tags, bad
    /// base64...) and drops without a trace; within the cap. They are still signatures, and
    /// reporting the message as unsigned would be wrong (RFC 8601 `neutral`/`permerror`).
    pub unparseable: usize,
}

/// A prefix of `raw` that holds its whole header block: mail-auth's header scan stops at the
/// first empty line at the latest, so parsing this prefix finds the same fields and body offset.
fn header_block_bound(raw: &[u8]) -> usize {
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |i| i + 4)
}

/// The body hashes the kept signatures need, one pass per distinct (c=, a=, l=), taken from
/// `streamed` when they were computed as the body arrived; plus the newest
/// ARC-Message-Signature's (mail-auth's `verify_arc` expects to find it: it is the only one it
/// checks).
fn hash_bodies(msg: &mut AuthenticatedMessage<'_>, body: &[u8], streamed: &[BodyHash]) {
    msg.body_hashes.clear();
    let mut wanted: Vec<BodyHashSpec> = msg
        .dkim_headers
        .iter()
        .map(|h| (h.header.cb, HashAlgorithm::from(h.header.a), h.header.l))
        .collect();
    wanted.extend(crate::arc::newest_ams_spec(msg));
    for (cb, ha, l) in wanted {
        if !msg
            .body_hashes
            .iter()
            .any(|(c, a, ll, _)| *c == cb && *a == ha && *ll == l)
        {
            let bh = match streamed
                .iter()
                .find(|(c, a, ll, _)| *c == cb && *a == ha && *ll == l)
            {
                Some(done) => done.3.clone(),
                None => ha.hash(cb.canonical_body(body, l)).as_ref().to_vec(),
            };
            msg.body_hashes.push((cb, ha, l, bh));
        }
    }
}

/// Parses `raw` (CRLF) keeping at most `cap` signatures, counting malformed ones too (they
/// surface as `neutral` results). `None` when the message has no parseable header block.
pub fn parse_capped(raw: &[u8], cap: usize) -> Option<CappedMessage<'_>> {
    parse_capped_with(raw, cap, &[])
}

/// [`parse_capped`] using body hashes already computed while the body streamed past (see
/// [`BodyHashers`]); `raw` may then hold the header block alone.
pub fn parse_capped_with<'x>(
    raw: &'x [u8],
    cap: usize,
    streamed: &[BodyHash],
) -> Option<CappedMessage<'x>> {
    let mut msg =
        AuthenticatedMessage::parse_with_opts(&raw[..header_block_bound(raw)], None, false)?;
    msg.raw_message = raw;
    let body_offset = (msg.body_offset as usize).min(raw.len());
    let malformed = msg
        .errors
        .iter()
        .filter(|e| matches!(e.header, Error::Dkim(_)))
        .count();
    let present = msg
        .headers
        .iter()
        .filter(|(n, _)| n.trim_ascii().eq_ignore_ascii_case(b"DKIM-Signature"))
        .count();
    let dropped = present.saturating_sub(msg.dkim_headers.len() + malformed);
    let total = msg.dkim_headers.len() + malformed + dropped;
    msg.dkim_headers.truncate(cap);
    let room = cap.saturating_sub(msg.dkim_headers.len());
    let mut seen = 0usize;
    msg.errors.retain(|e| {
        if matches!(e.header, Error::Dkim(_)) {
            seen += 1;
            seen <= room
        } else {
            true
        }
    });
    let unparseable = dropped.min(room.saturating_sub(malformed));
    let kept = msg.dkim_headers.len() + malformed.min(room) + unparseable;
    hash_bodies(&mut msg, &raw[body_offset..], streamed);
    Some(CappedMessage {
        message: msg,
        ignored: total - kept,
        unparseable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(l: usize) -> String {
        format!(
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=s; l={l}; h=from; bh=AAAA; b=AAAA\r\n"
        )
    }

    #[test]
    fn caps_signatures_and_matches_a_full_parse() {
        let mut raw = String::new();
        for l in 0..30 {
            raw.push_str(&sig(l + 1));
        }
        raw.push_str("From: a@example.com\r\n\r\nbody line\r\nmore\r\n");
        let capped = parse_capped(raw.as_bytes(), 10).unwrap();
        assert_eq!(capped.message.dkim_headers.len(), 10);
        assert_eq!(capped.ignored, 20);
        assert_eq!(
            capped.message.body_hashes.len(),
            10,
            "only kept signatures are hashed"
        );
        let full = AuthenticatedMessage::parse_with_opts(raw.as_bytes(), None, false).unwrap();
        assert_eq!(full.body_offset, capped.message.body_offset);
        assert_eq!(full.raw_body(), capped.message.raw_body());
        for kept in &capped.message.body_hashes {
            assert!(
                full.body_hashes.contains(kept),
                "same hashes as mail-auth's own"
            );
        }
    }

    /// Odd header blocks parse the same through the prefix (regression for the 1,000-signature
    /// CPU blow-up fix).
    #[test]
    fn prefix_parse_matches_full_parse_on_odd_messages() {
        let mut sigs = String::new();
        for l in 1..=3 {
            sigs.push_str(&format!(
                "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=s{l};\r\n\tl={l}; h=from; bh=AAAA; b=AAAA\r\n"
            ));
        }
        let cases = [
            format!("{sigs}From: a@example.com\r\nSubject: x\r\n\r\nbody line\r\n\r\nmore\r\n"),
            format!("{sigs}From: a@example.com\r\nX-Odd: a\r\n\r\nb\r\n\r\nbody\r\n"),
            format!("{sigs}From: a@example.com\r\nnot a header\r\nrest\r\n\r\nbody\r\n"),
            format!("{sigs}From: a@example.com\n\nLF body\n"),
            format!("{sigs}From: a@example.com\r\n"),
        ];
        for raw in &cases {
            let raw = raw.as_bytes();
            let full = AuthenticatedMessage::parse_with_opts(raw, None, false).unwrap();
            let capped = parse_capped(raw, 1).unwrap();
            let text = String::from_utf8_lossy(raw);
            assert_eq!(capped.message.body_offset, full.body_offset, "{text}");
            assert_eq!(capped.message.headers, full.headers, "{text}");
            assert_eq!(
                (capped.message.dkim_headers.len(), capped.ignored),
                (1, 2),
                "{text}"
            );
            assert_eq!(capped.message.body_hashes.len(), 1, "{text}");
            assert_eq!(capped.message.body_hashes[0], full.body_hashes[0], "{text}");
        }
    }

    #[test]
    fn unparseable_signatures_are_counted() {
        let raw = b"DKIM-Signature: garbage\r\nDKIM-Signature: v=1; a=rsa-sha256\r\nFrom: a@example.com\r\n\r\nx\r\n";
        let c = parse_capped(raw, 10).unwrap();
        assert_eq!(c.message.dkim_headers.len(), 0);
        let malformed = c
            .message
            .errors
            .iter()
            .filter(|e| matches!(e.header, Error::Dkim(_)))
            .count();
        assert_eq!(
            c.unparseable + malformed,
            2,
            "both fields are accounted for"
        );
        assert_eq!(c.ignored, 0);
    }

    /// Hashes computed chunk by chunk from the specs of the header block equal the ones computed
    /// over the stored body, for every canonicalization, algorithm and l=, whatever the chunking.
    #[test]
    fn streamed_body_hashes_equal_stored_ones() {
        let sigs = [
            "a=rsa-sha256; c=relaxed/relaxed",
            "a=rsa-sha256; c=simple/simple",
            "a=rsa-sha1; c=relaxed/simple",
            "a=rsa-sha256; c=relaxed/relaxed; l=7",
            "a=ed25519-sha256; c=simple/relaxed; l=100",
        ];
        let mut head = String::new();
        for (n, tags) in sigs.iter().enumerate() {
            head.push_str(&format!(
                "DKIM-Signature: v=1; {tags}; d=example.com; s=s{n}; h=from; bh=AAAA; b=AAAA\r\n"
            ));
        }
        head.push_str("From: a@example.com\r\n\r\n");
        let bodies: [&[u8]; 4] = [
            b"",
            b"\r\n\r\n",
            b"line  with \t  spaces \r\n\r\n trailing \t\r\n\r\n\r\n",
            b"no final crlf\r\n  indented\tx  ",
        ];
        for body in bodies {
            let mut raw = head.clone().into_bytes();
            raw.extend_from_slice(body);
            let stored = parse_capped(&raw, 10).unwrap();
            let specs = body_specs(head.as_bytes(), 10);
            assert_eq!(specs.len(), 5);
            for chunk in [1usize, 3, 64] {
                let mut hashers = BodyHashers::new(&specs);
                for piece in body.chunks(chunk) {
                    hashers.write(piece);
                }
                let streamed = hashers.finish();
                let from_stream = parse_capped_with(head.as_bytes(), 10, &streamed).unwrap();
                assert_eq!(
                    from_stream.message.body_hashes, stored.message.body_hashes,
                    "body {body:?} in chunks of {chunk}"
                );
            }
        }
    }

    #[test]
    fn body_specs_follow_the_cap() {
        let mut raw = String::new();
        for l in 0..30 {
            raw.push_str(&sig(l + 1));
        }
        raw.push_str("From: a@example.com\r\n\r\n");
        assert_eq!(body_specs(raw.as_bytes(), 10).len(), 10);
        assert!(body_specs(b"From: a@example.com\r\n\r\n", 10).is_empty());
    }

    /// ARC adds at most one body hash (the newest ARC-Message-Signature's), however many AMS
    /// fields with distinct `l=` a message carries.
    #[test]
    fn arc_message_signatures_add_one_body_hash() {
        let mut raw = String::new();
        for l in 0..30 {
            raw.push_str(&sig(l + 1));
        }
        for i in 1..=1000u32 {
            raw.push_str(&format!(
                "ARC-Message-Signature: i={}; a=rsa-sha256; c=relaxed/relaxed; d=a.example; s=s; l={i}; h=from; bh=AAAA; b=AAAA\r\n",
                i % 50 + 1
            ));
        }
        raw.push_str("From: a@example.com\r\n\r\nbody line\r\n");
        assert_eq!(body_specs(raw.as_bytes(), 10).len(), 11);
        let capped = parse_capped(raw.as_bytes(), 10).unwrap();
        assert_eq!(capped.message.body_hashes.len(), 11);
        let arc_only = parse_capped(raw.as_bytes(), 0).unwrap();
        assert_eq!(arc_only.message.body_hashes.len(), 1);
    }

    #[test]
    fn headers_only_message() {
        let c = parse_capped(b"From: a@example.com\r\n", 10).unwrap();
        assert_eq!(c.ignored, 0);
        assert!(c.message.dkim_headers.is_empty());
    }
}
