//! One message from start to verdict: remove forged Authentication-Results, decide, sign or
//! verify, compose our Authentication-Results, pick the On-* action, and log in OpenDKIM's words.

use super::decide::{decide, Decision};
use super::sign::sign;
use super::verify::{verify, Failure, Outcome, SignatureResult, VerifyReport};
use crate::runtime::Runtime;
use chassis::authres::{AuthResults, ResInfo};
use chassis::envelope::Envelope;
use chassis::forged::screen;
use chassis::message::Message;
use chassis::verdict::{Action, ActionKind, HeaderEdit, SmtpReply, Verdict};
use std::time::Duration;

/// The authserv-id we write and whose forgeries we delete.
pub fn authserv_id(rt: &Runtime, env: &Envelope) -> String {
    chassis::forged::authserv_id(rt.config.authserv_id.as_deref(), env, &rt.res.hostname)
}

fn action(kind: ActionKind, reject_text: &str, tempfail: SmtpReply, why: &str) -> Action {
    Action::from_kind(
        kind,
        SmtpReply::new("550", "5.7.0", reject_text),
        tempfail,
        why,
    )
}

/// The verdict for one message (the front end counts it in the metrics and logs the structured
/// `verdict` event). `decision` is the one made at end of headers, from the same envelope and
/// headers; `None` only when the front end saw no end of headers, and then it is made here.
pub async fn evaluate(
    rt: &Runtime,
    env: &Envelope,
    msg: &Message,
    decision: Option<Decision>,
) -> Verdict {
    let cfg = &rt.config;
    let qid = env.queue_id();
    let id = authserv_id(rt, env);
    let mut edits = match screen(msg, Some(&id), qid) {
        Ok(edits) => edits,
        Err(refused) => return *refused,
    };
    if msg.headers_truncated {
        tracing::warn!(
            "{qid}: too much header data (limits: {} bytes, {} fields)",
            cfg.limits.max_header_bytes,
            cfg.limits.max_headers
        );
        let a = action(
            cfg.actions.security,
            "message header too large",
            SmtpReply::new("451", "4.7.0", "resource unavailable"),
            "dkim-milter: header too large",
        );
        if a != Action::Accept {
            return Verdict::new(edits, a);
        }
    }
    let seal_rule = cfg.arc.rule_for(env, &msg.headers);
    let arc_fields = super::arc::has_arc_fields(&msg.headers);
    let trusted = super::decide::origin_trusted(cfg, env).is_some();
    let budget = cfg
        .message_timeout
        .saturating_sub(Duration::from_secs(1))
        .max(Duration::from_millis(500));
    match decision.unwrap_or_else(|| decide(cfg, env, &msg.headers)) {
        Decision::Skip(why) => {
            if cfg.service.log.why {
                tracing::info!("{qid}: {why}; accepting");
            }
            Verdict::new(edits, Action::Accept)
        }
        Decision::Sign { sender, matches } => {
            match sign(cfg, msg.raw(), &msg.headers, &sender, &matches) {
                Ok(signatures) => {
                    for s in signatures {
                        if cfg.service.log.success {
                            tracing::info!(
                                "{qid}: DKIM-Signature field added (s={}, d={})",
                                s.selector,
                                s.domain
                            );
                        }
                        edits.push(HeaderEdit::Prepend {
                            name: "DKIM-Signature".into(),
                            value: s.value,
                        });
                    }
                    if let Some(rule) = seal_rule {
                        let chain = super::arc::check(rt, msg, budget).await;
                        match super::arc::seal(rt, qid, msg, rule, &chain, None, &id, trusted) {
                            Ok(set) => edits.extend(set),
                            Err(why) => tracing::info!("{qid}: not ARC sealing: {why}"),
                        }
                    }
                    Verdict::new(edits, Action::Accept)
                }
                Err(e) => {
                    tracing::error!("{qid}: signature generation error: {e}");
                    let a = action(
                        cfg.actions.signature_error,
                        "DKIM signing error",
                        SmtpReply::new("451", "4.7.0", "DKIM signing error"),
                        "dkim-milter: signing error",
                    );
                    Verdict::new(edits, a)
                }
            }
        }
        Decision::Verify {
            why_not_sign,
            external_sender,
        } => {
            if let Some(domain) = external_sender {
                tracing::info!(
                    "{qid}: external host {} attempted to send as {domain}",
                    env.client_label()
                );
            }
            if cfg.service.log.why {
                tracing::info!("{qid}: not signing: {why_not_sign}");
            }
            let want_chain = (cfg.arc.verify && arc_fields) || seal_rule.is_some();
            // DKIM and ARC look their keys up side by side, within the same budget.
            let (report, chain) = tokio::join!(
                verify(
                    &rt.res.auth,
                    &rt.res.keys,
                    cfg,
                    msg.raw(),
                    &msg.body_hashes,
                    budget,
                ),
                async {
                    if want_chain {
                        Some(super::arc::check(rt, msg, budget).await)
                    } else {
                        None
                    }
                }
            );
            let (mut ar, mut action) = conclude(rt, env, &id, &report);
            if let (Some(chain), true) = (&chain, cfg.arc.verify && arc_fields) {
                action = conclude_arc(rt, env, chain, &mut ar, action);
            }
            if let (Some(rule), Some(chain)) = (seal_rule, &chain) {
                if !matches!(
                    action,
                    Action::Reject(_) | Action::Tempfail(_) | Action::Discard
                ) {
                    match super::arc::seal(rt, qid, msg, rule, chain, Some(&ar), &id, trusted) {
                        Ok(set) => edits.extend(set),
                        Err(why) => tracing::info!("{qid}: not ARC sealing: {why}"),
                    }
                }
            }
            Verdict {
                edits,
                results: Some(ar),
                action,
            }
        }
    }
}

