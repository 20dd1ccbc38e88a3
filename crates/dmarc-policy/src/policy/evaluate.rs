//! One message from start to verdict: remove forged Authentication-Results, apply the skips,
//! run SPF, collect DKIM results, evaluate DMARC, compose our Authentication-Results, pick the
//! action, log in OpenDMARC's words, and record the message in the history store *before* the
//! verdict goes back to the MTA.

use super::author::{author, header_violation, Author};
use super::dkim::{self, Upstream};
use super::dmarc::{self, policy_word, DmarcCheck, Outcome};
use super::received_spf;
use super::spf::{self, result_word, Scope, SpfCheck};
use crate::config::MultiFrom;
use crate::history::{DkimEntry, Failure, Record};
use crate::runtime::Runtime;
use chassis::authres::{AuthResults, ResInfo};
use chassis::envelope::Envelope;
use chassis::forged::screen;
use chassis::mailauth::dmarc::Policy;
use chassis::mailauth::SpfResult;
use chassis::message::{HeaderField, Message};
use chassis::verdict::{Action, ActionKind, HeaderEdit, SmtpReply, Verdict};

/// DKIM signatures verified per message (as dkim-milter's default cap).
pub const MAX_DKIM_SIGNATURES: usize = 10;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The authserv-id we write and whose forgeries we delete: configured, else the MTA's `j`,
/// else our host name (OpenDMARC's order).
pub fn authserv_id(rt: &Runtime, env: &Envelope) -> String {
    chassis::forged::authserv_id(rt.config.authserv_id.as_deref(), env, &rt.res.hostname)
}

/// A number in 0..100 for RFC 7489 `pct=` sampling; not cryptographic, just unpredictable.
fn roll() -> u8 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() % 100) as u8
}

fn downgrade(p: Policy) -> Policy {
    match p {
        Policy::Reject => Policy::Quarantine,
        _ => Policy::None,
    }
}

