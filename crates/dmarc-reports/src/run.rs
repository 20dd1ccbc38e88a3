//! One run of the report program (what the systemd timer starts): claim every period that is
//! due, send every pending report, expire what is old. Each step leaves the store consistent, so
//! a run killed at any point is finished by the next one (see [`crate::store`]).

use crate::aggregate::{self, Meta};
use crate::config::{Config, Method};
use crate::message::{self, Envelope};
use crate::rua;
use crate::send::Sender;
use crate::store::{Claimed, Pending, ReportStore};
use crate::verify::{Verdict, Verifier};
use crate::xml;

/// What a run did (also logged line by line).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub claimed: usize,
    pub sent: usize,
    pub skipped: usize,
    pub expired: usize,
    /// Attempts that failed and will be retried.
    pub failed: usize,
    /// Rows that came in after their period was reported.
    pub late: usize,
    pub rows_deleted: usize,
    pub failures_sent: usize,
    /// Failures not reported: not asked for by fo=, no usable destination, rate limit.
    pub failures_skipped: usize,
}

/// Runs once at Unix time `now`.
pub fn run(
    cfg: &Config,
    now: i64,
    sender: &mut dyn Sender,
    verifier: &dyn Verifier,
) -> Result<Outcome, String> {
    let mut store = ReportStore::open(&cfg.history)?;
    let dry = cfg.method == Method::DryRun;
    if dry {
        // Everything happens in a transaction that is rolled back: the store is left as found.
        store.begin()?;
    }
    let result = run_in(cfg, now, &mut store, sender, verifier);
    if dry {
        store.rollback()?;
    }
    result
}

fn run_in(
    cfg: &Config,
    now: i64,
    store: &mut ReportStore,
    sender: &mut dyn Sender,
    verifier: &dyn Verifier,
) -> Result<Outcome, String> {
    let mut out = Outcome::default();
    let cutoff = ((now - cfg.delay) / cfg.period) * cfg.period;
    for (domain, begin) in store.due_periods(cfg.period, cutoff)? {
        let end = begin + cfg.period - 1;
        let id = aggregate::report_id(&cfg.submitter, &domain, begin, end);
        match store.claim(&domain, begin, end, &id, now)? {
            Claimed::Report(p) => {
                tracing::info!(
                    "report {id} for {domain} ({begin}-{end}): {} messages claimed",
                    p.rows
                );
                out.claimed += 1;
            }
            Claimed::Late(n) => {
                tracing::warn!(
                    "{n} message(s) for {domain} arrived after the report for {begin}-{end} was made; not reported"
                );
                out.late += n;
            }
            Claimed::Nothing => {}
        }
    }
    for p in store.pending()? {
        // Another report program of the fleet may be sending this one right now, or may have
        // finished it since the list was read: only the program holding it goes on.
        if !store.take(p.id)? {
            continue;
        }
        let result = pending_one(cfg, now, store, &p, sender, verifier, &mut out);
        store.release(p.id)?;
        result?;
    }
    failures(cfg, now, store, sender, verifier, &mut out)?;
    let (m, r) = store.expire(now - cfg.retention)?;
    if m + r > 0 {
        tracing::info!(
            "expired {m} history row(s) and {r} report(s) older than {} days",
            cfg.retention / 86400
        );
    }
    out.rows_deleted = m;
    Ok(out)
}

/// Expires or delivers one pending report this program holds.
fn pending_one(
    cfg: &Config,
    now: i64,
    store: &mut ReportStore,
    p: &Pending,
    sender: &mut dyn Sender,
    verifier: &dyn Verifier,
    out: &mut Outcome,
) -> Result<(), String> {
    if now - p.created > cfg.give_up {
        tracing::warn!(
            "report {} for {}: not sent within {} hours ({} attempts); expired",
            p.report_id,
            p.policy_domain,
            cfg.give_up / 3600,
            p.attempts
        );
        store.finish(p.id, "expired", Some("gave up"), now)?;
        out.expired += 1;
        return Ok(());
    }
    match deliver(cfg, now, store, p, sender, verifier)? {
        Delivery::Sent => out.sent += 1,
        Delivery::Skipped => out.skipped += 1,
        Delivery::Retry => out.failed += 1,
    }
    Ok(())
}

