//! dmarc-milter behind a real Postfix, alone and chained after dkim-milter (issue 4, scenarios
//! 5-7).
//!
//! Each test starts a throwaway Postfix ([`testkit::postfix`]) whose `smtpd_milters` are our
//! daemons (running in-process), sends mail over SMTP and judges the SMTP reply, the bytes
//! Postfix delivers, our log lines and dmarc-milter's history rows. Everything our daemons
//! resolve comes from the test DNS server.
//!
//! Trust: Postfix connects to the milters from the test client's address, 127.0.0.1, which is in
//! dmarc-milter's default `ignore_hosts`; every test sets `ignore_hosts = []` so the mail is
//! evaluated. dkim-milter gets `internal_hosts = ["192.0.2.1"]` where the mail must be verified
//! (inbound) rather than signed.

use std::path::Path;

use testkit::daemons::{start_dkim, start_dmarc, RunningMilter};
use testkit::dns::TestDns;
use testkit::postfix::{
    header_fields, milter_inet, milter_unix, open_socket_for_postfix, require_postfix, Postfix,
    PostfixOptions,
};
use testkit::smtp::Reply;

mod dmarc_common;
mod mta_common;
use dmarc_common::*;
use mta_common::*;

type DmarcMilter = RunningMilter<dmarc_policy::runtime::Runtime>;

#[derive(Clone, Copy, PartialEq)]
enum Socket {
    Inet,
    Unix,
}

async fn start_dmarc_on(dir: &Path, cfg: &str, socket: Socket) -> (DmarcMilter, String) {
    match socket {
        Socket::Inet => {
            let m = start_dmarc(dir, cfg, "inet:0@127.0.0.1").await;
            let spec = milter_inet(m.addr);
            (m, spec)
        }
        Socket::Unix => {
            let path = dir.join("dmarc.sock");
            let m = start_dmarc(dir, cfg, &format!("unix:{}", path.display())).await;
            open_socket_for_postfix(&path).expect("open the socket to postfix");
            (m, milter_unix(&path))
        }
    }
}

/// Postfix with dmarc-milter (after dkim-milter when there is one), the DNS server and keys.
struct Rig {
    dir: tempfile::TempDir,
    dns: TestDns,
    _dkim: Option<RunningMilter>,
    _dmarc: DmarcMilter,
    postfix: Postfix,
    keys: DmarcKeys,
}

/// dmarc-milter alone (`dmarc_extra` added to its configuration).
async fn dmarc_rig(dmarc_extra: &str, socket: Socket) -> Option<Rig> {
    if !require_postfix() {
        return None;
    }
    let keys = new_keys();
    let dns = TestDns::start(&zone(&keys)).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let (dmarc, spec) = start_dmarc_on(dir.path(), &dmarc_config(&dns, dmarc_extra), socket).await;
    let postfix =
        blocking(|| Postfix::start(PostfixOptions::with_milters([spec]))).expect("postfix starts");
    Some(Rig {
        dir,
        dns,
        _dkim: None,
        _dmarc: dmarc,
        postfix,
        keys,
    })
}

/// `smtpd_milters = dkim, dmarc` with the given configurations (TOML text; the resolver is
/// appended by the caller). `prepare` may write files (keys) into the directory first.
async fn chain_rig(
    keys: DmarcKeys,
    dkim_cfg: impl FnOnce(&TestDns) -> String,
    dmarc_cfg: impl FnOnce(&TestDns) -> String,
    prepare: impl FnOnce(&Path, &DmarcKeys),
) -> Option<Rig> {
    if !require_postfix() {
        return None;
    }
    let dns = TestDns::start(&zone(&keys)).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), &keys);
    let dkim = start_dkim(dir.path(), &dkim_cfg(&dns), "inet:0@127.0.0.1").await;
    let (dmarc, dmarc_spec) = start_dmarc_on(dir.path(), &dmarc_cfg(&dns), Socket::Inet).await;
    let mut opts = PostfixOptions::with_milters([milter_inet(dkim.addr), dmarc_spec]);
    opts.originating_cleanup = true;
    let postfix = blocking(|| Postfix::start(opts)).expect("postfix starts");
    Some(Rig {
        dir,
        dns,
        _dkim: Some(dkim),
        _dmarc: dmarc,
        postfix,
        keys,
    })
}

