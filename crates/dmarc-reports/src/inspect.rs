//! `authmilter reports inspect FILE`: a report a domain owner *received* (`.xml`, `.xml.gz`,
//! `.zip` or the whole report mail), read into mail-auth's report model — the one the writer
//! uses — and summarised: sources, counts, pass/fail per mechanism, and which sources fail
//! DMARC alignment and why.
//!
//! The input is hostile by assumption (anyone can mail a domain owner a "report"): it is read
//! with a size cap, decompressed with a cap (gzip bombs and forged size fields end at the cap),
//! a document type declaration is refused (no entity is ever expanded; quick-xml would not
//! either), the root must be `feedback` in no namespace or a DMARC one, and every failure is an
//! error message, never a panic.

use chassis::mailauth::report::{
    ActionDisposition, DkimResult, DmarcResult, PolicyOverride, Record, Report, SPFDomainScope,
    SpfResult,
};
use flate2::read::GzDecoder;
use quick_xml::events::Event;
use quick_xml::Reader;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;

/// The largest file, and the largest decompressed report, `inspect` reads.
pub const MAX_SIZE: usize = 64 * 1024 * 1024;

/// Namespaces a DMARC aggregate report may use (none is also fine).
const NAMESPACES: [&str; 2] = [
    "urn:ietf:params:xml:ns:dmarc-2.0",
    "http://dmarc.org/dmarc-xml/0.1",
];

/// Reads `bytes` (any of the accepted forms) into a report, or says why not.
pub fn parse(bytes: &[u8], max: usize) -> Result<Report, String> {
    if bytes.len() > max {
        return Err(format!("input is larger than {max} bytes"));
    }
    let head = skip_ws(bytes);
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let xml = gunzip(bytes, max)?;
        return parse_xml(&xml);
    }
    if bytes.starts_with(b"PK\x03\x04") {
        return Err("zip archives are read only as mail attachments; unzip it first".into());
    }
    if head.starts_with(b"<") {
        return parse_xml(bytes);
    }
    parse_mail(bytes, max)
}

/// A report mail: the first attachment that is a report (gzip, XML; zip through mail-auth,
/// which caps it the same way), each checked as a file would be.
fn parse_mail(bytes: &[u8], max: usize) -> Result<Report, String> {
    use mail_parser::{MessageParser, MimeHeaders, PartType};
    let Some(msg) = MessageParser::new().parse(bytes) else {
        return Err("not a report file (XML or gzip) and not a mail message".into());
    };
    let mut last_err = None;
    let mut zip = false;
    for part in &msg.parts {
        let data: &[u8] = match &part.body {
            PartType::Text(t) => t.as_bytes(),
            PartType::Binary(b) | PartType::InlineBinary(b) => b.as_ref(),
            _ => continue,
        };
        let sub = part
            .content_type()
            .and_then(|c| c.subtype())
            .unwrap_or("")
            .to_ascii_lowercase();
        let ext = part
            .attachment_name()
            .and_then(|n| n.rsplit_once('.'))
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        let found = if sub == "gzip" || sub == "x-gzip" || ext == "gz" {
            gunzip(data, max).and_then(|xml| parse_xml(&xml))
        } else if sub == "zip" || sub == "x-zip-compressed" || ext == "zip" {
            zip = true;
            continue;
        } else if sub == "xml" || ext == "xml" {
            parse_xml(data)
        } else {
            continue;
        };
        match found {
            Ok(r) => return Ok(r),
            Err(e) => last_err = Some(e),
        }
    }
    if zip {
        return match Report::parse_rfc5322(bytes, max) {
            Ok(r) => Ok(r),
            Err(chassis::mailauth::report::Error::ReportTooLarge) => Err(format!(
                "the report is larger than {max} bytes decompressed"
            )),
            Err(e) => Err(format!(
                "the message's zip attachment cannot be read: {e:?}"
            )),
        };
    }
    Err(last_err.unwrap_or_else(|| "the message holds no DMARC aggregate report".into()))
}

fn skip_ws(b: &[u8]) -> &[u8] {
    let b = b.strip_prefix(b"\xef\xbb\xbf").unwrap_or(b);
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    &b[start..]
}

/// Decompresses at most `max` bytes; a truncated or corrupt stream is an error.
pub fn gunzip(bytes: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(4).min(1 << 20));
    GzDecoder::new(bytes)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("gzip: {e}"))?;
    if out.len() > max {
        return Err(format!(
            "gzip: the report is larger than {max} bytes decompressed"
        ));
    }
    Ok(out)
}

