//! Verification: every DKIM-Signature up to a cap, each mapped to an RFC 8601 result with
//! OpenDKIM's properties and reasons, plus what the key record says (size, testing flag), which
//! mail-auth does not report and which drives `policy` results (small keys, rsa-sha1 per
//! RFC 8301).

use crate::config::Config;
use base64::Engine;
use chassis::mailauth::crypto::Algorithm;
use chassis::mailauth::dkim::Signature;
use chassis::mailauth::{DkimResult, MessageAuthenticator};
use std::time::Duration;

/// RFC 8601 DKIM result words.
pub use chassis::authres::ResultWord as Outcome;

/// What drives the configured On-* action for a failed signature.
pub use chassis::mailauth::DkimFailure as Failure;

/// The verdict on one signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureResult {
    pub outcome: Outcome,
    pub failure: Failure,
    pub reason: Option<String>,
    pub domain: String,
    pub selector: String,
    pub identity: String,
    pub algorithm: String,
    /// The first characters of b= (header.b), to tell signatures apart.
    pub b_prefix: String,
    pub key_bits: Option<usize>,
    /// The key record says t=y: the domain is testing, failures must not be acted upon.
    pub testing: bool,
}

/// Everything verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub results: Vec<SignatureResult>,
    /// Signatures beyond the cap, not looked at.
    pub ignored: usize,
}

/// What the key record says besides the key: parsed from the raw TXT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFacts {
    pub bits: Option<usize>,
    pub testing: bool,
    /// `p=` holds a public key of the record's type (RSA DER, or 32 Ed25519 bytes). An empty
    /// `p=` (revoked) counts as usable here: mail-auth reports revocation itself.
    pub usable: bool,
}

/// Reads `k=`, `p=` and `t=` from a DKIM key record.
pub fn key_facts(record: &str) -> KeyFacts {
    let mut k = "rsa".to_string();
    let mut p = String::new();
    let mut testing = false;
    for tag in record.split(';') {
        let Some((name, value)) = tag.split_once('=') else {
            continue;
        };
        let value: String = value.chars().filter(|c| !c.is_whitespace()).collect();
        match name.trim() {
            "k" => k = value.to_ascii_lowercase(),
            "p" => p = value,
            "t" => testing = value.split(':').any(|f| f.eq_ignore_ascii_case("y")),
            _ => {}
        }
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(p.as_bytes());
    let (bits, usable) = match (k.as_str(), &decoded) {
        (_, _) if p.is_empty() => (None, true),
        (_, Err(_)) => (None, false),
        ("ed25519", Ok(raw)) => (Some(256), raw.len() == 32),
        ("rsa", Ok(der)) => {
            let bits = rsa_modulus_bits(der);
            (bits, bits.is_some())
        }
        _ => (None, true),
    };
    KeyFacts {
        bits,
        testing,
        usable,
    }
}

/// Reads one DER TLV: (tag, content, rest).
fn der_tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 & 0x80 == 0 {
        (len0 as usize, rest)
    } else {
        let n = (len0 & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The RSA modulus size of a SubjectPublicKeyInfo or PKCS#1 RSAPublicKey DER blob.
pub fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    let (tag, content, _) = der_tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (first_tag, first, rest) = der_tlv(content)?;
    let modulus = match first_tag {
        0x02 => first,
        0x30 => {
            let (bs_tag, bitstring, _) = der_tlv(rest)?;
            if bs_tag != 0x03 || bitstring.is_empty() {
                return None;
            }
            let (seq_tag, seq, _) = der_tlv(&bitstring[1..])?;
            if seq_tag != 0x30 {
                return None;
            }
            let (int_tag, n, _) = der_tlv(seq)?;
            if int_tag != 0x02 {
                return None;
            }
            n
        }
        _ => return None,
    };
    let start = modulus.iter().position(|&b| b != 0)?;
    let significant = &modulus[start..];
    Some(significant.len() * 8 - significant[0].leading_zeros() as usize)
}

fn b_prefix(sig: &Signature) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(&sig.b);
    b.chars().take(8).collect()
}

/// Applies local policy on top of the cryptographic result: RFC 8301 (rsa-sha1 and keys under
/// the configured minimum are not acceptable).
fn apply_policy(cfg: &Config, r: &mut SignatureResult, sig: &Signature) {
    if r.outcome != Outcome::Pass && r.outcome != Outcome::Fail {
        return;
    }
    let rsa = matches!(sig.a, Algorithm::RsaSha1 | Algorithm::RsaSha256);
    if let (true, Some(bits)) = (rsa, r.key_bits) {
        if bits < cfg.minimum_key_bits {
            r.outcome = Outcome::Policy;
            r.failure = Failure::None;
            r.reason = Some(format!("signing key too small ({bits} bits)"));
            return;
        }
    }
    if r.outcome == Outcome::Pass && sig.a == Algorithm::RsaSha1 && !cfg.allow_sha1 {
        r.outcome = Outcome::Policy;
        r.reason = Some("rsa-sha1 is not acceptable (RFC 8301)".into());
    }
}

fn domain_key_name(sig: &Signature) -> String {
    format!("{}._domainkey.{}.", sig.s, sig.d.trim_end_matches('.'))
}

/// `d=` / `s=` syntax: dot-separated labels of letters, digits, `-` and `_` (U-labels allowed).
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

/// Verifies up to the configured number of signatures in `raw`, within `budget` for all DNS.
/// Looks up the key records of every signature whose body hash matched, all at once, so a
/// message with several signatures waits for one DNS round trip rather than one per signature
/// (mail-auth then finds the answers in the resolver's cache). Returns each record's raw text
/// by name, for [`key_facts`].
async fn prefetch_keys(
    auth: &MessageAuthenticator,
    msg: &chassis::mailauth::AuthenticatedMessage<'_>,
) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<String> = Vec::new();
    for h in &msg.dkim_headers {
        let sig = &h.header;
        let ha = chassis::mailauth::crypto::HashAlgorithm::from(sig.a);
        let body_ok = msg
            .body_hashes
            .iter()
            .any(|(c, a, l, bh)| *c == sig.cb && *a == ha && *l == sig.l && *bh == sig.bh);
        let name = domain_key_name(sig);
        if body_ok && is_dns_name(&sig.d) && is_dns_name(&sig.s) && !names.contains(&name) {
            names.push(name);
        }
    }
    let lookups = names.iter().map(|n| auth.txt_raw_lookup(n.clone()));
    let answers = futures_util::future::join_all(lookups).await;
    names
        .into_iter()
        .zip(answers)
        .filter_map(|(n, a)| a.ok().map(|txt| (n, txt)))
        .collect()
}

