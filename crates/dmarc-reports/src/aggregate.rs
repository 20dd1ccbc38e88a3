//! History rows → one aggregate report (mail-auth's model): rows grouped by everything a record
//! reports, with counts, plus `report_metadata` and `policy_published`. Plain functions over the
//! rows, so the grouping is tested without a database; the result depends on the rows only
//! (sorted groups, ids from the period), which is what makes a re-sent report identical.

use crate::config::{Config, Schema};
use chassis::mailauth::report::{
    ActionDisposition, Alignment, DKIMAuthResult, DateRange, Discovery, Disposition, DkimResult,
    DmarcResult, Identifier, PolicyOverride, PolicyOverrideReason, PolicyPublished, Report,
    ReportMetadata, SPFAuthResult, SPFDomainScope, SpfResult,
};
use dmarc_policy::history::Record;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The comment that marks RFC 7489's `sampled_out` reason (`pct` sampling), which mail-auth's
/// model (RFC 9990) cannot name: written as `other` for RFC 9990, turned back into
/// `sampled_out` for RFC 7489 by [`crate::xml`].
pub const SAMPLED_OUT: &str = "sampled_out";

/// What the report needs besides the rows.
#[derive(Debug, Clone)]
pub struct Meta<'a> {
    pub config: &'a Config,
    pub report_id: &'a str,
    pub policy_domain: &'a str,
    pub begin: i64,
    pub end: i64,
}

/// A built report and what the XML writer needs that mail-auth's model lacks.
#[derive(Debug, Clone)]
pub struct Built {
    pub report: Report,
    /// RFC 7489 `pct` of the newest published record (100 when it had none).
    pub pct: u8,
    /// Rows in the report (the sum of the counts).
    pub messages: u64,
}

/// The report id for a period: the same for every run and every host of a fleet, so a report
/// sent again after a crash carries the id the receiver has seen, and no two periods or domains
/// share one. `BEGIN.HASH`, HASH a 64-bit FNV-1a digest of submitter, domain and period.
pub fn report_id(submitter: &str, policy_domain: &str, begin: i64, end: i64) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let key = format!(
        "{}\0{}\0{begin}\0{end}",
        submitter.to_ascii_lowercase(),
        policy_domain.to_ascii_lowercase()
    );
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{begin}.{h:016x}")
}

/// Everything a record reports: rows with equal keys are one record with a count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    source_ip: IpAddr,
    disposition: String,
    dkim_aligned: String,
    spf_aligned: String,
    reason: Option<String>,
    reason_comment: Option<String>,
    header_from: String,
    envelope_from: String,
    envelope_to: Option<String>,
    dkim: Vec<(String, String, String)>,
    spf: Option<(String, String, String)>,
}

/// Builds the report for `rows` (all of one policy domain and period).
pub fn build(meta: &Meta<'_>, rows: &[Record]) -> Built {
    let mut g = Grouper::new(meta.config);
    for r in rows {
        g.add(r);
    }
    g.finish(meta)
}

/// Rows in, one at a time; the report out. Holds one entry per distinct record, not per row.
pub struct Grouper<'a> {
    cfg: &'a Config,
    groups: BTreeMap<Key, u64>,
    bad_ip: u64,
    /// (received, published) of the newest row with a published record.
    newest: Option<(i64, dmarc_policy::history::Published)>,
}

impl<'a> Grouper<'a> {
    pub fn new(cfg: &'a Config) -> Self {
        Grouper {
            cfg,
            groups: BTreeMap::new(),
            bad_ip: 0,
            newest: None,
        }
    }

