//! DMARC evaluation: mail-auth's `verify_dmarc` (RFC 9989 DNS tree walk, `np=`, `psd=`, `t=`,
//! relaxed/strict alignment) plus what it does not tell us and a report needs: the domain the
//! record was found at, the published tags as written, and RFC 7489 `pct=` (which DMARCbis
//! dropped and mail-auth ignores, but records still carry and we still honour).

use crate::history::Published;
use chassis::mailauth::common::NoCache;
use chassis::mailauth::dmarc::DmarcParameters;
use chassis::mailauth::dmarc::{Alignment, Dmarc, Policy, Psd};
use chassis::mailauth::{
    AuthenticatedMessage, DkimOutput, DmarcResult, MessageAuthenticator, SpfOutput, SpfResult, Txt,
};
use std::sync::Arc;

/// RFC 8601 / RFC 9989 result words.
pub use chassis::authres::ResultWord as Outcome;

/// What DMARC found for one message.
#[derive(Debug, Clone)]
pub struct DmarcCheck {
    pub outcome: Outcome,
    /// The policy to apply after sp/np and `t=y` (mail-auth's choice); `None` without a record.
    pub policy: Policy,
    pub record: Option<Arc<Dmarc>>,
    /// Where the record was found (author domain, organizational domain or PSD).
    pub policy_domain: Option<String>,
    pub published: Option<Published>,
    pub dkim_aligned: bool,
    pub spf_aligned: bool,
}

pub fn policy_word(p: Policy) -> &'static str {
    match p {
        Policy::Reject => "reject",
        Policy::Quarantine => "quarantine",
        Policy::None | Policy::Unspecified => "none",
    }
}

fn align_word(a: Alignment) -> &'static str {
    match a {
        Alignment::Relaxed => "r",
        Alignment::Strict => "s",
    }
}

/// `pct=` from a raw DMARC record, if present and valid (0–100).
pub fn pct_tag(raw: &str) -> Option<u8> {
    raw.split(';').find_map(|tag| {
        let (k, v) = tag.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("pct"))
            .then(|| v.trim().parse::<u8>().ok().filter(|n| *n <= 100))
            .flatten()
    })
}

fn published(record: &Dmarc, pct: Option<u8>) -> Published {
    Published {
        p: policy_word(record.p).to_string(),
        sp: policy_word(record.sp).to_string(),
        np: policy_word(record.np).to_string(),
        adkim: align_word(record.adkim).to_string(),
        aspf: align_word(record.aspf).to_string(),
        testing: record.t,
        pct,
        psd: match record.psd {
            Psd::Yes => "y",
            Psd::No => "n",
            Psd::Default => "u",
        }
        .to_string(),
        // mail-auth keeps only the address of `mailto:` URIs; reports want the URI.
        rua: record
            .rua
            .iter()
            .map(|u| match u.uri() {
                a if a.contains(':') => a.to_string(),
                a => format!("mailto:{a}"),
            })
            .collect(),
    }
}

/// The name the applied record was published at: the nearest ancestor of `from_domain`
/// (itself included) whose record equals `record`. Lookups hit the resolver's cache: the tree
/// walk just made them.
async fn locate(auth: &MessageAuthenticator, from_domain: &str, record: &Dmarc) -> Option<String> {
    let labels: Vec<&str> = from_domain.split('.').filter(|l| !l.is_empty()).collect();
    let mut found = None;
    for start in 0..labels.len() {
        let name = labels[start..].join(".");
        let key = format!("_dmarc.{name}.");
        if let Ok(r) = auth
            .txt_lookup::<Dmarc>(key, None::<&NoCache<Box<str>, Txt>>)
            .await
        {
            if *r == *record {
                if start == 0 {
                    return Some(name);
                }
                found = Some(name);
            }
        }
    }
    found
}

/// Runs DMARC for a message whose single author domain is `from_domain`.
/// `spf_domain` is the SPF-checked identity (MAIL FROM domain, or HELO for the null sender).
pub async fn check(
    auth: &MessageAuthenticator,
    message: &AuthenticatedMessage<'_>,
    dkim: &[DkimOutput<'_>],
    spf_domain: &str,
    spf_result: SpfResult,
    from_domain: &str,
) -> DmarcCheck {
    let spf = SpfOutput::new(spf_domain.to_string()).with_result(spf_result);
    let out = auth
        .verify_dmarc(DmarcParameters::new(message, dkim, spf_domain, &spf))
        .await;
    let outcome = match out.result() {
        DmarcResult::Pass => Outcome::Pass,
        DmarcResult::Fail(_) => Outcome::Fail,
        DmarcResult::TempError(_) => Outcome::TempError,
        DmarcResult::PermError(_) => Outcome::PermError,
        DmarcResult::None => Outcome::None,
    };
    let record = out.dmarc_record_cloned();
    let (policy_domain, published) = match &record {
        Some(r) => {
            let pd = locate(auth, from_domain, r).await;
            let pct = match &pd {
                Some(d) => auth
                    .txt_raw_lookup(format!("_dmarc.{d}."))
                    .await
                    .ok()
                    .and_then(|raw| pct_tag(&String::from_utf8_lossy(&raw))),
                None => None,
            };
            (pd, Some(published(r, pct)))
        }
        None => (None, None),
    };
    DmarcCheck {
        outcome,
        policy: if record.is_some() {
            out.policy()
        } else {
            Policy::None
        },
        record,
        policy_domain,
        published,
        dkim_aligned: *out.dkim_result() == DmarcResult::Pass,
        spf_aligned: *out.spf_result() == DmarcResult::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pct_values() {
        assert_eq!(pct_tag("v=DMARC1; p=reject; pct=20"), Some(20));
        assert_eq!(pct_tag("v=DMARC1; p=reject"), None);
        assert_eq!(pct_tag("v=DMARC1; PCT = 0 ;p=none"), Some(0));
        assert_eq!(pct_tag("v=DMARC1; pct=101"), None);
    }
}
