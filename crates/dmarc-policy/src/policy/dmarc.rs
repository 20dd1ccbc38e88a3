//! DMARC evaluation: mail-auth's `verify_dmarc` (RFC 9989 DNS tree walk, `np=`, `psd=`, `t=`,
//! relaxed/strict alignment) plus what it does not tell us and a report needs: the domain the
//! record was found at, the published tags as written, and RFC 7489 `pct=` (which DMARCbis
//! dropped and mail-auth ignores, but records still carry and we still honour).

use super::records;
use crate::history::Published;
use chassis::mailauth::dmarc::DmarcParameters;
use chassis::mailauth::dmarc::{Alignment, Dmarc, Policy, Psd};
use chassis::mailauth::{
    AuthenticatedMessage, DkimOutput, DmarcResult, MessageAuthenticator, Parameters, SpfOutput,
    SpfResult,
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
    /// Why DMARC was not applied although a policy exists (several records, RFC 7489 §6.6.3),
    /// for the log line and the A-R `reason`.
    pub not_applied: Option<String>,
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

/// A record's rua= or ruf= URIs as the report program wants them. mail-auth keeps only the
/// address of `mailto:` URIs; the history keeps the URI, with its `!size` limit (in bytes).
pub fn report_uris(uris: &[chassis::mailauth::dmarc::URI]) -> Vec<String> {
    uris.iter()
        .map(|u| {
            let uri = match u.uri() {
                a if a.contains(':') => a.to_string(),
                a => format!("mailto:{a}"),
            };
            match u.max_size() {
                0 => uri,
                n => format!("{uri}!{n}"),
            }
        })
        .collect()
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
        rua: report_uris(&record.rua),
    }
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
    let found = records::discover(auth, from_domain).await;
    if let Some((name, n)) = found.conflicting() {
        return DmarcCheck {
            outcome: Outcome::None,
            policy: Policy::None,
            record: None,
            policy_domain: None,
            published: None,
            dkim_aligned: false,
            spf_aligned: false,
            not_applied: Some(format!(
                "{n} DMARC records at _dmarc.{name}, DMARC not applied (RFC 7489 section 6.6.3)"
            )),
        };
    }
    let cache = found.cache();
    let spf = SpfOutput::new(spf_domain.to_string()).with_result(spf_result);
    let out = auth
        .verify_dmarc(
            Parameters::new(DmarcParameters::new(message, dkim, spf_domain, &spf))
                .with_txt_cache(&cache),
        )
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
            let pd = found.located(r).map(str::to_string);
            let pct = pd
                .as_deref()
                .and_then(|d| found.text_at(d))
                .and_then(pct_tag);
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
        not_applied: None,
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