impl Rig {
    fn send_inbound(&self, from: &str, msg: &[u8]) -> Reply {
        send(self.postfix.smtp_addr(), from, msg)
    }

    fn send_submission(&self, from: &str, msg: &[u8]) -> Reply {
        send(self.postfix.submission_addr(), from, msg)
    }

    /// The delivered message with queue id `qid` (waits for it).
    fn delivered(&self, qid: &str) -> Vec<u8> {
        let deadline = std::time::Instant::now() + DELIVERY;
        loop {
            let got = self
                .postfix
                .deliveries()
                .into_iter()
                .find(|(q, _)| q == qid);
            if let Some((_, m)) = got {
                return m;
            }
            if std::time::Instant::now() > deadline {
                panic!("{qid} not delivered; Postfix log:\n{}", self.postfix.log());
            }
            blocking(|| std::thread::sleep(std::time::Duration::from_millis(25)));
        }
    }

    /// dmarc-milter's history row for `qid`, from `file` in the test directory.
    fn history_in(&self, file: &str, qid: &str) -> History {
        history(&self.dir.path().join(file), qid)
    }

    fn history(&self, qid: &str) -> History {
        self.history_in("history.sqlite", qid)
    }
}

/// The queue id Postfix logged for a message a milter rejected at END-OF-MESSAGE, with the line.
fn rejected_qid(postfix: &Postfix) -> (String, String) {
    let line = postfix
        .wait_for_log_line("milter-reject: END-OF-MESSAGE", DELIVERY)
        .unwrap_or_else(|| panic!("no milter-reject in the Postfix log:\n{}", postfix.log()));
    let qid = line
        .split(": milter-reject")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .unwrap()
        .to_owned();
    (qid, line)
}

fn queued(reply: &Reply) -> String {
    assert_eq!(reply.code, 250, "{reply}");
    reply.queue_id().expect("queue id").to_owned()
}

// ---------------------------------------------------------------------------------------------
// Scenario 5: DMARC through Postfix.
// ---------------------------------------------------------------------------------------------

/// Aligned mail (SPF passes for 127.0.0.1, aligned with From) is delivered with `dmarc=pass`;
/// unaligned mail from a p=reject domain is delivered with `dmarc=fail` when `reject_failures`
/// is off. dmarc-milter's A-R is the first header, above Postfix's Received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aligned_passes_and_unaligned_fails_without_rejection() {
    let Some(r) = dmarc_rig("", Socket::Inet).await else {
        return;
    };
    let reply = r.send_inbound(
        "bounce@aligned.example",
        &message("alice@aligned.example", "pfd-aligned"),
    );
    let qid = queued(&reply);
    let msg = r.delivered(&qid);
    let hdrs = header_fields(&msg);
    assert_eq!(
        (hdrs[0].0.as_str(), collapse(&hdrs[0].1)),
        (
            "Authentication-Results",
            format!(
                "{AUTHSERV}; spf=pass smtp.mailfrom=aligned.example; \
                 dmarc=pass (p=reject dis=none) header.from=aligned.example"
            )
        ),
        "{}",
        text(&msg)
    );
    assert_eq!(hdrs[1].0, "Received", "{}", text(&msg));
    assert_eq!(ars(&msg).len(), 1, "{}", text(&msg));
    assert_eq!(
        logged(&qid),
        [
            format!("{qid}: SPF(mailfrom): aligned.example pass"),
            format!("{qid}: aligned.example pass"),
        ]
    );
    let h = r.history(&qid);
    assert_eq!(
        (h.dmarc_result.as_str(), h.disposition.as_str()),
        ("pass", "none")
    );

    // Unaligned: SPF passes, but for other.example; From is reject.example (p=reject).
    let reply = r.send_inbound(
        "bounce@other.example",
        &message("alice@reject.example", "pfd-unaligned"),
    );
    let qid = queued(&reply);
    let msg = r.delivered(&qid);
    assert_eq!(
        ars(&msg),
        [format!(
            "{AUTHSERV}; spf=pass smtp.mailfrom=other.example; \
             dmarc=fail (p=reject dis=none) header.from=reject.example"
        )],
        "{}",
        text(&msg)
    );
    assert_eq!(
        logged(&qid),
        [
            format!("{qid}: SPF(mailfrom): other.example pass"),
            format!("{qid}: reject.example fail"),
        ]
    );
    let h = r.history(&qid);
    assert_eq!(
        (h.dmarc_result.as_str(), h.disposition.as_str()),
        ("fail", "none")
    );
}

