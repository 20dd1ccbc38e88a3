//! ARC for one message: verify the chain within the DNS budget, and seal a new set when an
//! `[[arc.seal]]` entry covers the message.
//!
//! What the new ARC-Authentication-Results records, and the `cv=` it seals with: a mailing
//! list receives a message (our inbound pass verifies it and writes our A-R, `arc=` included),
//! changes it, and sends it out again (the outbound pass seals). The outbound pass must record
//! what the inbound pass saw, not its own view of a message the list has changed, so when the
//! origin is trusted (the mail comes from our own list software) and the message carries an
//! Authentication-Results with our authserv-id, that one is copied and its `arc=` gives `cv=`,
//! as OpenARC and dkimpy do. Otherwise (a forwarder passing mail through in one go) the
//! Authentication-Results we write for this message is copied and the chain we just verified
//! gives `cv=`.

use crate::arc::SealRule;
use crate::runtime::Runtime;
use chassis::arc::{self as arcchain, Chain, Cv, Sealer};
use chassis::authres::{self, AuthResults, ResultWord};
use chassis::message::{HeaderField, Message};
use chassis::verdict::HeaderEdit;
use std::time::Duration;

/// Does the message carry any ARC field?
pub fn has_arc_fields(headers: &[HeaderField]) -> bool {
    headers
        .iter()
        .any(|h| arcchain::ArcField::of(&h.name).is_some())
}

/// The chain's verdict, within `budget` (past it: `temperror`).
pub async fn check(rt: &Runtime, msg: &Message, budget: Duration) -> Chain {
    // DKIM signatures are not needed here (cap 0): only the newest AMS's body hash is.
    let Some(capped) = chassis::dkimparse::parse_capped_with(msg.raw(), 0, &msg.body_hashes) else {
        return Chain::none();
    };
    let verified = tokio::time::timeout(
        budget,
        arcchain::verify(&rt.res.auth, &rt.res.keys, &msg.headers, &capped.message),
    )
    .await;
    match verified {
        Ok(chain) => {
            if chain.word == ResultWord::TempError {
                chassis::metrics::metrics().dns_errors.inc();
            }
            chain
        }
        Err(_) => {
            chassis::metrics::metrics().dns_errors.inc();
            Chain {
                word: ResultWord::TempError,
                reason: Some("key retrieval timed out".into()),
                ..Chain::none()
            }
        }
    }
}

/// Every incoming Authentication-Results with authserv-id `id`, merged into one (in header
/// order: dkim-milter's and dmarc-milter's, when both write our id), with what their `arc=`
/// result says; `None` when there is none. Rewritten by our A-R writer, so what we copy into
/// the ARC-Authentication-Results is always well-formed.
fn own_results(headers: &[HeaderField], id: &str) -> Option<(String, Option<ResultWord>)> {
    let want = authres::id_key(id);
    let mut merged: Option<AuthResults> = None;
    for h in headers
        .iter()
        .filter(|h| h.name_is("Authentication-Results"))
    {
        let Ok(parsed) = authres::parse(&String::from_utf8_lossy(&h.value)) else {
            continue;
        };
        if authres::id_key(&parsed.authserv_id) != want {
            continue;
        }
        match &mut merged {
            Some(m) => m.results.extend(parsed.results),
            None => merged = Some(parsed),
        }
    }
    let merged = merged?;
    let arc: Vec<ResultWord> = merged
        .results
        .iter()
        .filter(|r| r.method == "arc")
        .map(|r| match r.result.as_str() {
            "pass" => ResultWord::Pass,
            "none" => ResultWord::None,
            "temperror" => ResultWord::TempError,
            _ => ResultWord::Fail,
        })
        .collect();
    // Two arc= results contradict each other: a failed chain (as dkimpy reads it).
    let arc = match arc.len() {
        0 => None,
        1 => Some(arc[0]),
        _ => Some(ResultWord::Fail),
    };
    Some((merged.to_value(), arc))
}

