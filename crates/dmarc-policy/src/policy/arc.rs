//! The ARC override (RFC 8617 §7.2, RFC 7489 §6.7 "local policy"): when DMARC fails but the
//! message carries a validated ARC chain, and the newest set sealed by a domain the operator
//! trusts (`trusted_arc_sealers`) recorded an aligned DKIM or SPF pass (or a DMARC pass) for the
//! author domain, the failure is not enforced. A sealer that is not listed is never trusted,
//! whatever its ARC-Authentication-Results say, and nothing is trusted from a chain that does
//! not validate.

use chassis::arc::Chain;
use chassis::authres::{AuthResults, ResultWord};

/// Why the override applies: which sealer, at which instance, and what it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArcTrust {
    pub sealer: String,
    pub instance: u32,
    /// `dmarc`, `dkim` or `spf`: the aligned pass the sealer recorded.
    pub method: &'static str,
}

impl ArcTrust {
    /// The text for the history row's override comment and our A-R.
    pub fn comment(&self) -> String {
        format!(
            "arc=pass as[{}].d={} aar {}=pass",
            self.instance, self.sealer, self.method
        )
    }
}

/// Relaxed or strict identifier alignment without DNS: the same name, or (relaxed) one a
/// subdomain of the other. Sibling subdomains of one organizational domain do not align here;
/// that costs an override, never grants a wrong one.
fn aligned(id: &str, author: &str, strict: bool) -> bool {
    let id = id.trim_end_matches('.').to_ascii_lowercase();
    let author = author.trim_end_matches('.').to_ascii_lowercase();
    if id.is_empty() {
        return false;
    }
    id == author
        || (!strict && (id.ends_with(&format!(".{author}")) || author.ends_with(&format!(".{id}"))))
}

/// What the sealer's AAR says for `author`: an aligned pass, by which method.
fn aligned_pass(
    results: &AuthResults,
    author: &str,
    strict_dkim: bool,
    strict_spf: bool,
) -> Option<&'static str> {
    let pass =
        |r: &&chassis::authres::ResInfo, method: &str| r.method == method && r.result == "pass";
    if results
        .results
        .iter()
        .filter(|r| pass(r, "dmarc"))
        .any(|r| {
            r.prop("header.from")
                .is_some_and(|d| aligned(d, author, true))
        })
    {
        return Some("dmarc");
    }
    if results.results.iter().filter(|r| pass(r, "dkim")).any(|r| {
        r.prop("header.d")
            .is_some_and(|d| aligned(d, author, strict_dkim))
    }) {
        return Some("dkim");
    }
    let spf_domain = |r: &chassis::authres::ResInfo| -> Option<String> {
        r.prop("smtp.mailfrom")
            .map(|v| v.rsplit_once('@').map_or(v, |(_, d)| d).to_string())
    };
    if results
        .results
        .iter()
        .filter(|r| pass(r, "spf"))
        .any(|r| spf_domain(r).is_some_and(|d| aligned(&d, author, strict_spf)))
    {
        return Some("spf");
    }
    None
}

/// The override for `author`, if the chain passes and the newest set sealed by a trusted
/// domain shows an aligned pass.
pub fn trusted_pass(
    chain: &Chain,
    trusted: &[String],
    author: &str,
    strict_dkim: bool,
    strict_spf: bool,
) -> Option<ArcTrust> {
    if chain.word != ResultWord::Pass || trusted.is_empty() {
        return None;
    }
    let newest_trusted = chain
        .sets
        .iter()
        .rev()
        .find(|s| trusted.iter().any(|t| t.eq_ignore_ascii_case(&s.domain)))?;
    let results = newest_trusted.results.as_ref()?;
    let method = aligned_pass(results, author, strict_dkim, strict_spf)?;
    Some(ArcTrust {
        sealer: newest_trusted.domain.clone(),
        instance: newest_trusted.instance,
        method,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chassis::arc::{Cv, SetSummary};

    fn chain(word: ResultWord, sets: &[(&str, &str)]) -> Chain {
        Chain {
            word,
            reason: None,
            sets: sets
                .iter()
                .enumerate()
                .map(|(n, (d, aar))| SetSummary {
                    instance: n as u32 + 1,
                    domain: d.to_string(),
                    selector: "s".into(),
                    cv: if n == 0 { Cv::None } else { Cv::Pass },
                    results: chassis::authres::parse(aar).ok(),
                })
                .collect(),
            newest_cv: Some(Cv::Pass),
        }
    }

    #[test]
    fn only_a_listed_sealer_on_a_passing_chain_counts() {
        let trusted = vec!["lists.example".to_string()];
        let c = chain(
            ResultWord::Pass,
            &[(
                "lists.example",
                "mx.lists.example; dkim=pass header.d=author.example",
            )],
        );
        assert_eq!(
            trusted_pass(&c, &trusted, "author.example", false, false),
            Some(ArcTrust {
                sealer: "lists.example".into(),
                instance: 1,
                method: "dkim"
            })
        );
        // Not listed: never trusted.
        assert_eq!(
            trusted_pass(
                &c,
                &["other.example".into()],
                "author.example",
                false,
                false
            ),
            None
        );
        // A chain that does not validate: nothing is trusted.
        let mut failed = c.clone();
        failed.word = ResultWord::Fail;
        assert_eq!(
            trusted_pass(&failed, &trusted, "author.example", false, false),
            None
        );
        // Unaligned pass, or a fail: no override.
        let c = chain(
            ResultWord::Pass,
            &[("lists.example", "mx.lists.example; dkim=pass header.d=evil.example; spf=fail smtp.mailfrom=author.example")],
        );
        assert_eq!(
            trusted_pass(&c, &trusted, "author.example", false, false),
            None
        );
    }

    #[test]
    fn the_newest_trusted_sealer_decides() {
        let trusted = vec!["first.example".to_string(), "second.example".to_string()];
        // The newer trusted sealer saw a failure: its word counts, not the older one's pass.
        let c = chain(
            ResultWord::Pass,
            &[
                (
                    "first.example",
                    "mx.first.example; dkim=pass header.d=author.example",
                ),
                (
                    "second.example",
                    "mx.second.example; dkim=fail header.d=author.example",
                ),
                (
                    "untrusted.example",
                    "mx.untrusted.example; dmarc=pass header.from=author.example",
                ),
            ],
        );
        assert_eq!(
            trusted_pass(&c, &trusted, "author.example", false, false),
            None
        );
        let c = chain(
            ResultWord::Pass,
            &[
                (
                    "first.example",
                    "mx.first.example; dkim=fail header.d=author.example",
                ),
                (
                    "second.example",
                    "mx.second.example; spf=pass smtp.mailfrom=bounce@mail.author.example",
                ),
            ],
        );
        let t = trusted_pass(&c, &trusted, "author.example", false, false).unwrap();
        assert_eq!(
            (t.sealer.as_str(), t.instance, t.method),
            ("second.example", 2, "spf")
        );
        assert_eq!(t.comment(), "arc=pass as[2].d=second.example aar spf=pass");
        // Strict SPF alignment: a subdomain does not align.
        assert_eq!(
            trusted_pass(&c, &trusted, "author.example", false, true),
            None
        );
    }
}