    pub fn add(&mut self, r: &Record) {
        let cfg = self.cfg;
        if let Some(p) = &r.published {
            if self.newest.as_ref().is_none_or(|(t, _)| r.received >= *t) {
                self.newest = Some((r.received, p.clone()));
            }
        }
        let Some(ip) = r
            .source_ip
            .as_deref()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
        else {
            self.bad_ip += 1;
            return;
        };
        let key = Key {
            source_ip: ip,
            disposition: r.disposition.to_ascii_lowercase(),
            dkim_aligned: r.dkim_aligned.to_ascii_lowercase(),
            spf_aligned: r.spf_aligned.to_ascii_lowercase(),
            reason: r.override_reason.clone().filter(|s| !s.is_empty()),
            reason_comment: r.override_comment.clone().filter(|s| !s.is_empty()),
            header_from: clean(&r.header_from),
            envelope_from: clean(&r.envelope_from),
            envelope_to: cfg
                .report_envelope_to
                .then(|| clean(&r.envelope_to))
                .filter(|s| !s.is_empty()),
            dkim: r
                .dkim
                .iter()
                .map(|d| {
                    (
                        clean(&d.domain),
                        clean(&d.selector),
                        d.result.to_ascii_lowercase(),
                    )
                })
                .collect(),
            spf: r
                .spf
                .as_ref()
                .map(|(d, s, res)| (clean(d), s.to_ascii_lowercase(), res.to_ascii_lowercase())),
        };
        *self.groups.entry(key).or_default() += 1;
    }

    pub fn finish(self, meta: &Meta<'_>) -> Built {
        let cfg = self.cfg;
        let (groups, bad_ip) = (self.groups, self.bad_ip);
        // The newest published record is the one the report shows.
        let published = self.newest.map(|(_, p)| p).unwrap_or_default();
        let mut policy = PolicyPublished {
            domain: meta.policy_domain.to_string(),
            version_published: None,
            adkim: alignment(&published.adkim),
            aspf: alignment(&published.aspf),
            p: disposition(&published.p),
            sp: disposition(&published.sp),
            np: disposition(&published.np),
            testing: published.testing,
            discovery_method: Discovery::Treewalk,
            fo: None,
        };
        if policy.p == Disposition::Unspecified {
            policy.p = Disposition::None;
        }
        let mut errors = Vec::new();
        if bad_ip > 0 {
            errors.push(format!(
                "{bad_ip} message(s) without a valid source address left out"
            ));
        }
        let mut report = Report::new()
            .with_version(1.0)
            .with_org_name(clean(&cfg.org_name))
            .with_email(clean(&cfg.email))
            .with_report_id(meta.report_id)
            .with_date_range_begin(meta.begin.max(0) as u64)
            .with_date_range_end(meta.end.max(0) as u64)
            .with_policy_published(policy);
        report.report_metadata = ReportMetadata {
            extra_contact_info: cfg.extra_contact_info.as_deref().map(clean),
            generator: Some(format!("authmilter {}", env!("CARGO_PKG_VERSION"))),
            error: errors,
            ..report.report_metadata
        };
        report.report_metadata.date_range = DateRange {
            begin: meta.begin.max(0) as u64,
            end: meta.end.max(0) as u64,
        };
        let mut messages = 0u64;
        for (key, count) in groups {
            messages += count;
            // mail-auth's count is 32 bits: a larger group is written as several records.
            let mut left = count;
            while left > 0 {
                let n = left.min(u64::from(u32::MAX));
                left -= n;
                report.add_record(record(&key, n as u32, cfg.schema));
            }
        }
        Built {
            report,
            pct: published.pct.unwrap_or(100),
            messages,
        }
    }
}

