//! dkim-milter end to end: a real DNS server on loopback, dkim-milter on a loopback socket, our
//! milter client playing the MTA, and independent DKIM implementations (dkimpy, Mail::DKIM,
//! OpenDKIM) judging what we sign and signing what we verify.

use milter_client::{run, Modification, Reply, Transaction};
use std::net::SocketAddr;
use std::path::Path;
use testkit::daemons::{start_dkim, RunningMilter};
use testkit::dns::{TestDns, Zone};
use testkit::judges;
use testkit::keys::TestKey;
use testkit::logcapture::lines_with;
use testkit::outcome::{auth_results, delivered, inserted};

const AUTHSERV: &str = "mx.test.example";

/// Keys, zone and a running milter for one test.
struct Setup {
    _dir: tempfile::TempDir,
    dns: TestDns,
    milter: RunningMilter,
}

struct Keys {
    rsa: TestKey,
    ed: TestKey,
}

fn keys() -> Keys {
    Keys {
        rsa: TestKey::rsa(2048),
        ed: TestKey::ed25519(),
    }
}

fn zone_for(k: &Keys) -> Zone {
    Zone::new()
        .txt("rsa._domainkey.example.com", &k.rsa.dns_record())
        .txt("ed._domainkey.example.com", &k.ed.dns_record())
        // A published key that does not match the private key used with selector "wrong".
        .txt(
            "wrong._domainkey.example.com",
            &TestKey::rsa(2048).dns_record(),
        )
        // Valid base64 that decodes to no RSA public key.
        .txt(
            "broken._domainkey.example.com",
            "v=DKIM1; k=rsa; p=AAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .txt("example.com", "v=spf1 -all")
}

/// Writes keys and tables into `dir` and returns the config text.
fn config(dir: &Path, k: &Keys, dns: SocketAddr, signing_rows: &str, extra: &str) -> String {
    k.rsa.write_pem(dir, "rsa.pem", true);
    k.ed.write_pem(dir, "ed.pem", false);
    k.rsa.write_pem(dir, "rsa-wrong.pem", false);
    std::fs::write(
        dir.join("KeyTable"),
        "rsa example.com:rsa:rsa.pem\ned example.com:ed:ed.pem\nwrong example.com:wrong:rsa-wrong.pem\n",
    )
    .unwrap();
    std::fs::write(dir.join("SigningTable"), signing_rows).unwrap();
    format!(
        "authserv_id = \"{AUTHSERV}\"\nkey_table = \"file:KeyTable\"\nsigning_table = \"refile:SigningTable\"\n{extra}\n\
         [resolver]\nnameservers = [\"{dns}\"]\ntimeout = 1.0\nattempts = 1\n"
    )
}

async fn setup(signing_rows: &str, extra: &str) -> (Setup, Keys) {
    let k = keys();
    let dns = TestDns::start(&zone_for(&k)).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &k, dns.addr(), signing_rows, extra);
    let milter = start_dkim(dir.path(), &cfg, "inet:0@127.0.0.1").await;
    (
        Setup {
            _dir: dir,
            dns,
            milter,
        },
        k,
    )
}

fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <{from}>\r\nTo: bob@example.org\r\nSubject: {subject}\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\n\
         Message-ID: <{subject}@example.com>\r\n\r\nHello Bob,\r\n\r\nthis is a test.  With  spaces.\r\n\r\n"
    )
    .into_bytes()
}

/// A transaction from a trusted (internal) client with queue id `qid`.
fn internal(raw: &[u8], qid: &str) -> Transaction {
    let mut tx = Transaction::from_message(raw)
        .with_client("localhost", Some("127.0.0.1:40000".parse().unwrap()));
    tx.connect_macros.push(("j".into(), AUTHSERV.into()));
    tx.mail_macros.push(("i".into(), qid.into()));
    tx.eom_macros.push(("i".into(), qid.into()));
    tx.mail_from = "alice@example.com".into();
    tx
}

/// A transaction from an outside client (documentation address) with queue id `qid`.
fn external(raw: &[u8], qid: &str) -> Transaction {
    let mut tx = internal(raw, qid);
    tx.client_name = "mail.sender.example".into();
    tx.client_addr = Some("192.0.2.55:41000".parse().unwrap());
    tx
}