/// With `reject_failures = true` (dmarc-milter on a unix socket): unaligned mail from a p=reject
/// domain gets `550 5.7.1 rejected by DMARC policy for reject.example` at the end of DATA and is
/// not delivered; aligned mail sent right after is delivered with `dmarc=pass`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaligned_mail_is_rejected_with_reject_failures() {
    let Some(r) = dmarc_rig("reject_failures = true", Socket::Unix).await else {
        return;
    };
    let reply = r.send_inbound(
        "bounce@other.example",
        &message("alice@reject.example", "pfd-reject"),
    );
    assert_eq!(
        reply,
        Reply {
            code: 550,
            text: "5.7.1 rejected by DMARC policy for reject.example".into()
        }
    );
    let (qid, line) = rejected_qid(&r.postfix);
    assert!(
        line.contains(
            "5.7.1 rejected by DMARC policy for reject.example; \
             from=<bounce@other.example> to=<bob@test.example>"
        ),
        "{line}"
    );
    assert_eq!(
        logged(&qid),
        [
            format!("{qid}: SPF(mailfrom): other.example pass"),
            format!("{qid}: reject.example fail"),
        ]
    );
    let h = r.history(&qid);
    assert_eq!(
        (h.dmarc_result.as_str(), h.disposition.as_str()),
        ("fail", "reject")
    );

    let reply = r.send_inbound(
        "bounce@aligned.example",
        &message("alice@aligned.example", "pfd-after-reject"),
    );
    let qid = queued(&reply);
    let msg = r.delivered(&qid);
    assert!(
        ars(&msg)[0].ends_with("dmarc=pass (p=reject dis=none) header.from=aligned.example"),
        "{}",
        text(&msg)
    );
    // Give a wrongly queued rejected message time to show up: only the good one is delivered.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(r.postfix.deliveries().len(), 1, "{}", r.postfix.log());
}

// ---------------------------------------------------------------------------------------------
// Scenario 6: dkim-milter and dmarc-milter chained.
// ---------------------------------------------------------------------------------------------

