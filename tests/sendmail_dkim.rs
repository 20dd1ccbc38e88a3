//! dkim-milter behind a real Sendmail (issue 4, DKIM half, second MTA).
//!
//! Each test starts a throwaway Sendmail 8.17 ([`testkit::sendmail`]) with our dkim-milter
//! (in-process) as its INPUT_MAIL_FILTER, sends mail over SMTP and judges the bytes Sendmail
//! delivers, like postfix_dkim.rs does for Postfix.
//!
//! Trust: `internal_hosts = ["192.0.2.1"]`, so the test client on 127.0.0.1 is an outside host
//! on the plain daemon (Name=MTA); the submission daemon is Name=MSA, which dkim-milter's
//! `mta = ["MSA"]` trusts (OpenDKIM's `MTA MSA`, the usual Sendmail set-up).

use std::time::Duration;

use testkit::daemons::{start_dkim, RunningMilter};
use testkit::dns::TestDns;
use testkit::judges::{self, require_judge};
use testkit::keys::TestKey;
use testkit::postfix::header_fields;
use testkit::sendmail::{milter_inet, milter_unix, require_sendmail, Sendmail, SendmailOptions};
use testkit::smtp::Reply;

mod mta_common;
use mta_common::*;

struct Rig {
    dir: tempfile::TempDir,
    dns: TestDns,
    _milter: RunningMilter,
    sendmail: Sendmail,
    keys: Keys,
}

#[derive(Clone, Copy, PartialEq)]
enum Socket {
    Inet,
    Unix,
}

/// Starts everything, or returns None (after a loud message) when Sendmail cannot run here.
/// Signing table as in postfix_dkim.rs: dual@example.com gets Ed25519 + RSA, other
/// example.com addresses RSA.
async fn rig(extra: &str, socket: Socket) -> Option<Rig> {
    if !require_sendmail() {
        return None;
    }
    let keys = Keys {
        rsa: TestKey::rsa(2048),
        ed: TestKey::ed25519(),
        od_rsa: TestKey::rsa(2048),
        od_ed: TestKey::ed25519(),
    };
    let dns = TestDns::start(&zone_for(&keys)).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keys.rsa.write_pem(d, "rsa.pem", true);
    keys.ed.write_pem(d, "ed.pem", false);
    std::fs::write(
        d.join("KeyTable"),
        "rsa example.com:rsa:rsa.pem\ned example.com:ed:ed.pem\n",
    )
    .unwrap();
    std::fs::write(
        d.join("SigningTable"),
        "dual@example.com ed\n*@example.com rsa\n",
    )
    .unwrap();
    let cfg = format!(
        "authserv_id = \"{AUTHSERV}\"\n\
         key_table = \"file:KeyTable\"\n\
         signing_table = \"refile:SigningTable\"\n\
         internal_hosts = [\"192.0.2.1\"]\n\
         mta = [\"{}\"]\n\
         {extra}\n\
         [resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
        testkit::sendmail::SUBMISSION_NAME,
        dns.addr()
    );
    let (milter, spec) = match socket {
        Socket::Inet => {
            let m = start_dkim(d, &cfg, "inet:0@127.0.0.1").await;
            let spec = milter_inet(m.addr);
            (m, spec)
        }
        Socket::Unix => {
            // Sendmail talks to milters as root: no permission changes needed.
            let path = d.join("dkim.sock");
            let m = start_dkim(d, &cfg, &format!("unix:{}", path.display())).await;
            (m, milter_unix(&path))
        }
    };
    let sendmail = blocking(|| Sendmail::start(SendmailOptions::with_milters([spec])))
        .expect("sendmail starts");
    Some(Rig {
        dir,
        dns,
        _milter: milter,
        sendmail,
        keys,
    })
}

impl Rig {
    fn send_inbound(&self, from: &str, msg: &[u8]) -> Reply {
        send(self.sendmail.smtp_addr(), from, msg)
    }

