//! The report mail (RFC 7489 §7.2.1.1, RFC 9990 §5): gzip'd XML attached as
//! `receiver!policy-domain!begin!end!id.xml.gz`, the RFC's subject, `Auto-Submitted` (so no
//! one answers or reports on it), and a Message-ID derived from the report id, so a report sent
//! again after a crash is recognisably the same message.

use flate2::{write::GzEncoder, Compression};
use mail_builder::headers::address::Address;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::HeaderType;
use mail_builder::MessageBuilder;
use std::io::Write;

/// One report, ready to send.
#[derive(Debug, Clone)]
pub struct ReportMail {
    pub filename: String,
    pub subject: String,
    pub gzip: Vec<u8>,
    /// The whole RFC 5322 message.
    pub message: Vec<u8>,
}

pub struct Envelope<'a> {
    pub submitter: &'a str,
    pub policy_domain: &'a str,
    pub report_id: &'a str,
    pub begin: i64,
    pub end: i64,
    pub from: &'a str,
    pub to: &'a [String],
    /// Unix time for the Date header.
    pub date: i64,
}

pub fn filename(submitter: &str, domain: &str, begin: i64, end: i64, id: &str) -> String {
    format!("{submitter}!{domain}!{begin}!{end}!{id}.xml.gz")
}

pub fn subject(submitter: &str, domain: &str, id: &str) -> String {
    format!("Report Domain: {domain} Submitter: {submitter} Report-ID: <{id}>")
}

pub fn gzip(xml: &str) -> std::io::Result<Vec<u8>> {
    let mut e = GzEncoder::new(Vec::with_capacity(xml.len() / 8 + 64), Compression::best());
    e.write_all(xml.as_bytes())?;
    e.finish()
}

/// Builds the message for `xml`.
pub fn build(env: &Envelope<'_>, xml: &str) -> std::io::Result<ReportMail> {
    let gz = gzip(xml)?;
    let filename = filename(
        env.submitter,
        env.policy_domain,
        env.begin,
        env.end,
        env.report_id,
    );
    let subject = subject(env.submitter, env.policy_domain, env.report_id);
    let to: Vec<Address<'_>> = env.to.iter().map(|a| Address::from(a.as_str())).collect();
    let body = format!(
        "This is a DMARC aggregate report from {submitter}.\r\n\r\n\
         Report Domain: {domain}\r\nSubmitter: {submitter}\r\nReport-ID: {id}\r\n\
         Period: {begin} to {end} (seconds since 1970, UTC)\r\n",
        submitter = env.submitter,
        domain = env.policy_domain,
        id = env.report_id,
        begin = env.begin,
        end = env.end,
    );
    let mut message = Vec::new();
    MessageBuilder::new()
        .from(Address::from(env.from))
        .to(Address::new_list(to))
        // Raw: the RFC's subject as plain text (folded at spaces), not RFC 2047-encoded,
        // which mail-builder does for `<`; receivers match it literally.
        .header("Subject", Raw::new(subject.as_str()))
        .date(env.date)
        .message_id(format!("{}@{}", env.report_id, env.submitter))
        .header("Auto-Submitted", HeaderType::Text("auto-generated".into()))
        .text_body(body)
        .attachment("application/gzip", filename.as_str(), gz.clone())
        .write_to(&mut message)?;
    Ok(ReportMail {
        filename,
        subject,
        gzip: gz,
        message,
    })
}
