//! Faults that must not leak or hang: a dead DNS server under many sessions (OpenDKIM #149 leaked
//! descriptors this way), and a dead DNS server during dmarc-milter's evaluation.

use milter_client::{run, Reply, Transaction};
use std::time::{Duration, Instant};
use testkit::daemons::start_dkim;
use testkit::dns::{TestDns, Zone};
use testkit::keys::TestKey;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Sessions run with `concurrency` clients at a time.
const SESSIONS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_dns_under_ten_thousand_sessions_leaks_nothing() {
    let key = TestKey::ed25519();
    let dns = TestDns::start(&Zone::new().txt("ed._domainkey.example.com", &key.dns_record()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    key.write_pem(dir.path(), "ed.pem", false);
    std::fs::write(dir.path().join("KeyTable"), "ed example.com:ed:ed.pem\n").unwrap();
    std::fs::write(dir.path().join("SigningTable"), "*@example.com ed\n").unwrap();
    let cfg = format!(
        "authserv_id = \"mx.test.example\"\nkey_table = \"file:KeyTable\"\nsigning_table = \"refile:SigningTable\"\n\
         [resolver]\nnameservers = [\"{}\"]\ntimeout = 0.1\nattempts = 1\n[log]\nlevel = \"warn\"\n",
        dns.addr()
    );
    let milter = start_dkim(dir.path(), &cfg, "inet:0@127.0.0.1").await;
    let ep = milter.endpoint();
    // Sign one message while DNS is up, then take DNS down.
    let raw = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: fd\r\n\r\nbody\r\n";
    let mut tx = Transaction::from_message(raw)
        .with_client("localhost", Some("127.0.0.1:40000".parse().unwrap()));
    let out = run(&ep, &tx).await.unwrap();
    let sig = out
        .modifications
        .iter()
        .find_map(|m| match m {
            milter_client::Modification::InsertHeader { name, value, .. }
                if name == "DKIM-Signature" =>
            {
                Some(value.clone())
            }
            _ => None,
        })
        .expect("signed");
    tx.headers.insert(0, ("DKIM-Signature".into(), sig));
    tx.client_name = "mail.sender.example".into();
    tx.client_addr = Some("192.0.2.55:41000".parse().unwrap());
    dns.stop().await;

    // Warm up (resolver sockets, runtime threads), then measure.
    for _ in 0..20 {
        run(&ep, &tx).await.unwrap();
    }
    let before = open_fds();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut tempfails = 0usize;
    let concurrency = 64;
    let mut done = 0;
    while done < SESSIONS {
        let batch = concurrency.min(SESSIONS - done);
        let mut tasks = Vec::with_capacity(batch);
        for _ in 0..batch {
            let (ep, tx) = (ep.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let out = run(&ep, &tx).await.unwrap();
                (out.reply, t.elapsed())
            }));
        }
        for t in tasks {
            let (reply, took) = t.await.unwrap();
            slowest = slowest.max(took);
            if reply == Reply::ReplyCode("451 4.7.5 DKIM key retrieval failed".into()) {
                tempfails += 1;
            }
        }
        done += batch;
    }
    // Let closed sessions' sockets go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = open_fds();
    eprintln!(
        "{SESSIONS} sessions with DNS down in {:?}; slowest {:?}; fds {before} -> {after}",
        started.elapsed(),
        slowest
    );
    assert_eq!(
        tempfails, SESSIONS,
        "every session gets On-DNSError (tempfail 451 4.7.5)"
    );
    assert!(
        after <= before + 8,
        "descriptors grew from {before} to {after}"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "a session outlived the DNS timeout: {slowest:?}"
    );
}