    fn send_submission(&self, from: &str, msg: &[u8]) -> Reply {
        send(self.sendmail.submission_addr(), from, msg)
    }

    /// Waits for exactly `n` deliveries and returns them as (queue id, message).
    fn delivered(&self, n: usize) -> Vec<(String, Vec<u8>)> {
        let got = blocking(|| self.sendmail.wait_for_deliveries(n, DELIVERY));
        assert_eq!(
            got.len(),
            n,
            "expected {n} deliveries; queue: {:?}; sendmail: {}",
            self.sendmail.queue_files(),
            self.sendmail.stderr_log()
        );
        got
    }
}

/// Outbound: mail on the MSA daemon is signed (RSA; Ed25519 + RSA), and dkimpy and Mail::DKIM
/// accept what Sendmail delivered; the same mail on the MTA daemon is not signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_msa_mail_is_signed_and_judges_accept_it() {
    if !require_judge("dkimpy") || !require_judge("mail-dkim") {
        return;
    }
    let Some(r) = rig("", Socket::Inet).await else {
        return;
    };
    let reply = r.send_submission(
        "user@example.com",
        &message("user@example.com", "sm-out-rsa"),
    );
    assert_eq!(reply.code, 250, "{reply}");
    let reply = r.send_submission(
        "dual@example.com",
        &message("dual@example.com", "sm-out-dual"),
    );
    assert_eq!(reply.code, 250, "{reply}");
    let reply = r.send_inbound(
        "user@example.com",
        &message("user@example.com", "sm-out-outside"),
    );
    assert_eq!(reply.code, 250, "{reply}");
    let got = r.delivered(3);

    let (qid, msg) = by_subject(&got, "sm-out-rsa");
    let sigs = fields(msg, "DKIM-Signature");
    assert_eq!(sigs.len(), 1, "{}", text(msg));
    assert_eq!(
        (tag(&sigs[0], "a"), tag(&sigs[0], "d"), tag(&sigs[0], "s")),
        ("rsa-sha256".into(), "example.com".into(), "rsa".into())
    );
    let names: Vec<String> = header_fields(msg).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names[..2], ["DKIM-Signature", "Received"], "{}", text(msg));
    let v = blocking(|| judges::dkimpy_verify(msg, r.dns.addr())).unwrap();
    assert_eq!(v.results, ["pass"], "dkimpy: {}", v.raw_output);
    let v = blocking(|| judges::mail_dkim_verify(msg, r.dns.addr())).unwrap();
    assert_eq!(v.results, ["pass"], "Mail::DKIM: {}", v.raw_output);
    assert_eq!(
        logged(qid),
        [format!(
            "{qid}: DKIM-Signature field added (s=rsa, d=example.com)"
        )]
    );

    let (qid, msg) = by_subject(&got, "sm-out-dual");
    let mut kinds: Vec<(String, String)> = fields(msg, "DKIM-Signature")
        .iter()
        .map(|s| (tag(s, "a"), tag(s, "s")))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("ed25519-sha256".to_owned(), "ed".to_owned()),
            ("rsa-sha256".to_owned(), "rsa".to_owned())
        ],
        "{}",
        text(msg)
    );
    let v = blocking(|| judges::dkimpy_verify(msg, r.dns.addr())).unwrap();
    assert_eq!(v.results, ["pass", "pass"], "dkimpy: {}", v.raw_output);
    let mut lines = logged(qid);
    lines.sort();
    assert_eq!(
        lines,
        [
            format!("{qid}: DKIM-Signature field added (s=ed, d=example.com)"),
            format!("{qid}: DKIM-Signature field added (s=rsa, d=example.com)"),
        ]
    );

    let (qid, msg) = by_subject(&got, "sm-out-outside");
    assert!(fields(msg, "DKIM-Signature").is_empty(), "{}", text(msg));
    let first = &header_fields(msg)[0];
    assert_eq!(
        (first.0.as_str(), collapse(&first.1)),
        ("Authentication-Results", format!("{AUTHSERV}; dkim=none"))
    );
    assert_eq!(
        logged(qid),
        [format!(
            "{qid}: external host {AUTHSERV} [127.0.0.1] attempted to send as example.com"
        )]
    );
}