fn parse_xml(xml: &[u8]) -> Result<Report, String> {
    check_root(xml)?;
    Report::parse_xml(xml).map_err(|e| format!("XML: {e}"))
}

/// The document must start with `feedback` in an accepted namespace, with no DTD before it.
fn check_root(xml: &[u8]) -> Result<(), String> {
    let mut reader = Reader::from_reader(xml);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_event_into(&mut buf) {
            Ok(Event::DocType(_)) => {
                return Err(
                    "XML: a document type declaration (<!DOCTYPE>) is not allowed in a report"
                        .into(),
                )
            }
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                let name = e.name().as_ref().to_string();
                if name != "feedback" {
                    return Err(format!(
                        "XML: the root element is <{name}>, not <feedback>: not a DMARC aggregate report"
                    ));
                }
                for a in e.attributes().flatten() {
                    let key = a.key.as_ref().to_string();
                    if key == "xmlns" {
                        let ns = a.value.to_string();
                        if !NAMESPACES.contains(&ns.as_str()) {
                            return Err(format!(
                                "XML: namespace '{ns}' is not a DMARC aggregate report namespace"
                            ));
                        }
                    }
                }
                return Ok(());
            }
            Ok(Event::Eof) => return Err("XML: no root element".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("XML: {e}")),
        }
    }
}

/// Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(t: u64) -> String {
    let days = (t / 86400) as i64;
    let secs = t % 86400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn dkim_word(r: DkimResult) -> &'static str {
    match r {
        DkimResult::None => "none",
        DkimResult::Pass => "pass",
        DkimResult::Fail => "fail",
        DkimResult::Policy => "policy",
        DkimResult::Neutral => "neutral",
        DkimResult::TempError => "temperror",
        DkimResult::PermError => "permerror",
    }
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::None => "none",
        SpfResult::Neutral => "neutral",
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
    }
}

fn aligned(r: DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail => "fail",
        DmarcResult::Unspecified => "-",
    }
}

fn disposition(d: ActionDisposition) -> &'static str {
    match d {
        ActionDisposition::None | ActionDisposition::Unspecified => "none",
        ActionDisposition::Pass => "pass",
        ActionDisposition::Quarantine => "quarantine",
        ActionDisposition::Reject => "reject",
    }
}

/// Why a record failed DMARC: what each mechanism said and about which domain.
fn why(r: &Record) -> String {
    let from = r.header_from();
    let mut parts = Vec::new();
    if r.dkim_auth_result().is_empty() {
        parts.push("no DKIM signature".to_string());
    }
    for d in r.dkim_auth_result() {
        let res = dkim_word(d.result());
        if d.result() == DkimResult::Pass {
            parts.push(format!(
                "DKIM pass for d={} (not aligned with {from})",
                d.domain()
            ));
        } else {
            parts.push(format!(
                "DKIM {res} for d={} s={}",
                d.domain(),
                d.selector()
            ));
        }
    }
    match r.spf_auth_result().first() {
        None => parts.push("no SPF result".into()),
        Some(s) => {
            let scope = if s.scope == SPFDomainScope::Helo {
                " (HELO)"
            } else {
                ""
            };
            if s.result == SpfResult::Pass {
                parts.push(format!(
                    "SPF pass for {}{scope} (not aligned with {from})",
                    s.domain
                ));
            } else {
                parts.push(format!(
                    "SPF {} for {}{scope}",
                    spf_word(s.result),
                    s.domain
                ));
            }
        }
    }
    parts.join("; ")
}