fn domain_of(addr: &str) -> String {
    addr.rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("")
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Everything decided about one evaluated message, before it becomes headers, a row and a reply.
struct Evaluation {
    header_from: String,
    spf: Option<SpfCheck>,
    spf_self: bool,
    dkim: Vec<DkimEntry>,
    dkim_self: bool,
    dmarc: Option<DmarcCheck>,
    /// The A-R `dmarc=` results: one, or one per author domain when several are evaluated.
    dmarc_result: Vec<ResInfo>,
    outcome: Outcome,
    policy: Policy,
    disposition: &'static str,
    action: Action,
    override_reason: Option<&'static str>,
    /// RFC 9990 `reason/comment` (the ARC override says which sealer).
    override_comment: Option<String>,
    /// The ARC chain, when trusted sealers are configured and the message carries one.
    arc: Option<chassis::arc::Chain>,
}

/// The verdict for one message.
pub async fn evaluate(rt: Arc<Runtime>, env: Envelope, msg: Message) -> Verdict {
    let started = std::time::Instant::now();
    let cfg = &rt.config;
    let qid = env.queue_id().to_string();
    let id = authserv_id(&rt, &env);
    if cfg.authserv_id.is_none() {
        tracing::debug!("implicit authentication service: {id}");
    }
    // Headers from a trusted upstream that shares our id are its results, not forgeries.
    let ours = !cfg
        .trusted_authserv_ids
        .iter()
        .any(|t| t.eq_ignore_ascii_case(&id));
    let mut edits = match screen(&msg, ours.then_some(id.as_str()), &qid) {
        Ok(edits) => edits,
        Err(refused) => return *refused,
    };
    if cfg.ignore_authenticated_clients && env.is_authenticated() {
        tracing::info!("{qid}: ignoring authenticated client");
        return Verdict::new(edits, Action::Accept);
    }
    // Header counts include From fields that arrived past the storage cap.
    let counted: std::borrow::Cow<'_, [HeaderField]> = if msg.scan.from_past_cap.is_empty() {
        std::borrow::Cow::Borrowed(&msg.headers)
    } else {
        std::borrow::Cow::Owned(
            msg.from_fields()
                .chain(msg.headers.iter().filter(|h| !h.name_is("From")))
                .cloned()
                .collect(),
        )
    };
    if cfg.required_headers {
        if let Some(why) = header_violation(&counted) {
            tracing::info!("{qid}: RFC5322 requirement error: {why}");
            return Verdict::new(
                edits,
                Action::Reject(SmtpReply::new(
                    "550",
                    "5.7.1",
                    format!("RFC5322 requirement error: {why}"),
                )),
            );
        }
    }
    let author = author(&counted);
    if let Author::Domain(d) = &author {
        if cfg.ignore_mail_from.iter().any(|i| i == d) {
            tracing::info!("{qid}: ignoring mail from {d}");
            return Verdict::new(edits, Action::Accept);
        }
    }

    // One DNS budget for SPF, DKIM and DMARC together: past it, everything is a temperror.
    let ev = match tokio::time::timeout(cfg.message_timeout, assess(&rt, &env, &msg, &qid, &author))
        .await
    {
        Ok(ev) => ev,
        Err(_) => {
            tracing::warn!(
                "{qid}: DNS lookups exceeded the message budget of {}s; results are temperror",
                cfg.message_timeout.as_secs()
            );
            out_of_time(&rt, &env, &author)
        }
    };

    // Our Authentication-Results, in OpenDMARC's layout.
    let mut ar = AuthResults::new(id.clone());
    if let (Some(s), true) = (&ev.spf, ev.spf_self) {
        ar.results.push(
            ResInfo::new("spf", result_word(s.result)).with_prop(s.scope.property(), &s.domain),
        );
    }
    if ev.dkim_self {
        for d in &ev.dkim {
            ar.results.push(
                ResInfo::new("dkim", &d.result)
                    .with_prop("header.d", &d.domain)
                    .with_prop("header.s", &d.selector),
            );
        }
    }
    ar.results.extend(ev.dmarc_result.iter().cloned());
    if let Some(chain) = &ev.arc {
        ar.results.push(chain.res_info(env.client_ip));
    }
    let mut action = ev.action.clone();
    if !matches!(action, Action::Reject(_)) {
        if let (Some(s), true, true, Some(ip)) =
            (&ev.spf, ev.spf_self, cfg.received_spf, env.client_ip)
        {
            edits.push(HeaderEdit::Prepend {
                name: "Received-SPF".into(),
                value: spf::received_spf(s, &id, ip, &env.mail_from, &env.helo),
            });
        }
        if cfg.software_header {
            edits.push(HeaderEdit::Prepend {
                name: "DMARC-Filter".into(),
                value: format!(
                    "dmarc-milter v{} {} {qid}",
                    env!("CARGO_PKG_VERSION"),
                    rt.res.hostname
                ),
            });
        }
    }
    let results = (!matches!(action, Action::Reject(_))).then_some(ar);

    if let Some(store) = rt.history.clone() {
        // A failing message of a domain with ruf=, for the report program (best effort: a
        // failure report never holds up or fails the message).
        if cfg.failure_reports {
            if let Some(f) = failure_row(&env, &id, &ev, &msg, results.as_ref()) {
                if let Err(e) = store.insert_failure(f).await {
                    tracing::warn!("{qid}: cannot keep the failure report: {e}");
                }
            }
        }
        let record = record(&env, &id, &ev, &action, &msg);
        // Committed before the front end's deadline or not at all: a message the MTA is told
        // to retry must not also be counted (the retry is).
        let commit_by = started + cfg.message_timeout + crate::runtime::STORE_MARGIN;
        if let Err(e) = store.insert(record, commit_by).await {
            chassis::metrics::metrics().store_failures.inc();
            tracing::error!(
                "{qid}: history store {}: cannot record message: {e}",
                store.describe()
            );
            if cfg.actions.store_failure == ActionKind::Tempfail
                && !matches!(action, Action::Reject(_))
            {
                action = Action::Tempfail(SmtpReply::new(
                    "451",
                    "4.3.0",
                    "DMARC history store unavailable, try again later",
                ));
            }
        }
    }
    Verdict {
        edits,
        results,
        action,
    }
}