/// Inbound: OpenDKIM-signed mail from an outside client gets our dkim=pass A-R on top; a
/// tampered copy gets dkim=fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_inbound_pass_and_fail() {
    if !require_judge("opendkim") || !require_judge("miltertest") || !require_judge("dkimpy") {
        return;
    }
    let Some(r) = rig("", Socket::Inet).await else {
        return;
    };
    let signed = blocking(|| {
        opendkim_signed(
            r.dir.path(),
            &r.keys.od_rsa,
            "od",
            &message("alice@sender.example", "sm-in"),
        )
    });
    let reply = r.send_inbound("alice@sender.example", &signed);
    assert_eq!(reply.code, 250, "{reply}");
    let (qid, msg) = r.delivered(1).remove(0);
    let b8 = header_b(&fields(&msg, "DKIM-Signature")[0]);
    let hdrs = header_fields(&msg);
    assert_eq!(
        (hdrs[0].0.as_str(), collapse(&hdrs[0].1)),
        (
            "Authentication-Results",
            format!(
                "{AUTHSERV}; dkim=pass (2048-bit key) header.d=sender.example \
                 header.i=@sender.example header.a=rsa-sha256 header.s=od header.b={b8}"
            )
        ),
        "{}",
        text(&msg)
    );
    assert_eq!(hdrs[1].0, "Received", "{}", text(&msg));
    assert!(
        hdrs[1].1.contains(&format!("with ESMTP id {qid}")),
        "{}",
        hdrs[1].1
    );
    assert_eq!(
        logged(&qid),
        [format!("{qid}: DKIM verification successful")]
    );
    let v = blocking(|| judges::dkimpy_verify(&msg, r.dns.addr())).unwrap();
    assert_eq!(v.results, ["pass"], "dkimpy: {}", v.raw_output);
    std::fs::remove_file(r.sendmail.dir().join("out").join(format!("{qid}.eml"))).unwrap();

    let tampered = text(&signed).replace("Hello Bob", "Hello Eve").into_bytes();
    let reply = r.send_inbound("alice@sender.example", &tampered);
    assert_eq!(reply.code, 250, "{reply}");
    let (qid, msg) = r.delivered(1).remove(0);
    let ar = &fields(&msg, "Authentication-Results")[0];
    assert!(
        ar.starts_with(&format!(
            "{AUTHSERV}; dkim=fail reason=\"body hash did not verify\""
        )),
        "{ar}"
    );
    assert_eq!(
        logged(&qid),
        [format!(
            "{qid}: bad signature data (s=od, d=sender.example): body hash did not verify"
        )]
    );
}

/// With `bad_signature = "reject"` the client sees Sendmail pass on our 550 5.7.0 and nothing
/// is delivered or queued; a good message right after is delivered alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_reject_action_refuses_tampered_mail() {
    if !require_judge("opendkim") || !require_judge("miltertest") {
        return;
    }
    let Some(r) = rig("[actions]\nbad_signature = \"reject\"", Socket::Inet).await else {
        return;
    };
    let signed = blocking(|| {
        opendkim_signed(
            r.dir.path(),
            &r.keys.od_rsa,
            "od",
            &message("alice@sender.example", "sm-reject"),
        )
    });
    let tampered = text(&signed).replace("Hello Bob", "Hello Eve").into_bytes();
    let reply = r.send_inbound("alice@sender.example", &tampered);
    assert_eq!(
        reply,
        Reply {
            code: 550,
            text: "5.7.0 bad DKIM signature data".into()
        }
    );
    let reply = r.send_inbound("alice@sender.example", &signed);
    assert_eq!(reply.code, 250, "{reply}");
    let got = r.delivered(1);
    assert!(
        fields(&got[0].1, "Authentication-Results")[0].contains("dkim=pass"),
        "{}",
        text(&got[0].1)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(r.sendmail.deliveries().len(), 1);
    assert!(
        r.sendmail.queue_files().is_empty(),
        "{:?}",
        r.sendmail.queue_files()
    );
}