/// The message as Postfix would deliver it after applying the milter's changes.
fn judge_both(msg: &[u8], dns: SocketAddr) -> (judges::JudgeVerdict, judges::JudgeVerdict) {
    let py = judges::dkimpy_verify(msg, dns).expect("dkimpy runs");
    let pl = judges::mail_dkim_verify(msg, dns).expect("Mail::DKIM runs");
    (py, pl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_rsa_and_independent_verifiers_agree() {
    let (s, _k) = setup("*@example.com rsa\n", "").await;
    let raw = message("alice@example.com", "rsa-sign");
    let tx = internal(&raw, "QRSA01");
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    assert_eq!(out.reply, Reply::Accept);
    let sigs = inserted(&out, "DKIM-Signature");
    assert_eq!(sigs.len(), 1, "{:?}", out.modifications);
    assert!(
        sigs[0].contains("a=rsa-sha256")
            && sigs[0].contains("d=example.com")
            && sigs[0].contains("s=rsa")
    );
    assert!(sigs[0].contains("c=relaxed/relaxed"));
    assert!(!sigs[0].contains(" l="), "no l= by default");
    // From is oversigned: listed once more than it occurs.
    let h = sigs[0]
        .split("h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .replace([' ', '\n', '\t', '\r'], "");
    assert_eq!(h.to_ascii_lowercase().matches("from").count(), 2, "h={h}");
    let msg = delivered(&tx, &out);
    let (py, pl) = judge_both(&msg, s.dns.addr());
    assert_eq!(py.results, vec!["pass"], "dkimpy: {}", py.raw_output);
    assert_eq!(pl.results, vec!["pass"], "Mail::DKIM: {}", pl.raw_output);
    assert_eq!(
        lines_with("QRSA01"),
        vec!["QRSA01: DKIM-Signature field added (s=rsa, d=example.com)"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_ed25519_and_dual_signs() {
    let (s, _k) = setup("*@example.com ed\n*@example.com rsa\n", "").await;
    let raw = message("alice@example.com", "dual-sign");
    let tx = internal(&raw, "QDUAL01");
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    let sigs = inserted(&out, "DKIM-Signature");
    assert_eq!(sigs.len(), 2, "{:?}", out.modifications);
    assert!(sigs
        .iter()
        .any(|v| v.contains("a=ed25519-sha256") && v.contains("s=ed")));
    assert!(sigs
        .iter()
        .any(|v| v.contains("a=rsa-sha256") && v.contains("s=rsa")));
    let msg = delivered(&tx, &out);
    let (py, pl) = judge_both(&msg, s.dns.addr());
    assert_eq!(
        py.results,
        vec!["pass", "pass"],
        "dkimpy: {}",
        py.raw_output
    );
    // Debian 12's Mail::DKIM (1.20230212) predates Ed25519: it checks the RSA signature and
    // reports the Ed25519 one as an unsupported algorithm, which is all it can say.
    assert_eq!(pl.results.len(), 2, "Mail::DKIM: {}", pl.raw_output);
    for (result, detail) in pl.results.iter().zip(&pl.details) {
        if detail.contains("unsupported algorithm ed25519-sha256") {
            assert_eq!(result, "invalid");
        } else {
            assert_eq!(result, "pass", "Mail::DKIM: {}", pl.raw_output);
        }
    }
    assert!(pl.results.iter().any(|r| r == "pass"));
    // And our own verifier agrees when the message comes back in from outside.
    let back = run(&s.milter.endpoint(), &external(&msg, "QDUAL02"))
        .await
        .unwrap();
    let ar = auth_results(&back);
    assert_eq!(ar.matches("dkim=pass").count(), 2, "{ar}");
    assert!(
        ar.contains("header.a=ed25519-sha256") && ar.contains("(256-bit key)"),
        "{ar}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_alone_is_accepted_by_dkimpy() {
    let (s, _k) = setup("*@example.com ed\n", "").await;
    let tx = internal(&message("alice@example.com", "ed-only"), "QED01");
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    let msg = delivered(&tx, &out);
    let py = judges::dkimpy_verify(&msg, s.dns.addr()).unwrap();
    assert_eq!(py.results, vec!["pass"], "{}", py.raw_output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_needs_a_trusted_origin() {
    let (s, _k) = setup("*@example.com rsa\n", "").await;
    let tx = external(&message("alice@example.com", "untrusted"), "QEXT01");
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    assert!(
        inserted(&out, "DKIM-Signature").is_empty(),
        "must not sign for an outside client"
    );
    assert_eq!(auth_results(&out), format!("{AUTHSERV}; dkim=none"));
    assert!(
        lines_with("QEXT01").contains(&"QEXT01: external host mail.sender.example [192.0.2.55] attempted to send as example.com".to_string()),
        "{:?}",
        lines_with("QEXT01")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_auth_and_macro_list_make_a_client_trusted() {
    let (s, _k) = setup(
        "*@example.com rsa\n",
        "macro_list = [\"daemon_name=ORIGINATING\"]",
    )
    .await;
    let mut tx = external(&message("alice@example.com", "auth"), "QAUTH01");
    tx.mail_macros.push(("{auth_type}".into(), "PLAIN".into()));
    tx.mail_macros
        .push(("{auth_authen}".into(), "alice".into()));
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    assert_eq!(
        inserted(&out, "DKIM-Signature").len(),
        1,
        "authenticated client gets signed"
    );

    let mut tx = external(&message("alice@example.com", "orig"), "QORIG01");
    tx.connect_macros
        .push(("{daemon_name}".into(), "ORIGINATING".into()));
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    assert_eq!(
        inserted(&out, "DKIM-Signature").len(),
        1,
        "daemon_name=ORIGINATING gets signed"
    );

    let mut tx = external(&message("alice@example.com", "other"), "QORIG02");
    tx.connect_macros
        .push(("{daemon_name}".into(), "smtpd".into()));
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    assert!(
        inserted(&out, "DKIM-Signature").is_empty(),
        "another daemon name is not trusted"
    );
}

/// Signs `raw` through the milter as an internal client and returns the delivered bytes.
async fn signed(s: &Setup, raw: &[u8], qid: &str) -> Vec<u8> {
    let tx = internal(raw, qid);
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    assert!(!inserted(&out, "DKIM-Signature").is_empty());
    delivered(&tx, &out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_pass_and_detects_tampering() {
    let (s, _k) = setup("*@example.com rsa\n", "").await;
    let msg = signed(&s, &message("alice@example.com", "verify"), "QV00").await;

    let out = run(&s.milter.endpoint(), &external(&msg, "QV01"))
        .await
        .unwrap();
    let ar = auth_results(&out);
    assert!(ar.starts_with(&format!("{AUTHSERV}; dkim=pass (2048-bit key) header.d=example.com header.i=@example.com header.a=rsa-sha256 header.s=rsa header.b=")), "{ar}");
    assert_eq!(out.reply, Reply::Accept);
    assert!(lines_with("QV01").contains(&"QV01: DKIM verification successful".to_string()));
    // A-R goes on top, above the MTA's Received.
    let idx = out.modifications.iter().find_map(|m| match m {
        Modification::InsertHeader { index, name, .. } if name == "Authentication-Results" => {
            Some(*index)
        }
        _ => None,
    });
    assert_eq!(idx, Some(0));

    let tampered = String::from_utf8(msg.clone())
        .unwrap()
        .replace("this is a test", "this is a TEST")
        .into_bytes();
    let out = run(&s.milter.endpoint(), &external(&tampered, "QV02"))
        .await
        .unwrap();
    let ar = auth_results(&out);
    assert!(
        ar.contains("dkim=fail reason=\"body hash did not verify\""),
        "{ar}"
    );
    assert_eq!(
        out.reply,
        Reply::Accept,
        "On-BadSignature defaults to accept"
    );
    assert!(
        lines_with("QV02")
            .iter()
            .any(|l| l.starts_with("QV02: bad signature data (s=rsa, d=example.com)")),
        "{:?}",
        lines_with("QV02")
    );

    let header_tampered = String::from_utf8(msg)
        .unwrap()
        .replace("Subject: verify", "Subject: changed")
        .into_bytes();
    let out = run(&s.milter.endpoint(), &external(&header_tampered, "QV03"))
        .await
        .unwrap();
    assert!(auth_results(&out).contains("dkim=fail reason=\"signature verification failed\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_reject_action() {
    let (s, _k) = setup(
        "*@example.com rsa\n",
        "[actions]\nbad_signature = \"reject\"",
    )
    .await;
    let msg = signed(&s, &message("alice@example.com", "reject"), "QR00").await;
    let tampered = String::from_utf8(msg)
        .unwrap()
        .replace("Hello Bob", "Hello Eve")
        .into_bytes();
    let out = run(&s.milter.endpoint(), &external(&tampered, "QR01"))
        .await
        .unwrap();
    assert_eq!(
        out.reply,
        Reply::ReplyCode("550 5.7.0 bad DKIM signature data".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_fails_and_missing_key_is_permerror() {
    let (s, _k) = setup("*@example.com wrong\n*@other.example rsa\n", "").await;
    // Signed with a key whose published record is a different key.
    let msg = signed(&s, &message("alice@example.com", "wrongkey"), "QW00").await;
    let out = run(&s.milter.endpoint(), &external(&msg, "QW01"))
        .await
        .unwrap();
    assert!(
        auth_results(&out).contains("dkim=fail reason=\"signature verification failed\""),
        "{}",
        auth_results(&out)
    );

    // Selector with no record at all: d=example.com s=nokey.
    let nokey = String::from_utf8(msg)
        .unwrap()
        .replace("s=wrong", "s=nokey")
        .into_bytes();
    let out = run(&s.milter.endpoint(), &external(&nokey, "QW02"))
        .await
        .unwrap();
    let ar = auth_results(&out);
    assert!(
        ar.contains("dkim=permerror reason=\"no key for signature\""),
        "{ar}"
    );
    assert_eq!(
        out.reply,
        Reply::Accept,
        "On-KeyNotFound defaults to accept"
    );
    assert!(
        lines_with("QW02")
            .iter()
            .any(|l| l.starts_with("QW02: key retrieval failed (s=nokey, d=example.com)")),
        "{:?}",
        lines_with("QW02")
    );

    // RFC 6376 §6.1.2 step 7: a p= that does not decode to a public key is a key problem,
    // permerror, not a failed signature.
    let broken = String::from_utf8(nokey)
        .unwrap()
        .replace("s=nokey", "s=broken")
        .into_bytes();
    let out = run(&s.milter.endpoint(), &external(&broken, "QW03"))
        .await
        .unwrap();
    let ar = auth_results(&out);
    assert!(
        ar.contains("dkim=permerror reason=\"key syntax error: public key cannot be decoded\""),
        "{ar}"
    );
    assert_eq!(
        out.reply,
        Reply::Accept,
        "On-KeyNotFound defaults to accept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_down_is_temperror_and_tempfail() {
    let (s, _k) = setup("*@example.com rsa\n", "").await;
    let msg = signed(&s, &message("alice@example.com", "dnsdown"), "QD00").await;
    let Setup {
        dns, milter, _dir, ..
    } = s;
    dns.stop().await;
    let start = std::time::Instant::now();
    let out = run(&milter.endpoint(), &external(&msg, "QD01"))
        .await
        .unwrap();
    assert_eq!(
        out.reply,
        Reply::ReplyCode("451 4.7.5 DKIM key retrieval failed".into())
    );
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "bounded by the resolver timeout"
    );
    assert!(lines_with("QD01")
        .iter()
        .any(|l| l.starts_with("QD01: key retrieval failed (s=rsa, d=example.com)")));
    // With On-DNSError=accept the A-R says temperror.
    drop(milter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_timeout_with_accept_action_writes_temperror() {
    let k = keys();
    let hole = testkit::dns::BlackholeDns::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &k,
        hole.addr(),
        "*@example.com rsa\n",
        "[actions]\ndns_error = \"accept\"",
    );
    let milter = start_dkim(dir.path(), &cfg, "inet:0@127.0.0.1").await;
    let tx = internal(&message("alice@example.com", "timeout"), "QT00");
    let out = run(&milter.endpoint(), &tx).await.unwrap();
    let msg = delivered(&tx, &out);
    let out = run(&milter.endpoint(), &external(&msg, "QT01"))
        .await
        .unwrap();
    assert_eq!(out.reply, Reply::Accept);
    assert!(
        auth_results(&out).contains("dkim=temperror reason=\"key retrieval failed\""),
        "{}",
        auth_results(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_authentication_results_are_all_removed() {
    let (s, _k) = setup("*@example.com rsa\n", "").await;
    for n in [1usize, 2, 5] {
        let mut raw = String::new();
        for i in 0..n {
            raw.push_str(&format!(
                "Authentication-Results: {AUTHSERV}; dkim=pass header.d=forged{i}.example\r\n"
            ));
            raw.push_str(&format!(
                "Authentication-Results: other.example; spf=pass smtp.mailfrom=keep{i}.example\r\n"
            ));
            raw.push_str(&format!("X-Filler-{i}: between\r\n"));
        }
        raw.push_str(&format!(
            "Authentication-Results: {}; dkim=pass header.d=case.example\r\n",
            AUTHSERV.to_uppercase()
        ));
        raw.push_str(&String::from_utf8(message("alice@example.org", "removal")).unwrap());
        let qid = format!("QF{n}");
        let tx = external(raw.as_bytes(), &qid);
        let out = run(&s.milter.endpoint(), &tx).await.unwrap();
        let deletions = out
            .modifications
            .iter()
            .filter(|m| matches!(m, Modification::ChangeHeader { value, .. } if value.is_empty()))
            .count();
        assert_eq!(deletions, n + 1, "{:?}", out.modifications);
        let msg = String::from_utf8(delivered(&tx, &out)).unwrap();
        let ours: Vec<&str> = msg
            .lines()
            .filter(|l| {
                l.to_ascii_lowercase()
                    .starts_with(&format!("authentication-results: {AUTHSERV}"))
            })
            .collect();
        assert_eq!(
            ours,
            vec![format!("Authentication-Results: {AUTHSERV};").as_str()],
            "only our own A-R remains:\n{msg}"
        );
        assert!(
            !msg.contains("forged") && !msg.contains("case.example"),
            "{msg}"
        );
        for i in 0..n {
            assert!(
                msg.contains(&format!("smtp.mailfrom=keep{i}.example")),
                "other ids are kept:\n{msg}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_canonicalization_over_folded_headers() {
    let (s, _k) = setup(
        "*@example.com rsa\n",
        "canonicalization = \"simple/simple\"",
    )
    .await;
    let raw = b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject:  Hello\r\n\tfolded   world\r\n\
                Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nX-NoSpace:value\r\nX-Tab:\ttabbed\r\n\r\nBody  with   spaces \r\n\r\n\r\n";
    let msg = signed(&s, raw, "QS00").await;
    assert!(String::from_utf8_lossy(&msg).contains("c=simple/simple"));
    let (py, pl) = judge_both(&msg, s.dns.addr());
    assert_eq!(py.results, vec!["pass"], "dkimpy: {}", py.raw_output);
    assert_eq!(pl.results, vec!["pass"], "Mail::DKIM: {}", pl.raw_output);
    let out = run(&s.milter.endpoint(), &external(&msg, "QS01"))
        .await
        .unwrap();
    assert!(
        auth_results(&out).contains("dkim=pass"),
        "{}",
        auth_results(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_works_like_inet() {
    let k = keys();
    let dns = TestDns::start(&zone_for(&k)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &k, dns.addr(), "*@example.com ed\n", "");
    let sock = dir.path().join("dkim.sock");
    let milter = start_dkim(dir.path(), &cfg, &format!("unix:{}", sock.display())).await;
    let tx = internal(&message("alice@example.com", "unix"), "QU01");
    let out = run(&milter.endpoint(), &tx).await.unwrap();
    assert_eq!(inserted(&out, "DKIM-Signature").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_examples_verify() {
    let Some(dir) = testkit::corpus::corpus_dir("dkim-rfc-examples") else {
        return;
    };
    let mut zone = Zone::new();
    for f in [
        "rfc6376-appendix-A/A.3-dns-record.txt",
        "rfc8463-appendix-A/A.2-dns-records.txt",
    ] {
        for line in std::fs::read_to_string(dir.join(f))
            .unwrap()
            .lines()
            .filter(|l| l.contains("IN TXT"))
        {
            let name = line
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('.');
            let value: String = line.split('"').skip(1).step_by(2).collect();
            zone = zone.txt(name, &value);
        }
    }
    let dns = TestDns::start(&zone).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = format!("authserv_id = \"{AUTHSERV}\"\n[resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n", dns.addr());
    let milter = start_dkim(tmp.path(), &cfg, "inet:0@127.0.0.1").await;
    for (file, expect) in [
        ("rfc6376-appendix-A/A.2-signed-message.eml", 1),
        ("rfc8463-appendix-A/A.3-signed-message.eml", 2),
    ] {
        let raw = std::fs::read(dir.join(file)).unwrap();
        let out = run(&milter.endpoint(), &external(&raw, "QRFC"))
            .await
            .unwrap();
        let ar = auth_results(&out);
        assert_eq!(ar.matches("dkim=pass").count(), expect, "{file}: {ar}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opendkim_signed_mail_verifies_here() {
    if !judges::require_judge("opendkim") {
        return;
    }
    let k = keys();
    let dns = TestDns::start(&zone_for(&k)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_path = k.rsa.write_pem(dir.path(), "opendkim-rsa.pem", true);
    let od = testkit::opendkim::Opendkim::start_signer(
        "example.com",
        "rsa",
        &key_path,
        "relaxed/simple",
    )
    .expect("opendkim starts");
    let ep: milter_client::Endpoint = od.socket.parse().unwrap();
    let tx = internal(&message("alice@example.com", "opendkim"), "QOD00");
    let out = run(&ep, &tx).await.unwrap();
    let msg = delivered(&tx, &out);
    assert!(
        String::from_utf8_lossy(&msg).contains("DKIM-Signature:"),
        "OpenDKIM signed: {:?}",
        out.modifications
    );
    let cfg = config(dir.path(), &k, dns.addr(), "", "");
    let milter = start_dkim(dir.path(), &cfg, "inet:0@127.0.0.1").await;
    let out = run(&milter.endpoint(), &external(&msg, "QOD01"))
        .await
        .unwrap();
    assert!(
        auth_results(&out).contains("dkim=pass (2048-bit key) header.d=example.com"),
        "{}",
        auth_results(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_list_skips_the_connection_and_external_ignore_list_silences() {
    let (s, _k) = setup(
        "*@example.com rsa\n",
        "peer_list = [\"192.0.2.0/24\", \"!192.0.2.99\"]\nexternal_ignore_list = [\".partner.example\"]",
    )
    .await;
    // A peer: accepted at connect, no modifications at all.
    let tx = external(&message("alice@example.com", "peer"), "QPEER01");
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    assert_eq!(out.stage, milter_client::Stage::Connect);
    assert_eq!(out.reply, Reply::Accept);
    assert!(out.modifications.is_empty());

    // The negated address is not a peer: verified as usual, and logged as external.
    let mut tx = external(&message("alice@example.com", "notpeer"), "QPEER02");
    tx.client_addr = Some("192.0.2.99:41000".parse().unwrap());
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    assert_eq!(auth_results(&out), format!("{AUTHSERV}; dkim=none"));
    assert!(lines_with("QPEER02")
        .iter()
        .any(|l| l.contains("attempted to send as example.com")));

    // A partner relay sending as our domain is verified without the "external host" line.
    let mut tx = external(&message("alice@example.com", "partner"), "QPEER03");
    tx.client_name = "relay.partner.example".into();
    tx.client_addr = Some("198.51.100.7:41000".parse().unwrap());
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    assert_eq!(auth_results(&out), format!("{AUTHSERV}; dkim=none"));
    assert!(
        !lines_with("QPEER03")
            .iter()
            .any(|l| l.contains("attempted to send as")),
        "{:?}",
        lines_with("QPEER03")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_keys_get_policy() {
    let k = keys();
    let small = TestKey::rsa_openssl(1024);
    let zone = zone_for(&k).txt("small._domainkey.example.com", &small.dns_record());
    let dns = TestDns::start(&zone).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &k, dns.addr(), "", "minimum_key_bits = 2048");
    let milter = start_dkim(dir.path(), &cfg, "inet:0@127.0.0.1").await;
    // dkimpy signs with the 1024-bit key (we refuse to sign with keys under 2048 bits).
    let raw = message("alice@example.com", "smallkey");
    let signed = judges::dkimpy_sign(
        &raw,
        &small,
        &judges::SignOptions::new("example.com", "small"),
    )
    .unwrap();
    let out = run(&milter.endpoint(), &external(&signed, "QSMALL01"))
        .await
        .unwrap();
    let ar = auth_results(&out);
    assert!(
        ar.contains("dkim=policy reason=\"signing key too small (1024 bits)\" (1024-bit key)"),
        "{ar}"
    );
    assert_eq!(out.reply, Reply::Accept);
}

/// RFC 8301 §3.2: signers MUST use at least 1024 bits. An operator migrating from OpenDKIM with
/// a published 1024-bit key keeps signing with it (a warning at start says to rotate); both PEM
/// forms load; dkimpy and Mail::DKIM verify what we sign. Under the floor, or under a raised
/// `minimum_signing_key_bits`, the configuration is refused with the key named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_with_a_1024_bit_key_rfc8301_and_refuses_smaller() {
    let k = keys();
    let small = TestKey::rsa_openssl(1024);
    let zone = zone_for(&k).txt("small._domainkey.example.com", &small.dns_record());
    let dns = TestDns::start(&zone).await.unwrap();
    for pkcs1 in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cfg = config(d, &k, dns.addr(), "*@example.com small\n", "");
        small.write_pem(d, "small.pem", pkcs1);
        let table = std::fs::read_to_string(d.join("KeyTable")).unwrap();
        std::fs::write(
            d.join("KeyTable"),
            format!("{table}small example.com:small:small.pem\n"),
        )
        .unwrap();
        let milter = start_dkim(d, &cfg, "inet:0@127.0.0.1").await;
        let warned = lines_with("signing with a 1024-bit RSA key");
        assert!(
            warned.iter().any(|l| l.contains("key 'small' (")
                && l.contains("small.pem")
                && l.contains("rotate to a 2048-bit key")),
            "{warned:?}"
        );
        let qid = if pkcs1 { "QSMALLS1" } else { "QSMALLS8" };
        let tx = internal(&message("alice@example.com", qid), qid);
        let out = run(&milter.endpoint(), &tx).await.unwrap();
        assert_eq!(out.reply, Reply::Accept);
        let sigs = inserted(&out, "DKIM-Signature");
        assert_eq!(sigs.len(), 1, "{:?}", out.modifications);
        assert!(sigs[0].contains("a=rsa-sha256") && sigs[0].contains("s=small"));
        let msg = delivered(&tx, &out);
        let (py, pl) = judge_both(&msg, dns.addr());
        assert_eq!(py.results, vec!["pass"], "dkimpy: {}", py.raw_output);
        assert_eq!(pl.results, vec!["pass"], "Mail::DKIM: {}", pl.raw_output);
        assert_eq!(
            lines_with(qid),
            vec![format!(
                "{qid}: DKIM-Signature field added (s=small, d=example.com)"
            )]
        );
    }

    // Raised minimum: the same key is refused, by name.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = config(
        d,
        &k,
        dns.addr(),
        "*@example.com small\n",
        "minimum_signing_key_bits = 2048",
    );
    small.write_pem(d, "small.pem", true);
    let table = std::fs::read_to_string(d.join("KeyTable")).unwrap();
    std::fs::write(
        d.join("KeyTable"),
        format!("{table}small example.com:small:small.pem\n"),
    )
    .unwrap();
    std::fs::write(d.join("dkim-milter.toml"), &cfg).unwrap();
    let err = dkim_policy::config::Config::load(&d.join("dkim-milter.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("key 'small': RSA key has 1024 bits; at least 2048 are required to sign"),
        "{err}"
    );
    // Below RFC 8301's floor: refused whatever the setting, and the setting cannot go lower.
    let tiny = TestKey::rsa_openssl(768);
    tiny.write_pem(d, "small.pem", true);
    std::fs::write(d.join("dkim-milter.toml"), cfg.replace("2048", "1024")).unwrap();
    let err = dkim_policy::config::Config::load(&d.join("dkim-milter.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("key 'small': key file ")
            && err.contains(
                "small.pem: RSA key has 768 bits; RFC 8301 requires at least 1024 to sign"
            ),
        "{err}"
    );
    std::fs::write(d.join("dkim-milter.toml"), cfg.replace("2048", "512")).unwrap();
    let err = dkim_policy::config::Config::load(&d.join("dkim-milter.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("minimum_signing_key_bits") && err.contains("must be at least 1024"),
        "{err}"
    );
}

/// `dkim-milter convert` for the set-ups OpenSMTPD users migrate from: a dkimproxy_out.conf
/// (`signature dkim(c=relaxed)`: relaxed header, simple body) and an Rspamd dkim_signing.conf
/// (per-domain blocks, `$domain.$selector` path template) sign exactly as the originals
/// declared: the same d=, s= and c=, and dkimpy verifies the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converted_dkimproxy_and_rspamd_configs_sign_as_declared() {
    let proxy_key = TestKey::rsa(2048);
    let rspamd_key = TestKey::rsa(2048);
    let zone = Zone::new()
        .txt("sel1._domainkey.example.com", &proxy_key.dns_record())
        .txt("2024._domainkey.example.net", &rspamd_key.dns_record());
    let dns = TestDns::start(&zone).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let proxy_pem = proxy_key.write_pem(d, "private.key", true);
    rspamd_key.write_pem(d, "example.net.2024.key", true);
    let sources = [
        (
            "dkimproxy_out.conf",
            format!(
                "listen 127.0.0.1:10027\nrelay 127.0.0.1:10028\ndomain example.com\n\
                 signature dkim(c=relaxed)\nkeyfile {}\nselector sel1\n",
                proxy_pem.display()
            ),
            "alice@example.com",
            ("example.com", "sel1", "relaxed/simple"),
        ),
        (
            "dkim_signing.conf",
            format!(
                "path = \"{}/$domain.$selector.key\";\nselector = \"dkim\";\n\
                 domain {{\n  example.net {{\n    selector = \"2024\";\n  }}\n}}\n",
                d.display()
            ),
            "bob@example.net",
            ("example.net", "2024", "relaxed/relaxed"),
        ),
    ];
    for (name, text, from, (want_d, want_s, want_c)) in sources {
        let src = d.join(name);
        std::fs::write(&src, text).unwrap();
        let converted = dkim_policy::migrate::convert_file(&src)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .toml;
        let cfg = format!(
            "authserv_id = \"{AUTHSERV}\"\n{converted}\n[resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
            dns.addr()
        );
        let milter = start_dkim(d, &cfg, "inet:0@127.0.0.1").await;
        let qid = format!("QMIG{}", want_s.to_uppercase());
        let mut tx = internal(&message(from, name), &qid);
        tx.mail_from = from.into();
        let out = run(&milter.endpoint(), &tx).await.unwrap();
        let sigs = inserted(&out, "DKIM-Signature");
        assert_eq!(sigs.len(), 1, "{name}: {:?}", out.modifications);
        let tag = |t: &str| {
            sigs[0]
                .split(';')
                .find_map(|p| p.trim().strip_prefix(&format!("{t}=")).map(str::to_string))
                .unwrap_or_default()
        };
        assert_eq!(
            (tag("d"), tag("s"), tag("c")),
            (want_d.to_string(), want_s.to_string(), want_c.to_string()),
            "{name}"
        );
        let v = judges::dkimpy_verify(&delivered(&tx, &out), dns.addr()).unwrap();
        assert_eq!(v.results, ["pass"], "{name}: dkimpy: {}", v.raw_output);
    }
}