/// The evaluation when the DNS budget ran out: SPF (if we check it) and DMARC are temperror,
/// no DKIM result is known, and the configured temperror action applies.
fn out_of_time(rt: &Runtime, env: &Envelope, author: &Author) -> Evaluation {
    let cfg = &rt.config;
    let spf_self = cfg.spf_self_validate && env.client_ip.is_some();
    let spf = spf_self.then(|| {
        let (scope, domain) = spf::identity(&env.mail_from, &env.helo);
        SpfCheck {
            scope,
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            result: SpfResult::TempError,
            unanswered: 0,
        }
    });
    let header_from = match author {
        Author::Domain(d) => d.clone(),
        Author::Multiple(ds) => ds.join(","),
        Author::Missing | Author::Unparseable => String::new(),
    };
    let mut result = ResInfo::new("dmarc", Outcome::TempError.as_str())
        .with_reason("DNS lookups exceeded the time budget");
    if !header_from.is_empty() {
        result = result.with_prop("header.from", &header_from);
    }
    let action = match cfg.actions.temperror {
        ActionKind::Tempfail => Action::Tempfail(SmtpReply::new(
            "451",
            "4.7.5",
            format!("temporary DMARC evaluation error for {header_from}"),
        )),
        _ => Action::Accept,
    };
    Evaluation {
        header_from,
        spf,
        spf_self,
        dkim: Vec::new(),
        dkim_self: false,
        dmarc: None,
        dmarc_result: vec![result],
        outcome: Outcome::TempError,
        policy: Policy::None,
        disposition: "none",
        action,
        override_reason: None,
        override_comment: None,
        arc: None,
    }
}

