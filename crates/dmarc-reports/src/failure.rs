//! Failure reports (RFC 6591 AFRF, RFC 9991, RFC 7489 §7.3): which failures the domain's `fo=`
//! asks to hear about, redaction of the copied header, and the report mail — plain functions
//! over one evaluated message, so they are tested without a milter or a store.
//!
//! dmarc-milter keeps failing messages of domains with `ruf=` (`failure_reports = true`); the
//! report program ([`crate::run`]) applies `fo=`, the destinations' rules and the rate limit.

use chassis::mailauth::report::{
    AuthFailureType, DeliveryResult, Feedback, FeedbackType, IdentityAlignment,
};
use dmarc_policy::history::DkimEntry;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::HeaderType;
use mail_builder::mime::{BodyPart, MimePart};
use mail_builder::MessageBuilder;
use std::net::IpAddr;

/// One message that failed, as the milter saw it.
#[derive(Debug, Clone)]
pub struct Incident {
    pub arrival: i64,
    pub source_ip: Option<IpAddr>,
    /// RFC5321.MailFrom (address).
    pub mail_from: String,
    /// The first envelope recipient.
    pub rcpt_to: String,
    /// The policy domain (`Reported-Domain`).
    pub policy_domain: String,
    /// Our Authentication-Results value for the message.
    pub authentication_results: String,
    pub dkim: Vec<DkimEntry>,
    /// SPF (domain, scope, result).
    pub spf: Option<(String, String, String)>,
    pub dkim_aligned: bool,
    pub spf_aligned: bool,
    /// The message's header block as received.
    pub headers: String,
    pub delivery: DeliveryResult,
}

/// Whether `fo` (the record's failure options, `:`-separated; default `0`) asks for a report
/// on this message (RFC 7489 §6.3):
/// - `0`: every mechanism failed to give an aligned pass (DMARC failed);
/// - `1`: any mechanism failed to give an aligned pass;
/// - `d`: a DKIM signature failed to verify, aligned or not;
/// - `s`: SPF failed, aligned or not.
pub fn wanted(fo: &str, i: &Incident) -> bool {
    let fo = if fo.trim().is_empty() { "0" } else { fo };
    let failed = |r: &str| !matches!(r, "pass" | "none" | "");
    fo.split(':').map(str::trim).any(|opt| match opt {
        "0" => !i.dkim_aligned && !i.spf_aligned,
        "1" => !i.dkim_aligned || !i.spf_aligned,
        "d" => i.dkim.iter().any(|d| failed(&d.result)),
        "s" => i.spf.as_ref().is_some_and(|(_, _, r)| failed(r)),
        _ => false,
    })
}

/// How much of the failing message's addresses a report shows (RFC 6590).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Redaction {
    /// Addresses as received.
    None,
    /// Local parts replaced by `redacted` (the domains stay: they are what the report is about).
    #[default]
    LocalParts,
}

const ADDRESS_FIELDS: [&str; 9] = [
    "from",
    "to",
    "cc",
    "bcc",
    "sender",
    "reply-to",
    "return-path",
    "delivered-to",
    "resent-to",
];

/// Replaces the local part of every address in `s` (anything before an `@` made of atext and
/// dots) with `redacted`.
pub fn redact_addresses(s: &str) -> String {
    let is_local = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c);
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut pending = String::new();
    while i < chars.len() {
        let c = chars[i];
        if is_local(c) {
            pending.push(c);
        } else {
            if c == '@' && !pending.is_empty() {
                out.push_str("redacted");
            } else {
                out.push_str(&pending);
            }
            pending.clear();
            out.push(c);
        }
        i += 1;
    }
    out.push_str(&pending);
    out
}