/// Verifies up to `max_signatures_to_verify` signatures of `raw`, using `streamed` body hashes
/// when they were computed as the body arrived (`raw` is then the header block alone).
pub async fn verify(
    auth: &MessageAuthenticator,
    keys: &chassis::keycache::TxtCache,
    cfg: &Config,
    raw: &[u8],
    streamed: &[chassis::dkimparse::BodyHash],
    budget: Duration,
) -> VerifyReport {
    let Some(capped) =
        chassis::dkimparse::parse_capped_with(raw, cfg.max_signatures_to_verify, streamed)
    else {
        return VerifyReport::default();
    };
    let msg = &capped.message;
    let mut report = VerifyReport {
        ignored: capped.ignored,
        ..VerifyReport::default()
    };

    let metrics = chassis::metrics::metrics();
    let started = std::time::Instant::now();
    let verified = tokio::time::timeout(budget, async {
        let prefetched = prefetch_keys(auth, msg).await;
        let outputs = auth
            .verify_dkim(chassis::mailauth::Parameters::new(msg).with_txt_cache(keys))
            .await;
        (prefetched, outputs)
    })
    .await;
    metrics.dns_seconds.observe(started.elapsed().as_secs_f64());
    let (prefetched, outputs) = match verified {
        Ok((prefetched, o)) => {
            if o.iter()
                .any(|out| matches!(out.result(), DkimResult::TempError(_)))
            {
                metrics.dns_errors.inc();
            }
            (prefetched, o)
        }
        Err(_) => {
            metrics.dns_errors.inc();
            // Out of time: every signature is a temporary error, so the sender may retry.
            report.results = msg
                .dkim_headers
                .iter()
                .map(|h| SignatureResult {
                    outcome: Outcome::TempError,
                    failure: Failure::DnsError,
                    reason: Some("key retrieval timed out".into()),
                    domain: h.header.d.clone(),
                    selector: h.header.s.clone(),
                    identity: h.header.i.clone(),
                    algorithm: h.header.a.name().into(),
                    b_prefix: b_prefix(&h.header),
                    key_bits: None,
                    testing: false,
                })
                .collect();
            return report;
        }
    };
    for out in outputs {
        let judged = chassis::mailauth::judge_dkim(out.result());
        let (outcome, failure, reason) = (judged.word, judged.failure, judged.reason);
        let mut r = SignatureResult {
            outcome,
            failure,
            reason,
            domain: String::new(),
            selector: String::new(),
            identity: String::new(),
            algorithm: String::new(),
            b_prefix: String::new(),
            key_bits: None,
            testing: false,
        };
        if let Some(sig) = out.signature() {
            if !is_dns_name(&sig.d) || !is_dns_name(&sig.s) {
                // Whatever the DNS said, d= and s= that are not domain names are refused, and
                // kept out of our A-R (domain injection, CVE-2020-12272's class).
                r.outcome = Outcome::PermError;
                r.failure = Failure::BadSignature;
                r.reason = Some("bad signature data: d= or s= is not a domain name".into());
                report.results.push(r);
                continue;
            }
            r.domain = sig.d.clone();
            r.selector = sig.s.clone();
            r.identity = sig.i.clone();
            r.algorithm = sig.a.name().into();
            r.b_prefix = b_prefix(sig);
            if matches!(r.outcome, Outcome::Pass | Outcome::Fail) {
                let name = domain_key_name(sig);
                let txt = match prefetched.iter().find(|(n, _)| *n == name) {
                    Some((_, txt)) => Some(txt.clone()),
                    // Not prefetched (e.g. the lookup failed then but succeeded for mail-auth):
                    // from the resolver cache, bounded.
                    None => tokio::time::timeout(Duration::from_secs(2), auth.txt_raw_lookup(name))
                        .await
                        .ok()
                        .and_then(Result::ok),
                };
                if let Some(txt) = txt {
                    let facts = key_facts(&String::from_utf8_lossy(&txt));
                    r.key_bits = facts.bits;
                    r.testing = facts.testing;
                    if !facts.usable {
                        // RFC 6376 §6.1.2 step 7: a public key that cannot be decoded is a key
                        // problem (permerror), not a failed signature (mail-auth says fail).
                        r.outcome = Outcome::PermError;
                        r.failure = Failure::KeyNotFound;
                        r.reason = Some("key syntax error: public key cannot be decoded".into());
                    }
                }
            }
            apply_policy(cfg, &mut r, sig);
        }
        report.results.push(r);
    }
    for _ in 0..capped.unparseable {
        report.results.push(SignatureResult {
            outcome: Outcome::Neutral,
            failure: Failure::BadSignature,
            reason: Some("bad signature data: DKIM-Signature cannot be parsed".into()),
            domain: String::new(),
            selector: String::new(),
            identity: String::new(),
            algorithm: String::new(),
            b_prefix: String::new(),
            key_bits: None,
            testing: false,
        });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_facts_of_rsa_and_ed25519_records() {
        // A 512-bit SubjectPublicKeyInfo from the Mail::DKIM test data family (public key, no secret).
        let rsa512 = "v=DKIM1; t=y; p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBALgSoqXVSEmfcIsOzw7oRuCCOwsmtX/SJnTWxYyj2leFxfS/AVJ+dYfY+hXqMsT7l+MZvvh/R1WzN4MO/kI/7XsCAwEAAQ==";
        let f = key_facts(rsa512);
        assert_eq!(f.bits, Some(512));
        assert!(f.testing);
        let ed = key_facts("v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
        assert_eq!(f.bits.map(|_| ()), Some(()));
        assert_eq!(ed.bits, Some(256));
        assert!(!ed.testing);
        assert_eq!(key_facts("v=DKIM1; p=").bits, None);
        assert_eq!(key_facts("garbage").bits, None);
        // Usable keys; an empty p= is revocation (mail-auth's word), not a decoding problem.
        assert!(f.usable && ed.usable && key_facts("v=DKIM1; p=").usable);
        // Base64 that is no RSA key, an Ed25519 key of the wrong length, no base64 at all.
        assert!(!key_facts("v=DKIM1; p=AAAAAAAA").usable);
        assert!(!key_facts("v=DKIM1; k=ed25519; p=AAAAAAAA").usable);
        assert!(!key_facts("v=DKIM1; p=!!notbase64").usable);
    }

    #[test]
    fn modulus_of_generated_2048_key() {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let spki = pair.public_key().as_der().unwrap();
        assert_eq!(rsa_modulus_bits(spki.as_ref()), Some(2048));
        assert_eq!(rsa_modulus_bits(pair.public_key().as_ref()), Some(2048));
        assert_eq!(rsa_modulus_bits(&[0x30, 0x80]), None);
        assert_eq!(rsa_modulus_bits(&[]), None);
    }

    #[test]
    fn d_and_s_must_be_domain_names() {
        for ok in [
            "example.com",
            "example.com.",
            "sel_1.example-2.com",
            "r\u{e9}sa",
            "a",
        ] {
            assert!(is_dns_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a..b",
            ".a",
            "ex\"ample.com",
            "a b",
            "../../etc/passwd",
            "x;y",
            "a(b.example",
            &"l".repeat(64),
        ] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