/// SPF, DKIM and DMARC for one message, with the resulting disposition. Logs as OpenDMARC.
async fn assess(
    rt: &Runtime,
    env: &Envelope,
    msg: &Message,
    qid: &str,
    author: &Author,
) -> Evaluation {
    let cfg = &rt.config;
    let envelope_domain = domain_of(&env.mail_from);
    let upstream: Option<Upstream> = cfg.trusts_upstream().then(|| {
        dkim::from_trusted_headers(&msg.headers, &cfg.trusted_authserv_ids, &envelope_domain)
    });
    if let Some(up) = &upstream {
        for (n, from) in &up.ignored {
            tracing::debug!("{qid} ignoring Authentication-Results at {n} from {from}");
        }
    }

    // SPF: a trusted upstream pass for exactly the envelope domain, else our own check.
    let mut spf_self = false;
    let spf = match upstream
        .as_ref()
        .and_then(|u| u.spf_pass.clone())
        .filter(|_| !cfg.spf_ignore_results)
    {
        Some(domain) => Some(SpfCheck {
            scope: Scope::MailFrom,
            domain,
            result: SpfResult::Pass,
            unanswered: 0,
        }),
        None => match env.client_ip {
            Some(ip) if cfg.spf_self_validate => {
                let host = cfg.authserv_id.as_deref().unwrap_or(&rt.res.hostname);
                let s = spf::check(&rt.res.auth, ip, &env.helo, &env.mail_from, host).await;
                tracing::info!(
                    "{qid}: SPF({}): {} {}",
                    s.scope.log_word(),
                    s.domain,
                    result_word(s.result)
                );
                spf_self = true;
                Some(s)
            }
            // No check of our own: OpenDMARC's fallback to the topmost Received-SPF.
            _ if !cfg.spf_self_validate && !cfg.spf_ignore_results => {
                let s = received_spf::upstream(&msg.headers, &env.mail_from);
                if let Some(s) = &s {
                    tracing::info!(
                        "{qid}: SPF(mailfrom): {} {} (from Received-SPF)",
                        s.domain,
                        result_word(s.result)
                    );
                }
                s
            }
            _ => None,
        },
    };

    let permerror = |why: &str, header_from: String| {
        let mut r = ResInfo::new("dmarc", "permerror").with_reason(why);
        if !header_from.is_empty() {
            r = r.with_prop("header.from", header_from);
        }
        r
    };
    let domains: Vec<String> = match author {
        Author::Domain(d) => vec![d.clone()],
        // RFC 9989: with several author domains the receiver may apply the strictest policy
        // of them; we evaluate each (unless the operator rejects such mail or keeps the
        // permerror answer).
        Author::Multiple(ds)
            if !cfg.reject_multi_value_from && cfg.multi_from == MultiFrom::Strictest =>
        {
            tracing::info!(
                "{qid}: multi-valued From field detected; applying the strictest policy of {}",
                ds.join(", ")
            );
            ds.clone()
        }
        other => {
            let (why, header_from) = match other {
                Author::Missing => ("no From header field", String::new()),
                Author::Unparseable => ("unable to parse From header field", String::new()),
                Author::Multiple(ds) => ("multi-valued From field", ds.join(",")),
                Author::Domain(_) => unreachable!(),
            };
            let action = match other {
                Author::Multiple(_) => {
                    tracing::info!("{qid}: multi-valued From field detected");
                    if cfg.reject_multi_value_from {
                        Action::Reject(SmtpReply::new(
                            "550",
                            "5.7.1",
                            "multi-valued From field detected",
                        ))
                    } else {
                        Action::Accept
                    }
                }
                Author::Unparseable if cfg.required_headers => {
                    tracing::info!("{qid}: unable to parse From header field");
                    Action::Reject(SmtpReply::new(
                        "550",
                        "5.7.1",
                        "unable to parse From header field",
                    ))
                }
                _ => {
                    tracing::info!("{qid}: {why}");
                    Action::Accept
                }
            };
            let disposition = if matches!(action, Action::Reject(_)) {
                "reject"
            } else {
                "none"
            };
            return Evaluation {
                dmarc_result: vec![permerror(why, header_from.clone())],
                header_from,
                spf,
                spf_self,
                dkim: upstream.map(|u| u.dkim).unwrap_or_default(),
                dkim_self: false,
                dmarc: None,
                outcome: Outcome::PermError,
                policy: Policy::None,
                disposition,
                action,
                override_reason: None,
                override_comment: None,
                arc: None,
            };
        }
    };

    // Parsed through the chassis so hostile signature lists cannot multiply body hashing.
    let Some(mut am) =
        chassis::dkimparse::parse_capped_with(msg.raw(), MAX_DKIM_SIGNATURES, &msg.body_hashes)
            .map(|c| c.message)
    else {
        tracing::info!("{qid}: message cannot be parsed for DMARC");
        let header_from = domains.join(",");
        return Evaluation {
            dmarc_result: vec![permerror("message cannot be parsed", header_from.clone())],
            header_from,
            spf,
            spf_self,
            dkim: Vec::new(),
            dkim_self: false,
            dmarc: None,
            outcome: Outcome::PermError,
            policy: Policy::None,
            disposition: "none",
            action: Action::Accept,
            override_reason: None,
            override_comment: None,
            arc: None,
        };
    };
    let (spf_domain, spf_result) = match &spf {
        Some(s) => (s.domain.clone(), s.result),
        None => (envelope_domain.clone(), SpfResult::None),
    };
    // DMARC is about the author domain we extracted (RFC 5322 syntax, CFWS around the domain
    // allowed: `marc@ example.com`), not mail-auth's own reading of From, which keeps such
    // whitespace and then finds no policy. DKIM does not read it, so the first domain is set
    // before verifying and only further domains need a copy of the parsed message.
    am.from = vec![format!("author@{}", domains[0])];
    // DKIM once (ours or upstream's), then DMARC for each author domain.
    let upstream_sigs = upstream.as_ref().map(|up| dkim::signatures(&up.dkim));
    let (outs, dkim, dkim_self) = match (&upstream, &upstream_sigs) {
        (Some(up), Some(sigs)) => (dkim::outputs(sigs), up.dkim.clone(), false),
        _ => {
            let outs = rt
                .res
                .auth
                .verify_dkim(chassis::mailauth::Parameters::new(&am).with_txt_cache(&rt.res.keys))
                .await;
            let entries = dkim::entries(&outs);
            (outs, entries, true)
        }
    };
    let mut checks: Vec<DmarcCheck> = Vec::with_capacity(domains.len());
    for (i, from_domain) in domains.iter().enumerate() {
        let other;
        let one = if i == 0 {
            &am
        } else {
            let mut copy = am.clone();
            copy.from = vec![format!("author@{from_domain}")];
            other = copy;
            &other
        };
        let check = dmarc::check(
            &rt.res.auth,
            one,
            &outs,
            &spf_domain,
            spf_result,
            from_domain,
        )
        .await;
        if let Some(why) = &check.not_applied {
            tracing::info!("{qid}: {from_domain}: {why}");
        }
        tracing::info!("{qid}: {from_domain} {}", check.outcome.as_str());
        checks.push(check);
    }
    // ARC is consulted only for a failure it could override, from trusted sealers.
    let arc_chain = if !cfg.trusted_arc_sealers.is_empty()
        && checks.iter().any(|c| c.outcome == Outcome::Fail)
        && msg
            .headers
            .iter()
            .any(|h| chassis::arc::ArcField::of(&h.name).is_some())
    {
        let chain = chassis::arc::verify(&rt.res.auth, &rt.res.keys, &msg.headers, &am).await;
        tracing::info!(
            "{qid}: ARC chain {} ({})",
            chain.word.as_str(),
            chain.chain_domains()
        );
        Some(chain)
    } else {
        None
    };
    let mut judged: Vec<Judged> = Vec::with_capacity(domains.len());
    for (check, from_domain) in checks.into_iter().zip(&domains) {
        // A listed sealer's key could not be looked up: the override cannot be decided now.
        let arc_unknown = arc_chain.as_ref().is_some_and(|c| {
            c.word == chassis::authres::ResultWord::TempError
                && c.sets.iter().any(|s| {
                    cfg.trusted_arc_sealers
                        .iter()
                        .any(|t| t.eq_ignore_ascii_case(&s.domain))
                })
        });
        let trust = arc_chain.as_ref().and_then(|chain| {
            let strict = |tag: fn(&crate::history::Published) -> &str| {
                check.published.as_ref().is_some_and(|p| tag(p) == "s")
            };
            super::arc::trusted_pass(
                chain,
                &cfg.trusted_arc_sealers,
                from_domain,
                strict(|p| &p.adkim),
                strict(|p| &p.aspf),
            )
        });
        judged.push(dispose(cfg, check, from_domain, trust, arc_unknown, qid));
    }
    let results: Vec<ResInfo> = judged.iter().map(|j| j.result.clone()).collect();
    // The strictest disposition wins; its check is the one reported.
    let strictest = judged
        .into_iter()
        .enumerate()
        .max_by_key(|(i, j)| (severity(&j.action), std::cmp::Reverse(*i)))
        .map(|(_, j)| j)
        .expect("at least one author domain");
    Evaluation {
        header_from: domains.join(","),
        spf,
        spf_self,
        dkim,
        dkim_self,
        dmarc_result: results,
        outcome: strictest.check.outcome,
        policy: strictest.policy,
        dmarc: Some(strictest.check),
        disposition: strictest.disposition,
        action: strictest.action,
        override_reason: strictest.override_reason,
        override_comment: strictest.override_comment,
        arc: arc_chain,
    }
}