/// `smtpd_milters = dkim, dmarc` with `trusted_authserv_ids = [dkim-milter's id]`: DMARC passes
/// on dkim-milter's `dkim=pass` (SPF fails for signed.example), the key is looked up once (by
/// dkim-milter), dmarc-milter does not repeat the DKIM result in its A-R, and its history row
/// carries the upstream result. Control: the same chain with `trusted_authserv_ids = []` looks
/// the key up twice, because dmarc-milter then verifies DKIM itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_dmarc_uses_dkim_milters_result() {
    for trusted in [true, false] {
        let extra = if trusted {
            format!("trusted_authserv_ids = [\"{AUTHSERV}\"]")
        } else {
            "trusted_authserv_ids = []".to_owned()
        };
        let Some(r) = chain_rig(
            new_keys(),
            dkim_config,
            |dns| dmarc_config(dns, &extra),
            |_, _| {},
        )
        .await
        else {
            return;
        };
        let subject = format!("pfd-chain-{trusted}");
        let signed = sign(&message("alice@signed.example", &subject), &r.keys.signed);
        let reply = r.send_inbound("alice@signed.example", &signed);
        let qid = queued(&reply);
        let msg = r.delivered(&qid);
        let b8 = header_b(&fields(&msg, "DKIM-Signature")[0]);
        let dkim_ar = format!(
            "{AUTHSERV}; dkim=pass (256-bit key) header.d=signed.example \
             header.i=@signed.example header.a=ed25519-sha256 header.s={SELECTOR} header.b={b8}"
        );
        let (dmarc_ar, keys_looked_up) = if trusted {
            (
                format!(
                    "{AUTHSERV}; spf=fail smtp.mailfrom=signed.example; \
                     dmarc=pass (p=reject dis=none) header.from=signed.example"
                ),
                1,
            )
        } else {
            (
                format!(
                    "{AUTHSERV}; spf=fail smtp.mailfrom=signed.example; \
                     dkim=pass header.d=signed.example header.s={SELECTOR}; \
                     dmarc=pass (p=reject dis=none) header.from=signed.example"
                ),
                2,
            )
        };
        let names: Vec<String> = header_fields(&msg).into_iter().map(|(n, _)| n).collect();
        if trusted {
            // Both milters insert at index 0: dmarc-milter (second) ends up on top, and the
            // header dkim-milter added (with the id dmarc-milter trusts) is kept.
            assert_eq!(
                names[..3],
                [
                    "Authentication-Results",
                    "Authentication-Results",
                    "Received"
                ],
                "{}",
                text(&msg)
            );
            assert_eq!(ars(&msg), [dmarc_ar, dkim_ar], "{}", text(&msg));
        } else {
            // Not trusted and carrying dmarc-milter's own authserv-id, dkim-milter's header is a
            // forgery to dmarc-milter and is removed (why a chain needs trusted_authserv_ids);
            // DMARC still passes on dmarc-milter's own DKIM check.
            assert_eq!(
                names[..2],
                ["Authentication-Results", "Received"],
                "{}",
                text(&msg)
            );
            assert_eq!(ars(&msg), [dmarc_ar], "{}", text(&msg));
            assert!(
                logged(&qid).contains(&format!(
                    "{qid}: removed 1 Authentication-Results header(s) claiming to be from {AUTHSERV}"
                )),
                "{:?}",
                logged(&qid)
            );
        }
        assert_eq!(
            r.dns.queries_for(KEY_NAME),
            keys_looked_up,
            "trusted = {trusted}"
        );
        let lines = logged(&qid);
        assert!(
            lines.contains(&format!("{qid}: DKIM verification successful")),
            "{lines:?}"
        );
        assert!(
            lines.contains(&format!("{qid}: signed.example pass")),
            "{lines:?}"
        );
        let h = r.history(&qid);
        assert_eq!(
            h,
            History {
                dmarc_result: "pass".into(),
                disposition: "none".into(),
                spf_aligned: "fail".into(),
                dkim_aligned: "pass".into(),
                dkim: vec![("signed.example".into(), SELECTOR.into(), "pass".into())],
            },
            "trusted = {trusted}"
        );
    }
}