/// Seals the message for `rule`. `ours` is the Authentication-Results this pass writes (none
/// when the message is being signed), `chain` the chain verified now, `trusted` whether the
/// origin is one we sign for. Returns the three new fields, or why nothing is sealed.
#[allow(clippy::too_many_arguments)]
pub fn seal(
    rt: &Runtime,
    qid: &str,
    msg: &Message,
    rule: &SealRule,
    chain: &Chain,
    ours: Option<&AuthResults>,
    id: &str,
    trusted: bool,
) -> Result<Vec<HeaderEdit>, String> {
    let cfg = &rt.config;
    if !msg.body_kept {
        return Err("message body not available".into());
    }
    if msg.headers_truncated {
        // ARC fields past the storage cap are not seen: the instance could be wrong.
        return Err("message header too large".into());
    }
    let recorded = if trusted {
        own_results(&msg.headers, id)
    } else {
        None
    };
    let (ar_value, cv) = match recorded {
        // The inbound pass's record; its arc= (when there was a chain) decides cv=.
        Some((text, Some(word))) if !chain.sets.is_empty() || word == ResultWord::None => {
            let as_chain = Chain {
                word,
                ..chain.clone()
            };
            (text, as_chain.cv_to_seal())
        }
        Some((text, _)) => (text, chain.cv_to_seal()),
        None => {
            let mut ar = ours.cloned().unwrap_or_else(|| AuthResults::new(id));
            if !ar.results.iter().any(|r| r.method == "arc") {
                ar.results.push(chain.res_info(None));
            }
            (ar.to_value(), chain.cv_to_seal())
        }
    };
    let Some(cv) = cv else {
        return Err(match chain.newest_cv {
            Some(Cv::Fail) => "the newest ARC set already says cv=fail".into(),
            _ => "the ARC chain could not be checked (temporary error)".into(),
        });
    };
    let prior = if cv == Cv::Fail {
        Vec::new()
    } else {
        arcchain::collect_sets(&msg.headers).map_err(|e| e.to_string())?
    };
    let instance = arcchain::next_instance(&msg.headers);
    let raw = msg.raw();
    let body_at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |i| i + 4);
    let mut sign_headers = cfg.sign_headers.clone();
    sign_headers.extend(cfg.oversign_headers.iter().cloned());
    let sealer = Sealer {
        domain: &rule.domain,
        selector: &rule.selector,
        key: &rule.key,
        sign_headers: &sign_headers,
        body_canon: rule.body_canon,
        timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let set = arcchain::seal(
        &sealer,
        &msg.headers,
        &raw[body_at..],
        &ar_value,
        &prior,
        instance,
        cv,
    )
    .map_err(|e| e.to_string())?;
    if cfg.service.log.success {
        tracing::info!(
            "{qid}: ARC-Seal field added (s={}, d={}, i={}, cv={})",
            rule.selector,
            rule.domain,
            set.instance,
            set.cv.as_str()
        );
    }
    Ok(vec![
        HeaderEdit::Prepend {
            name: "ARC-Authentication-Results".into(),
            value: set.aar,
        },
        HeaderEdit::Prepend {
            name: "ARC-Message-Signature".into(),
            value: set.ams,
        },
        HeaderEdit::Prepend {
            name: "ARC-Seal".into(),
            value: set.seal,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_results_are_merged_and_others_ignored() {
        let headers = vec![
            HeaderField::new(
                "Authentication-Results",
                " mx.lists.example;\r\n\tdmarc=pass header.from=author.example",
            ),
            HeaderField::new(
                "Authentication-Results",
                " other.example; dkim=pass header.d=forged.example; arc=pass",
            ),
            HeaderField::new(
                "Authentication-Results",
                " MX.Lists.Example; dkim=pass header.d=author.example; arc=none",
            ),
        ];
        let (text, arc) = own_results(&headers, "mx.lists.example").unwrap();
        assert_eq!(
            text,
            "mx.lists.example;\n\tdmarc=pass header.from=author.example;\n\tdkim=pass header.d=author.example;\n\tarc=none"
        );
        assert_eq!(arc, Some(ResultWord::None));
        assert!(own_results(&headers, "nobody.example").is_none());
        let mut twice = headers.clone();
        twice.push(HeaderField::new(
            "Authentication-Results",
            " mx.lists.example; arc=pass",
        ));
        assert_eq!(
            own_results(&twice, "mx.lists.example").unwrap().1,
            Some(ResultWord::Fail),
            "two arc= results contradict each other"
        );
    }
}