/// One author domain's DMARC check turned into a disposition.
struct Judged {
    check: DmarcCheck,
    policy: Policy,
    disposition: &'static str,
    action: Action,
    override_reason: Option<&'static str>,
    override_comment: Option<String>,
    result: ResInfo,
}

/// How strict an action is, for choosing among several author domains: a reject is final, a
/// tempfail may turn into one on retry, a quarantine still delivers.
fn severity(action: &Action) -> u8 {
    match action {
        Action::Reject(_) => 3,
        Action::Tempfail(_) => 2,
        Action::Quarantine(_) => 1,
        _ => 0,
    }
}

/// The disposition, action and A-R result for one author domain's check: `p=` with `pct=`
/// sampling, enforced only with `reject_failures`; temperror per `[actions] temperror`. A
/// trusted ARC sealer's aligned pass (`arc`) turns an enforced failure into a `local_policy`
/// override (OpenDMARC's ARC override, for quarantine too); when a trusted sealer's chain could
/// not be checked (`arc_unknown`: DNS trouble), a reject becomes a tempfail, so the retry can
/// decide.
fn dispose(
    cfg: &crate::config::Config,
    check: DmarcCheck,
    from_domain: &str,
    arc: Option<super::arc::ArcTrust>,
    arc_unknown: bool,
    qid: &str,
) -> Judged {
    let mut policy = check.policy;
    let mut override_reason = None;
    let mut override_comment = None;
    let (disposition, action) = match check.outcome {
        Outcome::Fail if arc.is_some() && matches!(policy, Policy::Reject | Policy::Quarantine) => {
            let trust = arc.as_ref().expect("checked");
            tracing::info!(
                "{qid}: ARC pass, policy pass > overriding DMARC fail ({from_domain}, sealer {}, instance {})",
                trust.sealer,
                trust.instance
            );
            override_reason = Some("local_policy");
            override_comment = Some(trust.comment());
            ("none", Action::Accept)
        }
        Outcome::Fail => {
            let pct = check.published.as_ref().and_then(|p| p.pct);
            if let Some(pct) = pct.filter(|p| *p < 100) {
                if roll() >= pct {
                    policy = downgrade(policy);
                    override_reason = Some("sampled_out");
                }
            }
            match policy {
                Policy::Reject if cfg.reject_failures && arc_unknown => {
                    tracing::warn!(
                        "{qid}: ARC chain of a trusted sealer could not be checked; temporarily failing instead of rejecting"
                    );
                    (
                        "none",
                        Action::Tempfail(SmtpReply::new(
                            "451",
                            "4.7.5",
                            format!("temporary ARC evaluation error for {from_domain}"),
                        )),
                    )
                }
                Policy::Reject if cfg.reject_failures => (
                    "reject",
                    Action::Reject(SmtpReply::new(
                        "550",
                        "5.7.1",
                        format!("rejected by DMARC policy for {from_domain}"),
                    )),
                ),
                Policy::Quarantine
                    if cfg.reject_failures && cfg.actions.quarantine == ActionKind::Quarantine =>
                {
                    (
                        "quarantine",
                        Action::Quarantine(format!(
                            "quarantined by DMARC policy for {from_domain}"
                        )),
                    )
                }
                Policy::Reject | Policy::Quarantine => {
                    override_reason = Some("local_policy");
                    ("none", Action::Accept)
                }
                _ => ("none", Action::Accept),
            }
        }
        Outcome::TempError => match cfg.actions.temperror {
            ActionKind::Tempfail => (
                "none",
                Action::Tempfail(SmtpReply::new(
                    "451",
                    "4.7.5",
                    format!("temporary DMARC evaluation error for {from_domain}"),
                )),
            ),
            _ => ("none", Action::Accept),
        },
        _ => ("none", Action::Accept),
    };
    let mut result = ResInfo::new("dmarc", check.outcome.as_str());
    if matches!(check.outcome, Outcome::Pass | Outcome::Fail | Outcome::None) {
        result = result.with_comment(format!(
            "p={} dis={}",
            policy_word(check.policy),
            if disposition == "reject" {
                "none"
            } else {
                disposition
            }
        ));
    }
    if let Some(why) = &check.not_applied {
        result = result.with_reason(why);
    }
    if let (Some(comment), Some(trust)) = (&result.comment, &arc) {
        if override_comment.is_some() {
            result.comment = Some(format!(
                "{comment}; local_policy override: ARC sealed by {}",
                trust.sealer
            ));
        }
    }
    result = result.with_prop("header.from", from_domain);
    Judged {
        check,
        policy,
        disposition,
        action,
        override_reason,
        override_comment,
        result,
    }
}

