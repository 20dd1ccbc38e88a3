//! dmarc-milter behind real MTAs, alone and chained after dkim-milter (issue 4, scenarios 5-7):
//! every scenario runs against Postfix and Sendmail ([`testkit::mta`]; the tests are
//! `postfix::NAME` and `sendmail::NAME`).
//!
//! Each test starts a throwaway MTA whose milters are our daemons (running in-process), sends
//! mail over SMTP and judges the SMTP reply, the bytes the MTA delivers, our log lines and
//! dmarc-milter's history rows. Everything our daemons resolve comes from the test DNS server.
//!
//! Trust: the MTAs pass the test client's address, 127.0.0.1, which is in dmarc-milter's
//! default `ignore_hosts`; every test sets `ignore_hosts = []` so the mail is evaluated.
//! dkim-milter gets `internal_hosts = ["192.0.2.1"]` where the mail must be verified (inbound)
//! rather than signed.
//!
//! Queue ids come from the SMTP reply for accepted mail and, for rejected mail, from
//! dmarc-milter's history row (checked against the MTA's log where the harness can read one).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;

use testkit::daemons::RunningMilter;
use testkit::dns::{TestDns, Zone};
use testkit::keys::TestKey;
use testkit::mta::{header_fields, MtaKind, MtaOptions};
use testkit::smtp::Reply;

#[macro_use]
mod mta_common;
use mta_common::*;

mta_tests!(
    aligned_passes_and_unaligned_fails_without_rejection,
    unaligned_mail_is_rejected_with_reject_failures,
    chained_dmarc_uses_dkim_milters_result,
    shipped_example_configurations_pass_signed_aligned_mail,
    milter_down_tempfails,
);

type DmarcMilter = RunningMilter<dmarc_policy::runtime::Runtime>;

/// The selector of the test's own Ed25519 key for signed.example.
const SELECTOR: &str = "sel";

/// The name dkim-milter (and nothing else, when DKIM is verified once) looks up.
const KEY_NAME: &str = "sel._domainkey.signed.example";

/// DmarcKeys of one test: `signed` for signed.example (signed in the test), `shipped` for the
/// example.com key the shipped etc/keys tables name (selector mail).
struct DmarcKeys {
    pub signed: TestKey,
    pub shipped: TestKey,
}

