//! Helpers shared by the end-to-end tests with real MTAs (postfix_dkim.rs, sendmail_dkim.rs):
//! keys and zone, the test message, header parsing, judges' plumbing, log filtering.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::time::Duration;

use testkit::dns::Zone;
use testkit::keys::TestKey;
use testkit::opendkim::{miltertest_message, Opendkim};
use testkit::postfix::header_fields;
use testkit::smtp::{self, Reply};

/// The MTA's host name, and the authserv-id dkim-milter is configured with.
pub const AUTHSERV: &str = "mx.test.example";
/// Upper bound for one delivery (measured: 0.1-0.3 s after the end of DATA).
pub const DELIVERY: Duration = Duration::from_secs(20);

/// Runs blocking work (SMTP, MTA start-up, judges) without stalling the runtime that serves
/// the milter and the DNS server.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

pub struct Keys {
    /// example.com, selector rsa.
    pub rsa: TestKey,
    /// example.com, selector ed.
    pub ed: TestKey,
    /// sender.example, selector od: used by the real OpenDKIM signer.
    pub od_rsa: TestKey,
    /// sender.example, selector oded: used by the real OpenDKIM signer.
    pub od_ed: TestKey,
}

pub fn zone_for(k: &Keys) -> Zone {
    Zone::new()
        .txt("rsa._domainkey.example.com", &k.rsa.dns_record())
        .txt("ed._domainkey.example.com", &k.ed.dns_record())
        .txt("od._domainkey.sender.example", &k.od_rsa.dns_record())
        .txt("oded._domainkey.sender.example", &k.od_ed.dns_record())
}

pub fn send(addr: std::net::SocketAddr, from: &str, msg: &[u8]) -> Reply {
    blocking(|| {
        smtp::send(
            addr,
            "client.test.example",
            from,
            &["bob@test.example"],
            msg,
            None,
        )
    })
    .expect("SMTP session")
}

pub fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Someone <{from}>\r\nTo: Bob <bob@test.example>\r\nSubject: {subject}\r\n\
         Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@test.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         Hello Bob,\r\n\r\nthis went through a real Postfix.  With  spaces.\r\n.leading dot\r\n\r\n"
    )
    .into_bytes()
}

/// Header fields of `msg` called `name` (case-insensitive), unfolded, whitespace runs collapsed.
pub fn fields(msg: &[u8], name: &str) -> Vec<String> {
    header_fields(msg)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| collapse(&v))
        .collect()
}

pub fn collapse(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The value of tag `tag` in a DKIM-Signature value, whitespace removed.
pub fn tag(sig: &str, tag: &str) -> String {
    sig.split(';')
        .filter_map(|t| t.split_once('='))
        .find(|(n, _)| n.trim() == tag)
        .map(|(_, v)| v.chars().filter(|c| !c.is_whitespace()).collect())
        .unwrap_or_default()
}

/// The first 8 characters of the signature's b= as an A-R property value (header.b): a
/// quoted-string when they are not an RFC 2045 token (base64's "/" is a tspecial).
pub fn header_b(sig: &str) -> String {
    let b8: String = tag(sig, "b").chars().take(8).collect();
    if b8.chars().any(|c| "()<>@,;:\\\"/[]?=".contains(c)) {
        format!("\"{b8}\"")
    } else {
        b8
    }
}

/// The delivered message with this Subject.
pub fn by_subject<'a>(got: &'a [(String, Vec<u8>)], subject: &str) -> &'a (String, Vec<u8>) {
    got.iter()
        .find(|(_, m)| fields(m, "Subject") == [subject])
        .unwrap_or_else(|| panic!("no delivered message with Subject {subject}"))
}

/// Our daemon's OpenDKIM-style log lines for queue id `qid` ("QID: ..."), in order.
pub fn logged(qid: &str) -> Vec<String> {
    let prefix = format!("{qid}: ");
    testkit::logcapture::lines_with(qid)
        .into_iter()
        .filter(|l| l.starts_with(&prefix))
        .collect()
}

pub fn text(msg: &[u8]) -> String {
    String::from_utf8_lossy(msg).into_owned()
}

/// Signs `msg` with a real OpenDKIM signer for sender.example (selector od = RSA, oded =
/// Ed25519), relaxed/relaxed, and returns the signed message.
pub fn opendkim_signed(dir: &Path, key: &TestKey, selector: &str, msg: &[u8]) -> Vec<u8> {
    let path = key.write_pem(dir, &format!("{selector}-opendkim.pem"), true);
    let signer = Opendkim::start_signer("sender.example", selector, &path, "relaxed/relaxed")
        .expect("opendkim signer starts");
    let out = miltertest_message(&signer.socket, msg, "127.0.0.1").expect("miltertest");
    assert_eq!(out.header("DKIM-Signature").len(), 1, "{}", out.raw_output);
    out.apply_to(msg)
}