fn record(key: &Key, count: u32, schema: Schema) -> chassis::mailauth::report::Record {
    let mut rec = chassis::mailauth::report::Record::new()
        .with_source_ip(key.source_ip)
        .with_count(count)
        .with_action_disposition(action(&key.disposition))
        .with_dmarc_dkim_result(dmarc(&key.dkim_aligned))
        .with_dmarc_spf_result(dmarc(&key.spf_aligned))
        .with_header_from(key.header_from.clone())
        .with_envelope_from(key.envelope_from.clone());
    rec.identifiers = Identifier {
        envelope_to: key.envelope_to.clone(),
        ..rec.identifiers
    };
    if let Some(reason) = &key.reason {
        rec =
            rec.with_policy_override_reason(override_reason(reason, key.reason_comment.as_deref()));
    }
    for (domain, selector, result) in &key.dkim {
        rec = rec.with_dkim_auth_result(DKIMAuthResult {
            domain: domain.clone(),
            selector: selector.clone(),
            result: dkim_result(result),
            human_result: None,
        });
    }
    match &key.spf {
        Some((domain, scope, result)) => {
            // mail-auth writes no SPF result of scope Helo at all: give it no scope (RFC 9990
            // has only `mfrom`); the RFC 7489 writer adds `helo` back (crate::xml).
            let scope = if scope == "helo" {
                SPFDomainScope::Unspecified
            } else {
                SPFDomainScope::MailFrom
            };
            rec = rec.with_spf_auth_result(SPFAuthResult {
                domain: domain.clone(),
                scope,
                result: spf_result(result),
                human_result: None,
            });
        }
        None if schema == Schema::Rfc7489 => {
            // RFC 7489 requires one SPF result; no check was made, so none.
            let domain = if key.envelope_from.is_empty() {
                key.header_from.clone()
            } else {
                key.envelope_from.clone()
            };
            rec = rec.with_spf_auth_result(SPFAuthResult {
                domain,
                scope: SPFDomainScope::MailFrom,
                result: SpfResult::None,
                human_result: None,
            });
        }
        None => {}
    }
    rec
}

/// Control characters cannot be written in XML 1.0; the store should never hold any.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\t')
        .collect::<String>()
        .trim()
        .to_string()
}

fn alignment(s: &str) -> Alignment {
    match s {
        "s" => Alignment::Strict,
        "r" => Alignment::Relaxed,
        _ => Alignment::Unspecified,
    }
}

fn disposition(s: &str) -> Disposition {
    match s {
        "none" => Disposition::None,
        "quarantine" => Disposition::Quarantine,
        "reject" => Disposition::Reject,
        _ => Disposition::Unspecified,
    }
}

fn action(s: &str) -> ActionDisposition {
    match s {
        "quarantine" => ActionDisposition::Quarantine,
        "reject" => ActionDisposition::Reject,
        "pass" => ActionDisposition::Pass,
        _ => ActionDisposition::None,
    }
}

fn dmarc(s: &str) -> DmarcResult {
    if s == "pass" {
        DmarcResult::Pass
    } else {
        DmarcResult::Fail
    }
}

/// The report's reason for an override; `comment` is the history's own (an ARC override names
/// the sealer), and wins over the one derived from the type.
fn override_reason(s: &str, comment: Option<&str>) -> PolicyOverrideReason {
    let (type_, derived) = match s {
        "local_policy" => (PolicyOverride::LocalPolicy, None),
        "mailing_list" => (PolicyOverride::MailingList, None),
        "trusted_forwarder" => (PolicyOverride::TrustedForwarder, None),
        "policy_test_mode" => (PolicyOverride::PolicyTestMode, None),
        "sampled_out" => (PolicyOverride::Other, Some(SAMPLED_OUT.to_string())),
        other => (PolicyOverride::Other, Some(clean(other))),
    };
    let comment = comment.map(clean).or(derived);
    PolicyOverrideReason { type_, comment }
}

fn dkim_result(s: &str) -> DkimResult {
    match s {
        "pass" => DkimResult::Pass,
        "fail" => DkimResult::Fail,
        "policy" => DkimResult::Policy,
        "neutral" => DkimResult::Neutral,
        "temperror" => DkimResult::TempError,
        "permerror" => DkimResult::PermError,
        _ => DkimResult::None,
    }
}