fn new_keys() -> DmarcKeys {
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
fn zone(k: &DmarcKeys) -> Zone {
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
fn sign(raw: &[u8], key: &TestKey) -> Vec<u8> {
    key.sign_ed25519(raw, "signed.example", SELECTOR)
}

fn resolver(dns: &TestDns) -> String {
    format!(
        "[resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
        dns.addr()
    )
}

/// dmarc-milter's configuration for these tests; `extra` goes to the top level.
fn dmarc_config(dns: &TestDns, extra: &str) -> String {
    format!(
        "authserv_id = \"{AUTHSERV}\"\nhistory = \"history.sqlite\"\nignore_hosts = []\n{extra}\n{}",
        resolver(dns)
    )
}

/// dkim-milter verifying only (every client is outside: internal_hosts names another host).
fn dkim_config(dns: &TestDns) -> String {
    format!(
        "authserv_id = \"{AUTHSERV}\"\nmode = \"v\"\ninternal_hosts = [\"192.0.2.1\"]\n{}",
        resolver(dns)
    )
}

/// The parts of dmarc-milter's history row for one message that these tests check.
#[derive(Debug, PartialEq)]
struct History {
    pub dmarc_result: String,
    pub disposition: String,
    pub spf_aligned: String,
    pub dkim_aligned: String,
    /// (domain, selector, result) per DKIM result recorded.
    pub dkim: Vec<(String, String, String)>,
}

fn history(path: &Path, qid: &str) -> History {
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
fn ars(msg: &[u8]) -> Vec<String> {
    fields(msg, "Authentication-Results")
}

/// A loopback port nobody listens on.
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// dmarc-milter's history row for `qid`, from `file` in the rig's directory.
fn history_in<K>(r: &Rig<K>, file: &str, qid: &str) -> History {
    history(&r.dir.path().join(file), qid)
}

/// (dmarc_result, disposition) of dmarc-milter's history row for `qid` (history.sqlite).
fn outcome<K>(r: &Rig<K>, qid: &str) -> (String, String) {
    let h = history_in(r, "history.sqlite", qid);
    (h.dmarc_result, h.disposition)
}

/// The queue ids of the history rows (history.sqlite) with this disposition, in insertion
/// order.
fn jobs_with_disposition<K>(r: &Rig<K>, disposition: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(r.dir.path().join("history.sqlite")).expect("history");
    let mut stmt = conn
        .prepare("SELECT job_id FROM messages WHERE disposition = ?1 ORDER BY id")
        .unwrap();
    stmt.query_map([disposition], |r| r.get(0))
        .unwrap()
        .collect::<Result<Vec<String>, _>>()
        .unwrap()
}

/// dmarc-milter alone (`dmarc_extra` added to its configuration), or None (after a loud
/// message) when the MTA cannot run here.
async fn dmarc_rig(kind: MtaKind, dmarc_extra: &str, socket: Socket) -> Option<Rig<DmarcKeys>> {
    if !kind.require() {
        return None;
    }
    let keys = new_keys();
    let dns = TestDns::start(&zone(&keys)).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dmarc_config(&dns, dmarc_extra);
    let (dmarc, spec): (DmarcMilter, _) =
        start_milter(kind, dir.path(), &cfg, socket, "dmarc").await;
    let mta = start_mta(kind, vec![spec], &MtaOptions::default());
    Some(Rig {
        kind,
        mta,
        milters: vec![Box::new(dmarc)],
        dns,
        keys,
        dir,
    })
}

/// dkim-milter then dmarc-milter, both on TCP, with the given configurations (TOML text).
/// `prepare` may write files (keys) into the directory first. On Postfix every stage of a
/// submission says ORIGINATING (`originating_cleanup`), as in mta_dkim.rs.
async fn chain_rig(
    kind: MtaKind,
    keys: DmarcKeys,
    dkim_cfg: impl FnOnce(&TestDns) -> String,
    dmarc_cfg: impl FnOnce(&TestDns) -> String,
    prepare: impl FnOnce(&Path, &DmarcKeys),
) -> Option<Rig<DmarcKeys>> {
    if !kind.require() {
        return None;
    }
    let dns = TestDns::start(&zone(&keys)).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path(), &keys);
    let (dkim, dkim_spec): (RunningMilter, _) =
        start_milter(kind, dir.path(), &dkim_cfg(&dns), Socket::Inet, "dkim").await;
    let (dmarc, dmarc_spec): (DmarcMilter, _) =
        start_milter(kind, dir.path(), &dmarc_cfg(&dns), Socket::Inet, "dmarc").await;
    let opts = MtaOptions {
        originating_cleanup: true,
    };
    let mta = start_mta(kind, vec![dkim_spec, dmarc_spec], &opts);
    Some(Rig {
        kind,
        mta,
        milters: vec![Box::new(dkim), Box::new(dmarc)],
        dns,
        keys,
        dir,
    })
}

/// What dmarc-milter logs for unaligned mail from reject.example (SPF passes for
/// other.example).
fn unaligned_logged(qid: &str) -> [String; 2] {
    [
        format!("{qid}: SPF(mailfrom): other.example pass"),
        format!("{qid}: reject.example fail"),
    ]
}

// ---------------------------------------------------------------------------------------------
// Scenario 5: DMARC through an MTA.
// ---------------------------------------------------------------------------------------------

/// Aligned mail (SPF passes for 127.0.0.1, aligned with From) is delivered with `dmarc=pass`;
/// unaligned mail from a p=reject domain is delivered with `dmarc=fail` when `reject_failures`
/// is off. dmarc-milter's A-R is the first header, above the MTA's Received.
async fn aligned_passes_and_unaligned_fails_without_rejection(kind: MtaKind) {
    let Some(r) = dmarc_rig(kind, "", Socket::Inet).await else {
        return;
    };
    let reply = r.send_inbound(
        "bounce@aligned.example",
        &message("alice@aligned.example", "aligned"),
    );
    let qid = queued(&reply);
    let msg = r.delivered_id(&qid);
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
    let received = own_received(&msg, 1);
    assert!(
        received.starts_with(&r.mta.received_start(HELO, &qid)),
        "{received}"
    );
    assert_eq!(ars(&msg).len(), 1, "{}", text(&msg));
    assert_eq!(
        logged(&qid),
        [
            format!("{qid}: SPF(mailfrom): aligned.example pass"),
            format!("{qid}: aligned.example pass"),
        ]
    );
    assert_eq!(outcome(&r, &qid), ("pass".into(), "none".into()));

    // Unaligned: SPF passes, but for other.example; From is reject.example (p=reject).
    let reply = r.send_inbound(
        "bounce@other.example",
        &message("alice@reject.example", "unaligned"),
    );
    let qid = queued(&reply);
    let msg = r.delivered_id(&qid);
    assert_eq!(
        ars(&msg),
        [format!(
            "{AUTHSERV}; spf=pass smtp.mailfrom=other.example; \
             dmarc=fail (p=reject dis=none) header.from=reject.example"
        )],
        "{}",
        text(&msg)
    );
    assert_eq!(logged(&qid), unaligned_logged(&qid));
    assert_eq!(outcome(&r, &qid), ("fail".into(), "none".into()));
}

/// With `reject_failures = true` (dmarc-milter on a unix socket): unaligned mail from a p=reject
/// domain gets `550 5.7.1 rejected by DMARC policy for reject.example` at the end of DATA and is
/// neither delivered nor queued; aligned mail sent right after is delivered with `dmarc=pass`.
async fn unaligned_mail_is_rejected_with_reject_failures(kind: MtaKind) {
    let Some(r) = dmarc_rig(kind, "reject_failures = true", Socket::Unix).await else {
        return;
    };
    let reply = r.send_inbound(
        "bounce@other.example",
        &message("alice@reject.example", "reject"),
    );
    assert_eq!(
        reply,
        Reply {
            code: 550,
            text: "5.7.1 rejected by DMARC policy for reject.example".into()
        }
    );
    let rejected = jobs_with_disposition(&r, "reject");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let qid = &rejected[0];
    // Where the MTA's log is readable (not Sendmail's: syslog only), it names the same queue id
    // and the refusal as the client saw it.
    if let Some(rejection) = blocking(|| r.mta.rejection(DELIVERY)) {
        assert!(
            rejection.line.contains(
                "5.7.1 rejected by DMARC policy for reject.example; \
                 from=<bounce@other.example> to=<bob@test.example>"
            ),
            "{}",
            rejection.line
        );
        assert_eq!(&rejection.qid, qid, "{}", rejection.line);
    }
    assert_eq!(logged(qid), unaligned_logged(qid));
    assert_eq!(outcome(&r, qid), ("fail".into(), "reject".into()));

    let reply = r.send_inbound(
        "bounce@aligned.example",
        &message("alice@aligned.example", "after-reject"),
    );
    let qid = queued(&reply);
    let msg = r.delivered_id(&qid);
    assert!(
        ars(&msg)[0].ends_with("dmarc=pass (p=reject dis=none) header.from=aligned.example"),
        "{}",
        text(&msg)
    );
    r.assert_only_delivered(1);
}

// ---------------------------------------------------------------------------------------------
// Scenario 6: dkim-milter and dmarc-milter chained.
// ---------------------------------------------------------------------------------------------

/// dkim-milter then dmarc-milter with `trusted_authserv_ids = [dkim-milter's id]`: the MTA
/// shows dmarc-milter the A-R header dkim-milter added, so DMARC passes on dkim-milter's
/// `dkim=pass` (SPF fails for signed.example), the key is looked up once (by dkim-milter),
/// dmarc-milter does not repeat the DKIM result in its A-R, and its history row carries the
/// upstream result. Control: the same chain with `trusted_authserv_ids = []` looks the key up
/// twice, because dmarc-milter then verifies DKIM itself.
async fn chained_dmarc_uses_dkim_milters_result(kind: MtaKind) {
    for trusted in [true, false] {
        let extra = if trusted {
            format!("trusted_authserv_ids = [\"{AUTHSERV}\"]")
        } else {
            "trusted_authserv_ids = []".to_owned()
        };
        let Some(r) = chain_rig(
            kind,
            new_keys(),
            dkim_config,
            |dns| dmarc_config(dns, &extra),
            |_, _| {},
        )
        .await
        else {
            return;
        };
        let subject = format!("chain-{trusted}");
        let signed = sign(&message("alice@signed.example", &subject), &r.keys.signed);
        let reply = r.send_inbound("alice@signed.example", &signed);
        let qid = queued(&reply);
        let msg = r.delivered_id(&qid);
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
        let h = history_in(&r, "history.sqlite", &qid);
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
async fn shipped_example_configurations_pass_signed_aligned_mail(kind: MtaKind) {
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
        kind,
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
    let reply = r.send_submission("user@example.com", &message("user@example.com", "shipped"));
    let qid = queued(&reply);
    let msg = r.delivered_id(&qid);
    let sigs = fields(&msg, "DKIM-Signature");
    assert_eq!(sigs.len(), 1, "{}", text(&msg));
    assert_eq!(
        (tag(&sigs[0], "d"), tag(&sigs[0], "s")),
        ("example.com".into(), "mail".into())
    );
    // Neither config sets authserv_id: both use the MTA's `j` macro (Postfix's $myhostname,
    // Sendmail's confDOMAIN_NAME).
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
    let h = history_in(&r, "dmarc-history.sqlite", &qid);
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

/// The milter down (a closed inet port, a missing unix socket) with the MTA set to tempfail
/// then (the harness's Postfix has `milter_default_action = tempfail`, its Sendmail `F=T`):
/// the MTA answers its 451 on both ports and delivers and queues nothing, so the sender retries
/// instead of mail slipping through unchecked.
async fn milter_down_tempfails(kind: MtaKind) {
    if !kind.require() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for spec in [
        kind.milter_inet(closed_port()),
        kind.milter_unix(&dir.path().join("absent.sock")),
    ] {
        let mta = start_mta(kind, vec![spec.clone()], &MtaOptions::default());
        for addr in [mta.smtp_addr(), mta.submission_addr()] {
            let reply = send(
                addr,
                "alice@aligned.example",
                &message("alice@aligned.example", "down"),
            );
            assert_eq!(
                reply,
                kind.milter_unavailable_reply(),
                "{spec}:\n{}",
                mta.diagnostics()
            );
        }
        // The MTA says why, where its log is readable (Sendmail's goes to syslog only).
        if mta.log().is_some() {
            assert!(
                blocking(|| mta
                    .wait_for_log_line(&format!("connect to Milter service {spec}"), DELIVERY))
                .is_some(),
                "{}",
                mta.diagnostics()
            );
        }
        let diagnostics = mta.diagnostics();
        blocking(|| std::thread::sleep(std::time::Duration::from_millis(300)));
        assert!(mta.deliveries().is_empty(), "{spec}: {diagnostics}");
        assert!(
            mta.queue_files().is_empty(),
            "{spec}: {:?}",
            mta.queue_files()
        );
    }
}