enum Delivery {
    Sent,
    Skipped,
    Retry,
}

/// The report `p` as XML, rebuilt from its claimed rows (the same on every attempt).
pub fn report_xml(cfg: &Config, store: &mut ReportStore, p: &Pending) -> Result<String, String> {
    let meta = Meta {
        config: cfg,
        report_id: &p.report_id,
        policy_domain: &p.policy_domain,
        begin: p.begin,
        end: p.end,
    };
    let mut grouper = aggregate::Grouper::new(cfg);
    store.for_each_row(p.id, &mut |r| grouper.add(&r))?;
    Ok(xml::render(&grouper.finish(&meta), cfg.schema))
}

/// The report mail for `xml`, addressed to `to` (only the Date header differs between
/// attempts).
pub fn mail(
    cfg: &Config,
    p: &Pending,
    xml: &str,
    to: &[String],
    now: i64,
) -> Result<message::ReportMail, String> {
    let env = Envelope {
        submitter: &cfg.submitter,
        policy_domain: &p.policy_domain,
        report_id: &p.report_id,
        begin: p.begin,
        end: p.end,
        from: &cfg.email,
        to,
        date: now,
    };
    message::build(&env, xml).map_err(|e| format!("building the message: {e}"))
}

fn deliver(
    cfg: &Config,
    now: i64,
    store: &mut ReportStore,
    p: &Pending,
    sender: &mut dyn Sender,
    verifier: &dyn Verifier,
) -> Result<Delivery, String> {
    let tag = format!("report {} for {}", p.report_id, p.policy_domain);
    let mut dests = Vec::new();
    let mut unknown = None;
    for uri in p.rua.split_whitespace() {
        let d = match rua::parse(uri) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("{tag}: rua {e}; skipped");
                continue;
            }
        };
        if rua::ignored(&d.address, &cfg.ignore_rua) {
            tracing::info!("{tag}: {} is on ignore_rua; skipped", d.address);
            continue;
        }
        match verifier.check(&p.policy_domain, &d) {
            Verdict::Allowed => dests.push(d),
            Verdict::Refused => tracing::warn!(
                "{tag}: {} does not accept reports for {} (no v=DMARC1 at {}._report._dmarc.{}); skipped",
                d.address,
                p.policy_domain,
                p.policy_domain,
                d.domain()
            ),
            Verdict::Unknown(e) => {
                tracing::warn!("{tag}: {e}; will try again");
                unknown = Some(e);
            }
        }
    }
    if let Some(e) = unknown {
        // Do not send to a subset and lose the rest: wait until every answer is known.
        store.attempt_failed(p.id, &e)?;
        return Ok(Delivery::Retry);
    }
    // Size limits are checked against the whole message; one too small for it is left out.
    let all: Vec<String> = dests.iter().map(|d| d.address.clone()).collect();
    let xml = report_xml(cfg, store, p)?;
    let probe = mail(cfg, p, &xml, &all, now)?;
    let size = probe.message.len() as u64;
    let mut to = Vec::new();
    for d in &dests {
        match d.limit {
            Some(limit) if size > limit => tracing::warn!(
                "{tag}: {size} bytes is over {}'s limit of {limit}; skipped",
                d.address
            ),
            _ => {
                if !to.contains(&d.address) {
                    to.push(d.address.clone())
                }
            }
        }
    }
    if to.is_empty() {
        tracing::warn!("{tag}: no usable rua destination ({}); not sent", p.rua);
        store.finish(p.id, "skipped", Some("no usable destination"), now)?;
        return Ok(Delivery::Skipped);
    }
    let mail = mail(cfg, p, &xml, &to, now)?;
    match sender.send(&mail, &cfg.email, &to) {
        Ok(()) => {
            store.finish(p.id, "sent", None, now)?;
            tracing::info!(
                "{tag}: sent to {} ({} messages, {} bytes, {})",
                to.join(", "),
                p.rows,
                mail.message.len(),
                mail.filename
            );
            Ok(Delivery::Sent)
        }
        Err(e) => {
            tracing::warn!("{tag}: cannot send: {e}; will try again");
            store.attempt_failed(p.id, &e)?;
            Ok(Delivery::Retry)
        }
    }
}