/// What a failure report needs about `ev`, when its domain asks for failure reports (`ruf=`)
/// and something failed; `fo=` is applied by the report program. Never for report mail.
fn failure_row(
    env: &Envelope,
    id: &str,
    ev: &Evaluation,
    msg: &Message,
    ar: Option<&AuthResults>,
) -> Option<Failure> {
    let check = ev.dmarc.as_ref()?;
    let record = check.record.as_ref()?;
    if record.ruf.is_empty() {
        return None;
    }
    let failed = |r: &str| !matches!(r, "pass" | "none");
    let spf = ev.spf.as_ref().map(|s| {
        (
            s.domain.clone(),
            s.scope.report_word().to_string(),
            result_word(s.result).to_string(),
        )
    });
    let something_failed = !check.dkim_aligned
        || !check.spf_aligned
        || ev.dkim.iter().any(|d| failed(&d.result))
        || spf.as_ref().is_some_and(|s| failed(&s.2));
    if !something_failed {
        return None;
    }
    let raw = msg.raw();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(raw.len())
        .min(crate::history::MAX_FAILURE_HEADERS);
    let headers = String::from_utf8_lossy(&raw[..end]).into_owned();
    if crate::history::is_report_mail(&headers) {
        return None;
    }
    use chassis::mailauth::dmarc::FailureOptions as Fo;
    let fo = match record.fo {
        Fo::All => "0",
        Fo::Any => "1",
        Fo::Dkim => "d",
        Fo::Spf => "s",
        Fo::DkimSpf => "d:s",
    };
    Some(Failure {
        received: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        job_id: env.queue_id().to_string(),
        reporter: id.to_string(),
        policy_domain: check.policy_domain.clone().unwrap_or_default(),
        ruf: dmarc::report_uris(&record.ruf),
        fo: fo.to_string(),
        source_ip: env.client_ip.map(|ip| ip.to_string()),
        mail_from: env.mail_from.clone(),
        rcpt_to: env.rcpts.first().cloned().unwrap_or_default(),
        auth_results: ar.map(|a| a.to_value()).unwrap_or_default(),
        dkim: ev.dkim.clone(),
        spf,
        dkim_aligned: check.dkim_aligned,
        spf_aligned: check.spf_aligned,
        disposition: ev.disposition.to_string(),
        headers,
    })
}