/// The shipped etc/dkim-milter.toml and etc/dmarc-milter.toml, chained in that order, changed
/// only where a test must (socket, resolver, dmarc-milter's `ignore_hosts = []`; the history
/// path is relative and lands in the test directory; the example key tables are copied with a
/// test key in place of the generated one): mail submitted from user@example.com is signed by
/// dkim-milter (d=example.com, s=mail), and dmarc-milter verifies that signature and delivers
/// the message with `dmarc=pass` (SPF fails for example.com: the pass is DKIM's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_example_configurations_pass_signed_aligned_mail() {
    let etc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc");
    let dkim_shipped = std::fs::read_to_string(etc.join("dkim-milter.toml")).unwrap();
    let dmarc_shipped = std::fs::read_to_string(etc.join("dmarc-milter.toml")).unwrap();
    let with_resolver = |text: &str, dns: &TestDns| {
        assert_eq!(text.matches("\nnameservers = []\n").count(), 1);
        text.replace(
            "\nnameservers = []\n",
            &format!("\nnameservers = [\"{}\"]\n", dns.addr()),
        )
    };
    let Some(r) = chain_rig(
        new_keys(),
        |dns| with_resolver(&dkim_shipped, dns),
        |dns| format!("ignore_hosts = []\n{}", with_resolver(&dmarc_shipped, dns)),
        |dir, keys| {
            let d = dir.join("keys");
            std::fs::create_dir(&d).unwrap();
            for f in ["KeyTable", "SigningTable"] {
                std::fs::copy(etc.join("keys").join(f), d.join(f)).unwrap();
            }
            keys.shipped
                .write_pem(&d, "example.com.mail.private", false);
        },
    )
    .await
    else {
        return;
    };
    let reply = r.send_submission(
        "user@example.com",
        &message("user@example.com", "pfd-shipped"),
    );
    let qid = queued(&reply);
    let msg = r.delivered(&qid);
    let sigs = fields(&msg, "DKIM-Signature");
    assert_eq!(sigs.len(), 1, "{}", text(&msg));
    assert_eq!(
        (tag(&sigs[0], "d"), tag(&sigs[0], "s")),
        ("example.com".into(), "mail".into())
    );
    // Neither config sets authserv_id: both use Postfix's `j` macro ($myhostname).
    assert_eq!(
        ars(&msg),
        [format!(
            "{AUTHSERV}; spf=fail smtp.mailfrom=example.com; \
             dkim=pass header.d=example.com header.s=mail; \
             dmarc=pass (p=reject dis=none) header.from=example.com"
        )],
        "{}",
        text(&msg)
    );
    let lines = logged(&qid);
    for want in [
        format!("{qid}: DKIM-Signature field added (s=mail, d=example.com)"),
        format!("{qid}: example.com pass"),
    ] {
        assert!(lines.contains(&want), "{want} not in {lines:?}");
    }
    // The shipped `history = "dmarc-history.sqlite"`, relative to the configuration file.
    let h = r.history_in("dmarc-history.sqlite", &qid);
    assert_eq!(
        (h.dmarc_result.as_str(), h.dkim_aligned.as_str(), h.dkim),
        (
            "pass",
            "pass",
            vec![("example.com".into(), "mail".into(), "pass".into())]
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Scenario 7: a milter that is down.
// ---------------------------------------------------------------------------------------------

/// `milter_default_action = tempfail` with the milter down (a closed inet port, a missing unix
/// socket): Postfix answers `451 4.7.1 Service unavailable - try again later` and delivers
/// nothing, so the sender retries instead of mail slipping through unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milter_down_tempfails() {
    if !require_postfix() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for spec in [
        milter_inet(closed_port()),
        milter_unix(&dir.path().join("absent.sock")),
    ] {
        let opts =
            PostfixOptions::with_milters([spec.clone()]).set("milter_default_action", "tempfail");
        let postfix = blocking(|| Postfix::start(opts)).expect("postfix starts");
        for addr in [postfix.smtp_addr(), postfix.submission_addr()] {
            let reply = send(
                addr,
                "alice@aligned.example",
                &message("alice@aligned.example", "pfd-down"),
            );
            assert_eq!(
                reply,
                Reply {
                    code: 451,
                    text: "4.7.1 Service unavailable - try again later".into()
                },
                "{spec}:\n{}",
                postfix.log()
            );
        }
        assert!(
            postfix
                .wait_for_log_line(&format!("connect to Milter service {spec}"), DELIVERY)
                .is_some(),
            "{}",
            postfix.log()
        );
        let log = postfix.log();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(postfix.deliveries().is_empty(), "{log}");
    }
}