/// Forged A-R headers claiming our authserv-id are all removed, everything else is kept in
/// order (Sendmail's header indexes differ from Postfix's: this checks our deletions land on
/// the right fields there too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_forged_authentication_results_are_removed() {
    let Some(r) = rig("", Socket::Inet).await else {
        return;
    };
    let upper = AUTHSERV.to_uppercase();
    let raw = format!(
        "Authentication-Results: {AUTHSERV}; dkim=pass header.d=forged1.example\r\n\
         Authentication-Results: other.example; spf=pass smtp.mailfrom=keep1.example\r\n\
         X-Filler: one\r\n\
         Authentication-Results: {AUTHSERV};\r\n\tdkim=pass header.d=forged2.example\r\n\
         Authentication-Results: other.example; dkim=pass header.d=keep3.example\r\n\
         Authentication-Results: {upper}; dkim=pass header.d=forged3.example\r\n\
         X-Filler: two\r\n\
         {}",
        text(&message("alice@sender.example", "sm-forged"))
    );
    let reply = r.send_inbound("alice@sender.example", raw.as_bytes());
    assert_eq!(reply.code, 250, "{reply}");
    let (qid, msg) = r.delivered(1).remove(0);
    let got: Vec<(String, String)> = header_fields(&msg)
        .into_iter()
        .map(|(n, v)| (n, collapse(&v)))
        .filter(|(n, _)| n != "Received")
        .collect();
    let expected: Vec<(String, String)> = [
        ("Authentication-Results", format!("{AUTHSERV}; dkim=none")),
        (
            "Authentication-Results",
            "other.example; spf=pass smtp.mailfrom=keep1.example".to_owned(),
        ),
        ("X-Filler", "one".to_owned()),
        (
            "Authentication-Results",
            "other.example; dkim=pass header.d=keep3.example".to_owned(),
        ),
        ("X-Filler", "two".to_owned()),
        ("From", "Someone <alice@sender.example>".to_owned()),
        ("To", "Bob <bob@test.example>".to_owned()),
        ("Subject", "sm-forged".to_owned()),
        ("Date", "Wed, 25 Nov 2026 12:00:00 +0000".to_owned()),
        ("Message-ID", "<sm-forged@test.example>".to_owned()),
        ("MIME-Version", "1.0".to_owned()),
        ("Content-Type", "text/plain; charset=us-ascii".to_owned()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect();
    assert_eq!(got, expected, "{}", text(&msg));
    assert_eq!(
        logged(&qid),
        [format!(
            "{qid}: removed 3 Authentication-Results header(s) claiming to be from {AUTHSERV}"
        )]
    );
}

/// The milter on a unix socket signs on the MSA daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_unix_socket_milter_signs() {
    if !require_judge("dkimpy") {
        return;
    }
    let Some(r) = rig("", Socket::Unix).await else {
        return;
    };
    let reply = r.send_submission("dual@example.com", &message("dual@example.com", "sm-unix"));
    assert_eq!(reply.code, 250, "{reply}");
    let (_, signed) = r.delivered(1).remove(0);
    assert_eq!(
        fields(&signed, "DKIM-Signature").len(),
        2,
        "{}",
        text(&signed)
    );
    let v = blocking(|| judges::dkimpy_verify(&signed, r.dns.addr())).unwrap();
    assert_eq!(v.results, ["pass", "pass"], "dkimpy: {}", v.raw_output);
}