/// The history row for an evaluated message.
fn record(env: &Envelope, id: &str, ev: &Evaluation, action: &Action, msg: &Message) -> Record {
    let mut rcpt_domains: Vec<String> = env.rcpts.iter().map(|r| domain_of(r)).collect();
    rcpt_domains.sort();
    rcpt_domains.dedup();
    Record {
        received: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        job_id: env.queue_id().to_string(),
        reporter: id.to_string(),
        source_ip: env.client_ip.map(|ip| ip.to_string()),
        header_from: ev.header_from.clone(),
        envelope_from: domain_of(&env.mail_from),
        envelope_to: rcpt_domains.join(","),
        policy_domain: ev.dmarc.as_ref().and_then(|d| d.policy_domain.clone()),
        published: ev.dmarc.as_ref().and_then(|d| d.published.clone()),
        policy_applied: policy_word(ev.policy).to_string(),
        spf: ev.spf.as_ref().map(|s| {
            (
                s.domain.clone(),
                s.scope.report_word().to_string(),
                result_word(s.result).to_string(),
            )
        }),
        dkim: ev.dkim.clone(),
        dkim_aligned: if ev.dmarc.as_ref().is_some_and(|d| d.dkim_aligned) {
            "pass"
        } else {
            "fail"
        }
        .into(),
        spf_aligned: if ev.dmarc.as_ref().is_some_and(|d| d.spf_aligned) {
            "pass"
        } else {
            "fail"
        }
        .into(),
        dmarc_result: ev.outcome.as_str().into(),
        disposition: ev.disposition.into(),
        action: action.word().into(),
        message_key: crate::history::message_key(id, env, &msg.header_values("Message-ID")),
        override_reason: ev.override_reason.map(str::to_string),
        override_comment: ev.override_comment.clone(),
    }
}