/// Sends the failure reports the milter kept: `fo=` decides which, then the ruf destinations
/// (mailto only, ignore list, external consent, size limit) and the per-destination hourly rate
/// limit. A failure report is sent once or not at all: one attempt, no retries (the incident is
/// old news an hour later; RFC 9991 asks for timeliness, not persistence).
fn failures(
    cfg: &Config,
    now: i64,
    store: &mut ReportStore,
    sender: &mut dyn Sender,
    verifier: &dyn Verifier,
    out: &mut Outcome,
) -> Result<(), String> {
    use crate::failure;
    let redaction = match cfg.failure_redaction {
        crate::config::Redaction::Localparts => failure::Redaction::LocalParts,
        crate::config::Redaction::None => failure::Redaction::None,
    };
    for f in store.pending_failures()? {
        let i = &f.incident;
        let tag = format!("failure report for {} ({})", i.policy_domain, f.reporter);
        if !failure::wanted(&f.fo, i) {
            store.finish_failure(f.id, "not_requested", None, None, now)?;
            out.failures_skipped += 1;
            continue;
        }
        let mut to = Vec::new();
        let mut limits = Vec::new();
        for uri in f.ruf.split_whitespace() {
            let d = match rua::parse(uri) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("{tag}: ruf {e}; skipped");
                    continue;
                }
            };
            if rua::ignored(&d.address, &cfg.ignore_rua) {
                tracing::info!("{tag}: {} is on ignore_rua; skipped", d.address);
                continue;
            }
            if verifier.check(&i.policy_domain, &d) != Verdict::Allowed {
                tracing::warn!(
                    "{tag}: {} does not accept reports for {}; skipped",
                    d.address,
                    i.policy_domain
                );
                continue;
            }
            let sent = store.failures_sent_to(&d.address, now - 3600)?;
            if sent >= i64::from(cfg.failure_rate_per_hour) {
                tracing::warn!(
                    "{tag}: rate limit: {sent} failure reports to {} in the last hour; skipped",
                    d.address
                );
                continue;
            }
            if !to.contains(&d.address) {
                to.push(d.address.clone());
                limits.push(d.limit);
            }
        }
        let msg = failure::message(i, &cfg.submitter, &cfg.email, &to, redaction, now)
            .map_err(|e| format!("building a failure report: {e}"))?;
        let size = msg.len() as u64;
        let keep: Vec<String> = to
            .iter()
            .zip(&limits)
            .filter(|(_, l)| l.is_none_or(|l| size <= l))
            .map(|(a, _)| a.clone())
            .collect();
        if keep.is_empty() {
            store.finish_failure(f.id, "skipped", None, Some("no usable destination"), now)?;
            out.failures_skipped += 1;
            continue;
        }
        let msg = if keep.len() == to.len() {
            msg
        } else {
            failure::message(i, &cfg.submitter, &cfg.email, &keep, redaction, now)
                .map_err(|e| format!("building a failure report: {e}"))?
        };
        let mail = message::ReportMail {
            // For a dry run: the file name of the mail (there is no attachment).
            filename: format!("failure!{}!{}!{}", i.policy_domain, i.arrival, f.id),
            subject: String::new(),
            gzip: Vec::new(),
            message: msg,
        };
        match sender.send(&mail, &cfg.email, &keep) {
            Ok(()) => {
                tracing::info!("{tag}: sent to {}", keep.join(", "));
                store.finish_failure(f.id, "sent", Some(&keep.join(" ")), None, now)?;
                out.failures_sent += 1;
            }
            Err(e) => {
                tracing::warn!("{tag}: cannot send: {e}; dropped");
                store.finish_failure(f.id, "failed", None, Some(&e), now)?;
                out.failures_skipped += 1;
            }
        }
    }
    Ok(())
}
