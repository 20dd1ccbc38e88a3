// SPDX-License-Identifier: GPL-3.0-or-later
//! Smoke test of the load generator against our dkim-milter (in-process, on loopback, with the
//! test kit's DNS server): a few messages per scenario, asserting that every answer carries the
//! expected modification and that a wrong answer is counted as a failure. Nothing here is timed.

use milter_bench::{generate_message, run_bench, BenchConfig, Mode};
use std::time::Duration;
use testkit::daemons::start_dkim;
use testkit::dns::{TestDns, Zone};
use testkit::keys::TestKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_then_verifies_and_catches_wrong_answers() {
    let rsa = TestKey::rsa(2048);
    let ed = TestKey::ed25519();
    let zone = Zone::new()
        .txt("rsa._domainkey.example.com", &rsa.dns_record())
        .txt("ed._domainkey.example.net", &ed.dns_record());
    let dns = TestDns::start(&zone).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    rsa.write_pem(dir.path(), "rsa.pem", false);
    ed.write_pem(dir.path(), "ed.pem", false);
    std::fs::write(
        dir.path().join("KeyTable"),
        "rsa example.com:rsa:rsa.pem\ned example.net:ed:ed.pem\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("SigningTable"),
        "*@example.com rsa\n*@example.net ed\n",
    )
    .unwrap();
    let toml = format!(
        "authserv_id = \"bench.test\"\nkey_table = \"file:KeyTable\"\n\
         signing_table = \"refile:SigningTable\"\ninternal_hosts = [\"127.0.0.1\"]\n\
         [resolver]\nnameservers = [\"{}\"]\ntimeout = 2.0\nattempts = 1\n",
        dns.addr()
    );
    let milter = start_dkim(dir.path(), &toml, "inet:0@127.0.0.1").await;
    let ep = milter.endpoint();

    // Sign, RSA: 6 messages on 3 sessions; keep the first signed message.
    let signed = dir.path().join("signed.eml");
    let mut cfg = BenchConfig::new(ep.clone(), Mode::Sign);
    cfg.concurrency = 3;
    cfg.messages = Some(6);
    cfg.timeout = Duration::from_secs(5);
    cfg.save_first = Some(signed.clone());
    let r = run_bench(cfg).await;
    assert_eq!((r.messages, r.ok, r.failed), (6, 6, 0), "{}", r.text());
    assert_eq!(
        r.replies.get("accept").or(r.replies.get("continue")),
        Some(&6)
    );
    let text = std::fs::read_to_string(&signed).unwrap();
    assert!(text.starts_with("DKIM-Signature:"), "{text}");
    assert!(text.contains("d=example.com") && text.contains("a=rsa-sha256"));

    // Sign, Ed25519, through a client that neither sets TCP_NODELAY nor quick-acks.
    let mut cfg = BenchConfig::new(ep.clone(), Mode::Sign);
    cfg.message = generate_message("example.net", 2000);
    cfg.mail_from = "sender@example.net".into();
    cfg.messages = Some(3);
    cfg.nodelay = false;
    cfg.quickack = false;
    cfg.timeout = Duration::from_secs(5);
    cfg.expect.contains = Some("a=ed25519-sha256".into());
    let r = run_bench(cfg).await;
    assert_eq!((r.messages, r.ok, r.failed), (3, 3, 0), "{}", r.text());

    // Verify the signed message from external clients: dkim=pass every time.
    let mut cfg = BenchConfig::new(ep.clone(), Mode::Verify);
    cfg.message = std::fs::read(&signed).unwrap();
    cfg.concurrency = 2;
    cfg.messages = Some(4);
    cfg.timeout = Duration::from_secs(5);
    let r = run_bench(cfg).await;
    assert_eq!((r.messages, r.ok, r.failed), (4, 4, 0), "{}", r.text());

    // A wrong answer does not score: an unsigned message gets no dkim=pass.
    let mut cfg = BenchConfig::new(ep.clone(), Mode::Verify);
    cfg.messages = Some(2);
    cfg.timeout = Duration::from_secs(5);
    let r = run_bench(cfg).await;
    assert_eq!((r.messages, r.ok, r.failed), (2, 0, 2), "{}", r.text());
    assert_eq!(r.msgs_per_s, 0.0);
    assert!(
        r.failures.keys().any(|k| k.contains("dkim=pass")),
        "{:?}",
        r.failures
    );
    drop(milter);
    dns.stop().await;
}
