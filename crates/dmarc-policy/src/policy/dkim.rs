//! DKIM results for DMARC, from one of two sources:
//!
//! * our own verification with mail-auth over the raw message (the default: dmarc-milter then
//!   works alone, behind any MTA);
//! * the Authentication-Results headers written by authserv-ids the operator trusts (for a
//!   DKIM verifier earlier in the milter chain), parsed with the chassis' hostile-input parser.
//!   A `header.d` is used only when it is one well-formed domain name (CVE-2020-12272 smuggled
//!   a second domain through it), and headers from any other authserv-id are ignored, however
//!   convincing they look.

use crate::history::DkimEntry;
use chassis::authres;
use chassis::mailauth::dkim::Signature;
use chassis::mailauth::{DkimOutput, DkimResult, DnsError, Error};
use chassis::message::HeaderField;

/// RFC 8601 word for a mail-auth DKIM result, read as dkim-milter reads it (one mapping for
/// both daemons, in the mail-auth adapter); a result without a signature is `none`.
pub fn result_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::None => "none",
        r => chassis::mailauth::judge_dkim(r).word.as_str(),
    }
}

/// Our own verification's results, for reports.
pub fn entries(outputs: &[DkimOutput<'_>]) -> Vec<DkimEntry> {
    outputs
        .iter()
        .filter_map(|o| {
            o.signature().map(|s| DkimEntry {
                domain: s.d.to_ascii_lowercase(),
                selector: s.s.clone(),
                result: result_word(o.result()).to_string(),
            })
        })
        .collect()
}

/// What trusted upstream headers said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstream {
    pub dkim: Vec<DkimEntry>,
    /// An SPF pass for exactly the envelope domain (`smtp.mailfrom`), the only SPF result
    /// OpenDMARC takes from a header.
    pub spf_pass: Option<String>,
    /// (1-based A-R occurrence, authserv-id) of the headers ignored as untrusted.
    pub ignored: Vec<(usize, String)>,
}

/// True for a plain domain name: dot-separated LDH labels (underscore allowed), nothing else.
pub fn is_domain(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn id_matches(id: &str, trusted: &[String]) -> bool {
    let key = |s: &str| {
        let s = s.split('/').next().unwrap_or("").trim();
        s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase()
    };
    let id = key(id);
    !id.is_empty() && trusted.iter().any(|t| key(t) == id)
}

/// Reads the DKIM and SPF results of every A-R header written by a trusted authserv-id.
pub fn from_trusted_headers(
    headers: &[HeaderField],
    trusted: &[String],
    envelope_domain: &str,
) -> Upstream {
    let mut up = Upstream::default();
    let ars = headers
        .iter()
        .filter(|h| h.name_is("Authentication-Results"));
    for (i, h) in ars.enumerate() {
        let value = h.value_str();
        let Ok(parsed) = authres::parse(&value) else {
            continue;
        };
        if !id_matches(&parsed.authserv_id, trusted) {
            up.ignored.push((i + 1, parsed.authserv_id.clone()));
            continue;
        }
        for r in &parsed.results {
            match r.method.as_str() {
                "dkim" => {
                    let Some(d) = r.prop("header.d").filter(|d| is_domain(d)) else {
                        continue;
                    };
                    let selector = r.prop("header.s").filter(|s| is_domain(s)).unwrap_or("-");
                    up.dkim.push(DkimEntry {
                        domain: d.trim_end_matches('.').to_ascii_lowercase(),
                        selector: selector.to_string(),
                        result: r.result.clone(),
                    });
                }
                "spf" if r.result == "pass" && !envelope_domain.is_empty() => {
                    let domain = r
                        .prop("smtp.mailfrom")
                        .map(|m| m.rsplit_once('@').map_or(m, |(_, d)| d))
                        .map(|d| d.trim_end_matches('.').to_ascii_lowercase());
                    if domain.as_deref() == Some(envelope_domain) {
                        up.spf_pass = Some(envelope_domain.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    up
}

/// Signatures standing for upstream results, for mail-auth's DMARC alignment: only `pass` and
/// `temperror` results matter to DMARC.
pub fn signatures(entries: &[DkimEntry]) -> Vec<(Signature, bool)> {
    entries
        .iter()
        .filter(|e| e.result == "pass" || e.result == "temperror")
        .map(|e| {
            (
                Signature {
                    d: e.domain.clone(),
                    s: e.selector.clone(),
                    ..Default::default()
                },
                e.result == "pass",
            )
        })
        .collect()
}

/// mail-auth outputs over `signatures`.
pub fn outputs(signatures: &[(Signature, bool)]) -> Vec<DkimOutput<'_>> {
    signatures
        .iter()
        .map(|(sig, pass)| {
            if *pass {
                DkimOutput::pass().with_signature(sig)
            } else {
                DkimOutput::temp_err(Error::Dns(DnsError::Resolver("upstream temperror".into())))
                    .with_signature(sig)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> HeaderField {
        HeaderField::new(name, value)
    }

    #[test]
    fn only_trusted_ids_and_clean_domains_count() {
        let headers = [
            h(
                "Authentication-Results",
                " evil.example; dkim=pass header.d=example.com header.s=s1",
            ),
            h(
                "Authentication-Results",
                " dkim.test; dkim=pass header.d=example.org header.s=s2;\n\tdkim=pass header.d=evil.com example.com;\n\tspf=pass smtp.mailfrom=bounce@Example.org",
            ),
        ];
        let up = from_trusted_headers(&headers, &["DKIM.test".into()], "example.org");
        assert_eq!(
            up.dkim,
            vec![DkimEntry {
                domain: "example.org".into(),
                selector: "s2".into(),
                result: "pass".into()
            }]
        );
        assert_eq!(up.spf_pass.as_deref(), Some("example.org"));
        assert_eq!(up.ignored, vec![(1, "evil.example".to_string())]);
    }

    #[test]
    fn spf_for_another_domain_is_not_taken() {
        let headers = [h(
            "Authentication-Results",
            " dkim.test; spf=pass smtp.helo=example.org",
        )];
        let up = from_trusted_headers(&headers, &["dkim.test".into()], "example.org");
        assert_eq!(up.spf_pass, None);
    }

    #[test]
    fn domain_syntax() {
        assert!(is_domain("a-b.example.com."));
        assert!(!is_domain("evil.com example.com"));
        assert!(!is_domain("a..b"));
        assert!(!is_domain("a@b"));
    }
}
