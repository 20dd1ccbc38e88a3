//! Fixtures shared by the DMARC end-to-end tests with real MTAs (postfix_dmarc.rs,
//! sendmail_dmarc.rs): keys and zone, an outside signer, the daemons' configurations, the
//! history rows they check, and small reply/header helpers.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;

use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use testkit::dns::{TestDns, Zone};
use testkit::keys::TestKey;

use crate::mta_common::{fields, AUTHSERV};

/// The selector of the test's own Ed25519 key for signed.example.
pub const SELECTOR: &str = "sel";

/// The name dkim-milter (and nothing else, when DKIM is verified once) looks up.
pub const KEY_NAME: &str = "sel._domainkey.signed.example";

/// DmarcKeys of one test: `signed` for signed.example (signed in the test), `shipped` for the
/// example.com key the shipped etc/keys tables name (selector mail).
pub struct DmarcKeys {
    pub signed: TestKey,
    pub shipped: TestKey,
}

pub fn new_keys() -> DmarcKeys {
    DmarcKeys {
        signed: TestKey::ed25519(),
        shipped: TestKey::rsa(2048),
    }
}

/// - aligned.example: SPF passes for 127.0.0.1 (the test client), p=reject.
/// - other.example: SPF passes for 127.0.0.1, no DMARC record (an unaligned bounce domain).
/// - reject.example: SPF fails everywhere, p=reject.
/// - signed.example: SPF fails everywhere, p=reject, DKIM key `sel`: passes DMARC by DKIM only.
/// - example.com: SPF fails everywhere, p=reject, DKIM key `mail` (the shipped tables).
pub fn zone(k: &DmarcKeys) -> Zone {
    Zone::new()
        .txt("aligned.example", "v=spf1 ip4:127.0.0.1 -all")
        .txt("_dmarc.aligned.example", "v=DMARC1; p=reject")
        .txt("other.example", "v=spf1 ip4:127.0.0.1 -all")
        .txt("reject.example", "v=spf1 -all")
        .txt("_dmarc.reject.example", "v=DMARC1; p=reject")
        .txt("signed.example", "v=spf1 -all")
        .txt("_dmarc.signed.example", "v=DMARC1; p=reject")
        .txt(KEY_NAME, &k.signed.dns_record())
        .txt("example.com", "v=spf1 -all")
        .txt("_dmarc.example.com", "v=DMARC1; p=reject")
        .txt("mail._domainkey.example.com", &k.shipped.dns_record())
}

/// Signs `raw` with `key` as `d=signed.example; s=sel` (Ed25519), as an outside signer would.
pub fn sign(raw: &[u8], key: &TestKey) -> Vec<u8> {
    let k = Ed25519Key::from_pkcs8_maybe_unchecked_der(&key.pkcs8_der()).expect("key");
    let sig = DkimSigner::from_key(k)
        .domain("signed.example")
        .selector(SELECTOR)
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(raw)
        .expect("sign");
    let mut out = sig.to_header().into_bytes();
    out.extend_from_slice(raw);
    out
}

pub fn resolver(dns: &TestDns) -> String {
    format!(
        "[resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
        dns.addr()
    )
}

/// dmarc-milter's configuration for these tests; `extra` goes to the top level.
pub fn dmarc_config(dns: &TestDns, extra: &str) -> String {
    format!(
        "authserv_id = \"{AUTHSERV}\"\nhistory = \"history.sqlite\"\nignore_hosts = []\n{extra}\n{}",
        resolver(dns)
    )
}

/// dkim-milter verifying only (every client is outside: internal_hosts names another host).
pub fn dkim_config(dns: &TestDns) -> String {
    format!(
        "authserv_id = \"{AUTHSERV}\"\nmode = \"v\"\ninternal_hosts = [\"192.0.2.1\"]\n{}",
        resolver(dns)
    )
}

/// The parts of dmarc-milter's history row for one message that these tests check.
#[derive(Debug, PartialEq)]
pub struct History {
    pub dmarc_result: String,
    pub disposition: String,
    pub spf_aligned: String,
    pub dkim_aligned: String,
    /// (domain, selector, result) per DKIM result recorded.
    pub dkim: Vec<(String, String, String)>,
}

pub fn history(path: &Path, qid: &str) -> History {
    let conn = rusqlite::Connection::open(path).expect("open history");
    let (id, dmarc_result, disposition, spf_aligned, dkim_aligned) = conn
        .query_row(
            "SELECT id, dmarc_result, disposition, spf_aligned, dkim_aligned \
             FROM messages WHERE job_id = ?1",
            [qid],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            },
        )
        .unwrap_or_else(|e| panic!("history row for {qid}: {e}"));
    let mut stmt = conn
        .prepare("SELECT domain, selector, result FROM dkim_results WHERE message_id = ?1")
        .unwrap();
    let dkim = stmt
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    History {
        dmarc_result,
        disposition,
        spf_aligned,
        dkim_aligned,
        dkim,
    }
}

/// Authentication-Results fields of `msg`, in order, unfolded.
pub fn ars(msg: &[u8]) -> Vec<String> {
    fields(msg, "Authentication-Results")
}

/// A loopback port nobody listens on.
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}