/// The header block with the local parts of addresses redacted in the address fields (and the
/// rest as received); unfolded continuation lines belong to the field above them.
pub fn redact_headers(headers: &str, mode: Redaction) -> String {
    if mode == Redaction::None {
        return headers.to_string();
    }
    let mut out = String::with_capacity(headers.len());
    let mut in_address_field = false;
    for line in headers.split_inclusive('\n') {
        if !line.starts_with([' ', '\t']) {
            let name = line
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            in_address_field = ADDRESS_FIELDS.contains(&name.as_str());
        }
        if in_address_field {
            out.push_str(&redact_addresses(line));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The AFRF report mail for `i`, from `from` to `to`, by `reporting_mta` (our host name).
pub fn message(
    i: &Incident,
    reporting_mta: &str,
    from: &str,
    to: &[String],
    mode: Redaction,
    date: i64,
) -> std::io::Result<Vec<u8>> {
    let mut alignment = IdentityAlignment::None;
    if i.dkim_aligned && i.spf_aligned {
        alignment = IdentityAlignment::DkimSpf;
    } else if i.dkim_aligned {
        alignment = IdentityAlignment::Dkim;
    } else if i.spf_aligned {
        alignment = IdentityAlignment::Spf;
    }
    let redact = |a: &str| match mode {
        Redaction::None => a.to_string(),
        Redaction::LocalParts => redact_addresses(a),
    };
    let mut fb = Feedback::new(FeedbackType::AuthFailure)
        .with_version(1)
        .with_arrival_date(i.arrival)
        .with_auth_failure(AuthFailureType::Dmarc)
        .with_reported_domain(i.policy_domain.clone())
        .with_reporting_mta(reporting_mta.to_string())
        .with_authentication_results(i.authentication_results.clone())
        // RFC 5965 writes both in angle brackets; mail-auth does not add them.
        .with_original_mail_from(format!("<{}>", redact(&i.mail_from)))
        .with_original_rcpt_to(format!("<{}>", redact(&i.rcpt_to)))
        .with_identity_alignment(alignment)
        .with_delivery_result(i.delivery);
    if let Some(ip) = i.source_ip {
        fb = fb.with_source_ip(ip);
    }
    if let Some(d) = i.dkim.iter().find(|d| d.result != "pass") {
        fb = fb
            .with_dkim_domain(d.domain.clone())
            .with_dkim_selector(d.selector.clone());
    }
    if let Some((d, _, _)) = &i.spf {
        fb = fb.with_spf_dns(format!("txt : {d}"));
    }
    let arf = fb.to_arf();
    let ip = i
        .source_ip
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into());
    let text = format!(
        "This is a DMARC failure report for a message claiming to be from {} that \
         {reporting_mta} received from {ip}.\r\n",
        i.policy_domain
    );
    let parts = vec![
        MimePart::new(ContentType::new("text/plain"), BodyPart::Text(text.into()))
            .transfer_encoding("7bit"),
        // 7bit, as RFC 6591 parsers expect: mail-builder would quoted-printable a long line.
        MimePart::new(
            ContentType::new("message/feedback-report"),
            BodyPart::Text(arf.into()),
        )
        .transfer_encoding("7bit"),
        MimePart::new(
            ContentType::new("text/rfc822-headers"),
            BodyPart::Text(redact_headers(&i.headers, mode).into()),
        )
        .transfer_encoding("7bit"),
    ];
    let to: Vec<Address<'_>> = to.iter().map(|a| Address::from(a.as_str())).collect();
    let subject = format!("DMARC failure report for {} from {ip}", i.policy_domain);
    // One Message-ID per incident (the same if the report is built again).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in format!("{}\0{}\0{}", i.arrival, i.policy_domain, i.headers).bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let mut out = Vec::new();
    MessageBuilder::new()
        .from(Address::from(from))
        .to(Address::new_list(to))
        .message_id(format!("failure.{}.{h:016x}@{reporting_mta}", i.arrival))
        .header("Subject", Raw::new(subject.as_str()))
        .date(date)
        .header("Auto-Submitted", HeaderType::Text("auto-generated".into()))
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "feedback-report"),
            BodyPart::Multipart(parts),
        ))
        .write_to(&mut out)?;
    Ok(out)
}

/// Report mail is never the subject of a failure report (the milter's check, shared).
pub use dmarc_policy::history::is_report_mail;

#[cfg(test)]
mod tests {
    use super::*;

    pub fn incident(dkim: &str, spf: &str, dkim_aligned: bool, spf_aligned: bool) -> Incident {
        Incident {
            arrival: 1_728_000_000,
            source_ip: Some("198.51.100.7".parse().unwrap()),
            mail_from: "bounce@other.example".into(),
            rcpt_to: "bob@rx.test".into(),
            policy_domain: "example.com".into(),
            authentication_results: "rx.test; dmarc=fail header.from=example.com".into(),
            dkim: vec![DkimEntry {
                domain: "example.com".into(),
                selector: "s1".into(),
                result: dkim.into(),
            }],
            spf: Some(("other.example".into(), "mfrom".into(), spf.into())),
            dkim_aligned,
            spf_aligned,
            headers: "From: Alice <alice@example.com>\r\nTo: bob@rx.test,\r\n carol@rx.test\r\nSubject: hi alice@example.com\r\n".into(),
            delivery: DeliveryResult::Delivered,
        }
    }

    #[test]
    fn fo_options() {
        // DKIM fails, SPF passes unaligned: DMARC fails.
        let a = incident("fail", "pass", false, false);
        assert!(wanted("0", &a) && wanted("", &a) && wanted("1", &a) && wanted("d", &a));
        assert!(!wanted("s", &a));
        // SPF fails, DKIM passes aligned: DMARC passes.
        let b = incident("pass", "fail", true, false);
        assert!(!wanted("0", &b) && wanted("1", &b) && !wanted("d", &b) && wanted("s", &b));
        assert!(wanted("d:s", &b));
        // Everything passes aligned: nothing to report.
        let c = incident("pass", "pass", true, true);
        assert!(["0", "1", "d", "s", "0:1:d:s"]
            .iter()
            .all(|fo| !wanted(fo, &c)));
        assert!(!wanted("x", &a));
    }

    #[test]
    fn redaction_keeps_domains_and_other_fields() {
        let h = redact_headers(
            &incident("fail", "pass", false, false).headers,
            Redaction::LocalParts,
        );
        assert_eq!(
            h,
            "From: Alice <redacted@example.com>\r\nTo: redacted@rx.test,\r\n redacted@rx.test\r\nSubject: hi alice@example.com\r\n"
        );
        assert_eq!(redact_addresses("<>"), "<>");
    }

    #[test]
    fn report_mail_is_recognised() {
        assert!(is_report_mail(
            "Subject: Report Domain: x.example Submitter: y\r\n"
        ));
        assert!(is_report_mail(
            "Content-Type: multipart/report; report-type=feedback-report\r\n"
        ));
        assert!(!is_report_mail("Subject: hello\r\n"));
    }
}