fn spf_result(s: &str) -> SpfResult {
    match s {
        "pass" => SpfResult::Pass,
        "fail" => SpfResult::Fail,
        "softfail" => SpfResult::SoftFail,
        "neutral" => SpfResult::Neutral,
        "temperror" => SpfResult::TempError,
        "permerror" => SpfResult::PermError,
        _ => SpfResult::None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dmarc_policy::history::{DkimEntry, Published};
    use std::path::Path;

    pub fn config(schema: &str) -> Config {
        Config::parse(
            Path::new("t.toml"),
            &format!(
                "history = \"/h\"\norg_name = \"Test Org\"\nemail = \"dmarc@rx.test\"\nschema = \"{schema}\"\n"
            ),
        )
        .unwrap()
    }

    pub fn row(ip: &str, dkim: &str, spf: &str) -> Record {
        Record {
            received: 86400 * 20000 + 100,
            job_id: "Q".into(),
            reporter: "rx.test".into(),
            source_ip: Some(ip.into()),
            header_from: "example.com".into(),
            envelope_from: "example.com".into(),
            envelope_to: "rx.test".into(),
            policy_domain: Some("example.com".into()),
            published: Some(Published {
                p: "reject".into(),
                sp: "quarantine".into(),
                np: "reject".into(),
                adkim: "r".into(),
                aspf: "s".into(),
                testing: false,
                pct: Some(50),
                psd: "u".into(),
                rua: vec!["mailto:d@example.com".into()],
            }),
            policy_applied: "reject".into(),
            spf: Some(("example.com".into(), "mfrom".into(), spf.into())),
            dkim: vec![DkimEntry {
                domain: "example.com".into(),
                selector: "s1".into(),
                result: dkim.into(),
            }],
            dkim_aligned: dkim.into(),
            spf_aligned: if spf == "pass" { "pass" } else { "fail" }.into(),
            dmarc_result: "pass".into(),
            disposition: "none".into(),
            action: "accept".into(),
            override_reason: None,
            override_comment: None,
            message_key: String::new(),
        }
    }

    #[test]
    fn equal_rows_are_one_record_with_a_count() {
        let cfg = config("rfc9990");
        let rows = vec![
            row("192.0.2.1", "pass", "pass"),
            row("192.0.2.1", "pass", "pass"),
            row("192.0.2.2", "pass", "fail"),
            row("192.0.2.1", "pass", "pass"),
        ];
        let meta = Meta {
            config: &cfg,
            report_id: "r1",
            policy_domain: "example.com",
            begin: 0,
            end: 86399,
        };
        let b = build(&meta, &rows);
        assert_eq!(b.messages, 4);
        assert_eq!(b.pct, 50);
        let recs = b.report.records();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].source_ip(), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(recs[0].count(), 3);
        assert_eq!(recs[1].count(), 1);
        assert_eq!(recs[1].dmarc_spf_result(), DmarcResult::Fail);
    }

    /// An ARC override (issue #19) reaches the report as `local_policy` with the history's
    /// comment naming the sealer; a row without a comment keeps the derived one.
    #[test]
    fn an_arc_override_carries_its_comment() {
        let cfg = config("rfc9990");
        let mut arc = row("192.0.2.9", "fail", "fail");
        arc.override_reason = Some("local_policy".into());
        arc.override_comment = Some("arc=pass as sealed by lists.example.org".into());
        let mut sampled = row("192.0.2.8", "fail", "fail");
        sampled.override_reason = Some("sampled_out".into());
        let meta = Meta {
            config: &cfg,
            report_id: "r2",
            policy_domain: "example.com",
            begin: 0,
            end: 86399,
        };
        let b = build(&meta, &[arc, sampled]);
        let reasons: Vec<_> = b
            .report
            .records()
            .iter()
            .map(|r| r.policy_override_reason().to_vec())
            .collect();
        assert_eq!(reasons.len(), 2);
        let arc_reason = reasons
            .iter()
            .flatten()
            .find(|r| r.type_ == PolicyOverride::LocalPolicy)
            .expect("local_policy reason");
        assert_eq!(
            arc_reason.comment.as_deref(),
            Some("arc=pass as sealed by lists.example.org")
        );
        let other = reasons
            .iter()
            .flatten()
            .find(|r| r.type_ == PolicyOverride::Other)
            .expect("sampled_out reason");
        assert!(other.comment.as_deref().is_some_and(|c| !c.is_empty()));
    }

    #[test]
    fn report_ids_differ_per_domain_and_period_and_repeat() {
        let a = report_id("rx.test", "example.com", 0, 86399);
        assert_eq!(a, report_id("RX.test", "example.COM", 0, 86399));
        assert_ne!(a, report_id("rx.test", "example.org", 0, 86399));
        assert_ne!(a, report_id("rx.test", "example.com", 86400, 172799));
        assert!(a.starts_with("0."));
    }
}