/// Adds the ARC result to our A-R and logs it; a key lookup that failed (temperror) drives
/// the `dns_error` action, as for DKIM, when nothing stricter applies already.
fn conclude_arc(
    rt: &Runtime,
    env: &Envelope,
    chain: &chassis::arc::Chain,
    ar: &mut AuthResults,
    current: Action,
) -> Action {
    let cfg = &rt.config;
    let qid = env.queue_id();
    ar.results.push(chain.res_info(env.client_ip));
    let chain_text = chain.chain_domains();
    match chain.word {
        chassis::authres::ResultWord::Pass => {
            if cfg.service.log.success {
                tracing::info!("{qid}: ARC verification successful (chain {chain_text})");
            }
            current
        }
        chassis::authres::ResultWord::TempError => {
            tracing::warn!(
                "{qid}: ARC key retrieval failed: {}",
                chain.reason.as_deref().unwrap_or("unknown error")
            );
            if current == Action::Accept {
                action(
                    cfg.actions.dns_error,
                    "ARC key retrieval failed",
                    SmtpReply::new("451", "4.7.5", "ARC key retrieval failed"),
                    "dkim-milter: DNS error",
                )
            } else {
                current
            }
        }
        _ => {
            tracing::info!(
                "{qid}: ARC chain {} ({})",
                chain.word.as_str(),
                chain.reason.as_deref().unwrap_or("")
            );
            current
        }
    }
}

fn result_info(r: &SignatureResult) -> ResInfo {
    let mut info = ResInfo::new("dkim", r.outcome.as_str());
    let mut comment = Vec::new();
    if let Some(bits) = r.key_bits {
        comment.push(format!("{bits}-bit key"));
    }
    if r.testing {
        comment.push("testing".to_string());
    }
    if !comment.is_empty() {
        info = info.with_comment(comment.join("; "));
    }
    if let (Some(reason), false) = (&r.reason, r.outcome == Outcome::Pass) {
        info = info.with_reason(reason.clone());
    }
    if !r.domain.is_empty() {
        let identity = if r.identity.is_empty() {
            format!("@{}", r.domain)
        } else {
            r.identity.clone()
        };
        info = info
            .with_prop("header.d", r.domain.clone())
            .with_prop("header.i", identity)
            .with_prop("header.a", r.algorithm.clone())
            .with_prop("header.s", r.selector.clone())
            .with_prop("header.b", r.b_prefix.clone());
    }
    info
}

/// Builds our A-R and the action from a verification report, logging as OpenDKIM does.
pub fn conclude(
    rt: &Runtime,
    env: &Envelope,
    id: &str,
    report: &VerifyReport,
) -> (AuthResults, Action) {
    let cfg = &rt.config;
    let qid = env.queue_id();
    let mut ar = AuthResults::new(id);
    if report.ignored > 0 {
        tracing::info!("{qid}: ignoring {} signatures", report.ignored);
    }
    if report.results.is_empty() {
        tracing::debug!("{qid}: no signature data");
        ar.results.push(ResInfo::new("dkim", "none"));
        let a = action(
            cfg.actions.no_signature,
            "no DKIM signature data",
            SmtpReply::new("451", "4.7.0", "no DKIM signature data"),
            "dkim-milter: no signature",
        );
        return (ar, a);
    }
    for r in &report.results {
        ar.results.push(result_info(r));
        let who = format!("s={}, d={}", r.selector, r.domain);
        match r.outcome {
            Outcome::Pass => {}
            Outcome::TempError | Outcome::PermError if r.failure != Failure::BadSignature => {
                tracing::warn!(
                    "{qid}: key retrieval failed ({who}): {}",
                    r.reason.as_deref().unwrap_or("unknown error")
                )
            }
            Outcome::Policy => tracing::info!(
                "{qid}: signature not acceptable ({who}): {}",
                r.reason.as_deref().unwrap_or("")
            ),
            _ => tracing::info!(
                "{qid}: bad signature data ({who}): {}",
                r.reason.as_deref().unwrap_or("")
            ),
        }
    }
    if report.results.iter().any(|r| r.outcome == Outcome::Pass) {
        if cfg.service.log.success {
            tracing::info!("{qid}: DKIM verification successful");
        }
        return (ar, Action::Accept);
    }
    // No signature passed: the most actionable failure decides, and a domain that says it is
    // testing (t=y) never gets its mail refused.
    let acted: Vec<&SignatureResult> = report.results.iter().filter(|r| !r.testing).collect();
    let a = if acted.iter().any(|r| r.failure == Failure::DnsError) {
        action(
            cfg.actions.dns_error,
            "DKIM key retrieval failed",
            SmtpReply::new("451", "4.7.5", "DKIM key retrieval failed"),
            "dkim-milter: DNS error",
        )
    } else if acted.iter().any(|r| r.failure == Failure::BadSignature) {
        action(
            cfg.actions.bad_signature,
            "bad DKIM signature data",
            SmtpReply::new("451", "4.7.0", "bad DKIM signature data"),
            "dkim-milter: bad signature",
        )
    } else if acted.iter().any(|r| r.failure == Failure::KeyNotFound) {
        action(
            cfg.actions.key_not_found,
            "DKIM key not found",
            SmtpReply::new("451", "4.7.5", "DKIM key not found"),
            "dkim-milter: key not found",
        )
    } else {
        Action::Accept
    };
    (ar, a)
}