/// The human summary of `r`.
pub fn summary(r: &Report) -> String {
    let m = &r.report_metadata;
    let p = &r.policy_published;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "DMARC aggregate report {} from {} <{}>",
        m.report_id, m.org_name, m.email
    );
    let _ = writeln!(
        o,
        "domain {}: {} to {}",
        p.domain,
        utc(m.date_range.begin),
        utc(m.date_range.end)
    );
    let _ = writeln!(
        o,
        "published policy: p={} sp={} adkim={} aspf={}{}",
        p.p,
        p.sp,
        p.adkim,
        p.aspf,
        if p.testing { " t=y" } else { "" }
    );
    for e in &m.error {
        let _ = writeln!(o, "reporter's error: {e}");
    }
    let total: u64 = r.record.iter().map(|x| u64::from(x.count())).sum();
    let pass: u64 = r
        .record
        .iter()
        .filter(|x| {
            x.dmarc_dkim_result() == DmarcResult::Pass || x.dmarc_spf_result() == DmarcResult::Pass
        })
        .map(|x| u64::from(x.count()))
        .sum();
    let mut sources: BTreeMap<String, u64> = BTreeMap::new();
    for x in &r.record {
        let ip = x
            .source_ip()
            .map(|i| i.to_string())
            .unwrap_or_else(|| "?".into());
        *sources.entry(ip).or_default() += u64::from(x.count());
    }
    let pct = |n: u64| (n * 100).checked_div(total).unwrap_or(0);
    let _ = writeln!(
        o,
        "messages: {total} from {} source(s); DMARC pass {pass} ({}%), fail {} ({}%)",
        sources.len(),
        pct(pass),
        total - pass,
        pct(total - pass)
    );
    let _ = writeln!(
        o,
        "\n{:<40} {:>7}  {:<11} {:<5} {:<5} header_from",
        "source", "count", "disposition", "dkim", "spf"
    );
    let mut rows: Vec<&Record> = r.record.iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.count()));
    for x in &rows {
        let ip = x
            .source_ip()
            .map(|i| i.to_string())
            .unwrap_or_else(|| "?".into());
        let mut reasons: Vec<String> = x
            .policy_override_reason()
            .iter()
            .map(|rr| {
                let t = match rr.type_ {
                    PolicyOverride::LocalPolicy => "local_policy",
                    PolicyOverride::MailingList => "mailing_list",
                    PolicyOverride::PolicyTestMode => "policy_test_mode",
                    PolicyOverride::TrustedForwarder => "trusted_forwarder",
                    PolicyOverride::Other => "other",
                };
                match &rr.comment {
                    Some(c) => format!("{t}: {c}"),
                    None => t.to_string(),
                }
            })
            .collect();
        let reason = if reasons.is_empty() {
            String::new()
        } else {
            format!("  (override: {})", std::mem::take(&mut reasons).join(", "))
        };
        let _ = writeln!(
            o,
            "{:<40} {:>7}  {:<11} {:<5} {:<5} {}{reason}",
            ip,
            x.count(),
            disposition(x.action_disposition()),
            aligned(x.dmarc_dkim_result()),
            aligned(x.dmarc_spf_result()),
            x.header_from()
        );
    }
    let failing: Vec<&&Record> = rows
        .iter()
        .filter(|x| {
            x.dmarc_dkim_result() != DmarcResult::Pass && x.dmarc_spf_result() != DmarcResult::Pass
        })
        .collect();
    if !failing.is_empty() {
        let _ = writeln!(
            o,
            "\nfailing DMARC (neither DKIM nor SPF aligned and passing):"
        );
        for x in failing {
            let ip = x
                .source_ip()
                .map(|i| i.to_string())
                .unwrap_or_else(|| "?".into());
            let _ = writeln!(o, "  {ip} ({} message(s)): {}", x.count(), why(x));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1728000000), "2024-10-04 00:00:00 UTC");
        assert_eq!(utc(951868799), "2000-02-29 23:59:59 UTC");
    }

    #[test]
    fn hostile_inputs_get_an_error() {
        assert!(parse(b"", MAX_SIZE).is_err());
        assert!(parse(&[0x1f, 0x8b, 8, 0], MAX_SIZE)
            .unwrap_err()
            .starts_with("gzip:"));
        let e = parse(
            b"<?xml version=\"1.0\"?><!DOCTYPE feedback [<!ENTITY a \"aaaa\">]><feedback>&a;</feedback>",
            MAX_SIZE,
        )
        .unwrap_err();
        assert!(e.contains("DOCTYPE"), "{e}");
        let e = parse(b"<feedback xmlns=\"urn:x\"></feedback>", MAX_SIZE).unwrap_err();
        assert!(e.contains("namespace 'urn:x'"), "{e}");
        let e = parse(b"<html></html>", MAX_SIZE).unwrap_err();
        assert!(e.contains("<html>"), "{e}");
        let e = parse(b"Subject: hi\r\n\r\nhello\r\n", MAX_SIZE).unwrap_err();
        assert!(e.contains("no DMARC aggregate report"), "{e}");
        assert!(parse(&[0u8; 100], 10).unwrap_err().contains("larger"));
    }
}
