//! The history in PostgreSQL (a fleet's shared store), with the real binary and a real
//! PostgreSQL from Debian (a throwaway cluster, testkit::postgres):
//!
//! * two dmarc-milter processes under load from milter-bench at once write one database; the
//!   report program then makes one aggregate report per domain with the summed counts, and a
//!   second report program running beside it finds nothing left to claim;
//! * PostgreSQL stopped: messages get the configured `store_failure` action within the store
//!   timeout, with a log line; started again: the same daemon records again, no restart, and
//!   every accepted message has its row;
//! * schema: a version-1 database is migrated (old rows kept), a newer one is refused;
//! * TLS: verified against the CA given in the URL, refused in plain text and with another CA;
//! * DKIM results are written with their message, and a retried message is counted once.

use dmarc_reports::send::Sender;
use milter_bench::{BenchConfig, Mode};
use milter_client::{run, Reply, Transaction};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testkit::binary::Daemon;
use testkit::dns::{TestDns, Zone};
use testkit::postgres::Cluster;

const BIN: &str = env!("CARGO_BIN_EXE_dmarc-milter");

/// Two domains that publish p=reject with a rua inside their own organisation, and SPF for
/// milter-bench's DMARC clients (192.0.2.x): every message passes DMARC by SPF.
fn zone() -> Zone {
    let mut z = Zone::new();
    for d in ["alpha.example", "beta.example"] {
        z = z.txt(d, "v=spf1 ip4:192.0.2.0/24 -all").txt(
            &format!("_dmarc.{d}"),
            &format!("v=DMARC1; p=reject; rua=mailto:dmarc@{d}"),
        );
    }
    z
}

fn write_config(dir: &Path, name: &str, url: &str, dns: std::net::SocketAddr) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "socket = \"inet:0@127.0.0.1\"\nauthserv_id = \"{name}.test\"\nignore_hosts = []\n\
             history = \"{url}\"\nhistory_timeout = 2\nhistory_pool_size = 4\n\
             [resolver]\nnameservers = [\"{dns}\"]\ntimeout = 1.0\nattempts = 1\n"
        ),
    )
    .unwrap();
    path
}

/// The report program's configuration for `url`, delivering through `sink` (collected in the
/// test, not sent).
fn report_config(
    dir: &Path,
    url: &str,
    dns: std::net::SocketAddr,
) -> dmarc_reports::config::Config {
    let path = dir.join("reports.toml");
    let text = format!(
        "history = \"{url}\"\norg_name = \"Fleet Test\"\nemail = \"dmarc-reports@fleet.test\"\n\
         [resolver]\nnameservers = [\"{dns}\"]\ntimeout = 1.0\nattempts = 1\n"
    );
    std::fs::write(&path, &text).unwrap();
    dmarc_reports::config::Config::parse(&path, &text).unwrap()
}

#[derive(Default)]
struct Collect(Vec<dmarc_reports::message::ReportMail>);

impl Sender for Collect {
    fn send(
        &mut self,
        mail: &dmarc_reports::message::ReportMail,
        _from: &str,
        _to: &[String],
    ) -> Result<(), String> {
        self.0.push(dmarc_reports::message::ReportMail {
            filename: mail.filename.clone(),
            subject: mail.subject.clone(),
            gzip: mail.gzip.clone(),
            message: mail.message.clone(),
        });
        Ok(())
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_milters_on_one_postgresql_give_one_report_per_domain_with_summed_counts() {
    if !testkit::postgres::available() {
        return;
    }
    let pg = tokio::task::block_in_place(Cluster::start);
    let dns = TestDns::start(&zone()).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let one = Daemon::start(BIN, &write_config(dir.path(), "mx1", &pg.url(), dns.addr()));
    let two = Daemon::start(BIN, &write_config(dir.path(), "mx2", &pg.url(), dns.addr()));
    let (e1, e2) = tokio::task::block_in_place(|| (one.endpoint(), two.endpoint()));

    // Both milters at once, each with both domains: 4 runs of N messages, 4 sessions each.
    const N: u64 = 60;
    let load = |ep: milter_client::Endpoint, domain: &str, tag: &str| {
        let mut c = BenchConfig::new(ep, Mode::Dmarc);
        c.message = milter_bench::generate_message(domain, 2048);
        c.mail_from = format!("bench@{domain}");
        c.concurrency = 4;
        c.messages = Some(N);
        c.unique_ids = Some(tag.to_string());
        c.timeout = Duration::from_secs(20);
        milter_bench::run_bench(c)
    };
    let (a1, b1, a2, b2) = tokio::join!(
        load(e1.clone(), "alpha.example", "mx1a"),
        load(e1, "beta.example", "mx1b"),
        load(e2.clone(), "alpha.example", "mx2a"),
        load(e2, "beta.example", "mx2b"),
    );
    for (name, r) in [
        ("mx1 alpha", &a1),
        ("mx1 beta", &b1),
        ("mx2 alpha", &a2),
        ("mx2 beta", &b2),
    ] {
        assert_eq!(
            (r.ok, r.failed),
            (N, 0),
            "{name}: {:?} first failure {:?}",
            r.replies,
            r.first_failure
        );
    }
    assert_eq!(
        pg.psql("SELECT reporter, COUNT(*) FROM messages GROUP BY 1 ORDER BY 1"),
        format!("mx1.test|{}\nmx2.test|{}", 2 * N, 2 * N)
    );
    drop((one, two));

    // The report program of the fleet, the next day: one report per domain, the counts of
    // both hosts summed; a second one beside it (another host's timer) claims nothing.
    let cfg = report_config(dir.path(), &pg.url(), dns.addr());
    let later = now() + 86400 + 3600;
    // The report program is blocking (its DNS checks have a runtime of their own): it runs
    // outside the test's runtime.
    let (first, second) = tokio::task::block_in_place(|| {
        let verifier = dmarc_reports::verify::DnsVerifier::new(&cfg.resolver).unwrap();
        let verifier = &verifier;
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let mut sink = Collect::default();
                        let out = dmarc_reports::run::run(&cfg, later, &mut sink, verifier);
                        (out, sink)
                    })
                })
                .collect();
            let mut done: Vec<_> = runs.into_iter().map(|h| h.join().unwrap()).collect();
            let b = done.pop().unwrap();
            (done.pop().unwrap(), b)
        })
    });
    let (o1, s1) = (first.0.unwrap(), first.1);
    let (o2, s2) = (second.0.unwrap(), second.1);
    assert_eq!(o1.claimed + o2.claimed, 2, "{o1:?} {o2:?}");
    assert_eq!(o1.sent + o2.sent, 2, "{o1:?} {o2:?}");
    let mut by_domain = std::collections::BTreeMap::new();
    for mail in s1.0.iter().chain(&s2.0) {
        let report = dmarc_reports::inspect::parse(&mail.message, 10 << 20).unwrap();
        let count: u64 = report.records().iter().map(|r| u64::from(r.count())).sum();
        let domain = report.policy_published.domain.clone();
        assert!(
            mail.filename.starts_with(&format!("fleet.test!{domain}!")),
            "{}",
            mail.filename
        );
        assert!(
            by_domain.insert(domain, count).is_none(),
            "two reports for one domain"
        );
    }
    assert_eq!(
        by_domain.into_iter().collect::<Vec<_>>(),
        [
            ("alpha.example".to_string(), 2 * N),
            ("beta.example".to_string(), 2 * N)
        ]
    );
    assert_eq!(
        pg.psql("SELECT state, COUNT(*), SUM(rows) FROM reports GROUP BY 1"),
        format!("sent|2|{}", 4 * N)
    );
    assert_eq!(
        pg.psql("SELECT COUNT(*) FROM report_rows WHERE report IS NOT NULL"),
        (4 * N).to_string()
    );
}

/// One message with its own queue id and Message-ID, from an SPF-allowed client.
fn tx(qid: &str) -> Transaction {
    let raw = format!(
        "From: a@alpha.example\r\nTo: b@example.org\r\nSubject: {qid}\r\n\
         Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{qid}@alpha.example>\r\n\r\nbody\r\n"
    );
    let mut t = Transaction::from_message(raw.as_bytes())
        .with_client("c.example", Some("192.0.2.20:40000".parse().unwrap()))
        .with_helo("c.example")
        .with_mail_from("a@alpha.example")
        .with_rcpts(&["b@example.org"]);
    t.mail_macros.push(("i".into(), qid.into()));
    t.eom_macros.push(("i".into(), qid.into()));
    t.timeout = Duration::from_secs(15);
    t
}

fn accepted(reply: &Reply) -> bool {
    matches!(reply, Reply::Accept | Reply::Continue)
}

fn rows_for(pg: &Cluster, qid: &str) -> i64 {
    pg.psql(&format!(
        "SELECT COUNT(*) FROM messages WHERE job_id = '{qid}'"
    ))
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_stopped_gets_the_store_failure_action_in_time_and_recovers_without_restart() {
    if !testkit::postgres::available() {
        return;
    }
    let pg = tokio::task::block_in_place(Cluster::start);
    let dns = TestDns::start(&zone()).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(BIN, &write_config(dir.path(), "mx1", &pg.url(), dns.addr()));
    let ep = tokio::task::block_in_place(|| d.endpoint());

    let before = run(&ep, &tx("UP1")).await.unwrap();
    assert!(accepted(&before.reply), "{:?}", before.reply);
    assert_eq!(rows_for(&pg, "UP1"), 1);

    tokio::task::block_in_place(|| pg.pg_stop());
    let t = Instant::now();
    let down = run(&ep, &tx("DOWN1")).await.unwrap();
    let took = t.elapsed();
    match &down.reply {
        Reply::Tempfail => {}
        Reply::ReplyCode(text) => assert!(text.starts_with("451"), "{text}"),
        other => panic!("expected a tempfail with the store down, got {other:?}"),
    }
    // history_timeout = 2: the answer comes within it (plus the DNS work and some slack).
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let line = tokio::task::block_in_place(|| d.wait_for("DOWN1: history store"));
    assert!(
        line.contains("postgresql://authmilter@127.0.0.1")
            && line.contains("cannot record message"),
        "{line}"
    );

    tokio::task::block_in_place(|| pg.pg_start());
    // The pool makes new connections on demand: the first message after the restart records.
    let mut accepted_ids = vec!["UP1".to_string()];
    let t = Instant::now();
    loop {
        let qid = format!("AFTER{}", accepted_ids.len());
        let out = run(&ep, &tx(&qid)).await.unwrap();
        if accepted(&out.reply) {
            accepted_ids.push(qid);
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no recovery after PostgreSQL came back: {:?}",
            out.reply
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for qid in &accepted_ids {
        assert_eq!(rows_for(&pg, qid), 1, "{qid}");
    }
    assert_eq!(rows_for(&pg, "DOWN1"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_migrated_and_a_newer_one_is_refused() {
    if !testkit::postgres::available() {
        return;
    }
    let pg = tokio::task::block_in_place(Cluster::start);
    // A database as the first schema version left it, with one row.
    let (v1, sql) = dmarc_policy::history::postgres::MIGRATIONS[0];
    assert_eq!(v1, 1);
    pg.psql(&format!(
        "{sql}; INSERT INTO schema_version VALUES (1);
         INSERT INTO messages (received, job_id, reporter, header_from, envelope_from,
            envelope_to, policy_applied, dkim_aligned, spf_aligned, dmarc_result, disposition,
            action) VALUES (1700000000, 'OLD1', 'mx1.test', 'alpha.example', 'alpha.example',
            'example.org', 'none', 'pass', 'pass', 'pass', 'none', 'accept')"
    ));
    let dns = TestDns::start(&zone()).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(BIN, &write_config(dir.path(), "mx1", &pg.url(), dns.addr()));
    let ep = tokio::task::block_in_place(|| d.endpoint());
    let out = run(&ep, &tx("NEW1")).await.unwrap();
    assert!(accepted(&out.reply), "{:?}", out.reply);
    assert_eq!(
        pg.psql("SELECT version FROM schema_version ORDER BY version"),
        "1\n2\n3"
    );
    assert_eq!(
        pg.psql("SELECT job_id, message_key IS NULL FROM messages ORDER BY id"),
        "OLD1|t\nNEW1|f"
    );
    tokio::task::block_in_place(|| d.wait_for("schema migrated to version 3"));
    drop(d);

    // A database written by a newer dmarc-milter: refused (tempfail), never written to.
    pg.psql("INSERT INTO schema_version VALUES (99)");
    let d = Daemon::start(BIN, &write_config(dir.path(), "mx1", &pg.url(), dns.addr()));
    let ep = tokio::task::block_in_place(|| d.endpoint());
    let out = run(&ep, &tx("NEW2")).await.unwrap();
    assert!(!accepted(&out.reply), "{:?}", out.reply);
    let line = tokio::task::block_in_place(|| d.wait_for("NEW2: history store"));
    assert!(line.contains("schema version 99"), "{line}");
    assert_eq!(rows_for(&pg, "NEW2"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgresql_verified_with_sslrootcert_and_refused_without_it() {
    if !testkit::postgres::available() {
        return;
    }
    // The server takes TLS connections only (as managed databases do).
    let pg = tokio::task::block_in_place(Cluster::start_tls);
    let ca = pg.ca().unwrap().display().to_string();
    let dns = TestDns::start(&zone()).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let verified = format!("{}?sslmode=verify-full&sslrootcert={ca}", pg.url());
    let d = Daemon::start(BIN, &write_config(dir.path(), "mx1", &verified, dns.addr()));
    let ep = tokio::task::block_in_place(|| d.endpoint());
    let out = run(&ep, &tx("TLS1")).await.unwrap();
    assert!(accepted(&out.reply), "{:?}", out.reply);
    assert_eq!(rows_for(&pg, "TLS1"), 1);
    assert_eq!(
        pg.psql(
            "SELECT DISTINCT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'dmarc-milter'"
        ),
        "t"
    );
    drop(d);

    // The report program reads the same store over TLS.
    let target = dmarc_policy::history::store::Target::Postgres(verified.clone());
    tokio::task::block_in_place(|| {
        let mut store = dmarc_reports::store::ReportStore::open(&target).unwrap();
        assert!(store.report_states().unwrap().is_empty());
    });

    // Plain text is refused by the server, and a certificate from another CA by us: both
    // tempfail, with the reason in the log.
    let other_ca = dir.path().join("other-ca.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=someone-else", "-keyout"])
        .arg(dir.path().join("other.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(made.status.success());
    for (qid, url, reason) in [
        (
            "PLAIN1",
            format!("{}?sslmode=disable", pg.url()),
            "no encryption",
        ),
        (
            "WRONGCA1",
            format!(
                "{}?sslmode=verify-full&sslrootcert={}",
                pg.url(),
                other_ca.display()
            ),
            "certificate",
        ),
    ] {
        let d = Daemon::start(BIN, &write_config(dir.path(), qid, &url, dns.addr()));
        let ep = tokio::task::block_in_place(|| d.endpoint());
        let out = run(&ep, &tx(qid)).await.unwrap();
        assert!(!accepted(&out.reply), "{qid}: {:?}", out.reply);
        let line = tokio::task::block_in_place(|| d.wait_for(&format!("{qid}: history store")));
        assert!(line.contains(reason), "{qid}: {line}");
        assert_eq!(rows_for(&pg, qid), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_results_are_recorded_with_their_message_and_a_retry_is_counted_once() {
    if !testkit::postgres::available() {
        return;
    }
    let pg = tokio::task::block_in_place(Cluster::start);
    let dns = TestDns::start(&zone()).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "mx1", &pg.url(), dns.addr());
    // DKIM results from a trusted upstream verifier's Authentication-Results.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replacen(
            "ignore_hosts = []\n",
            "ignore_hosts = []\ntrusted_authserv_ids = [\"up.test\"]\n",
            1,
        ),
    )
    .unwrap();
    let d = Daemon::start(BIN, &cfg);
    let ep = tokio::task::block_in_place(|| d.endpoint());
    let message = |qid: &str| {
        let mut t = tx(qid);
        // The same Message-ID for both tries: a retry of one message.
        for h in t.headers.iter_mut() {
            if h.0.eq_ignore_ascii_case("message-id") {
                h.1 = " <retried@alpha.example>".into();
            }
        }
        t.headers.insert(
            0,
            (
                "Authentication-Results".into(),
                " up.test; dkim=pass header.d=alpha.example header.s=s1;\r\n\tdkim=fail header.d=other.example header.s=s2"
                    .into(),
            ),
        );
        t
    };
    let first = run(&ep, &message("TRY1")).await.unwrap();
    assert!(accepted(&first.reply), "{:?}", first.reply);
    assert_eq!(
        pg.psql(
            "SELECT d.domain, d.selector, d.result FROM dkim_results d
             JOIN messages m ON m.id = d.message_id WHERE m.job_id = 'TRY1' ORDER BY d.rowid"
        ),
        "alpha.example|s1|pass\nother.example|s2|fail"
    );
    let again = run(&ep, &message("TRY2")).await.unwrap();
    assert!(accepted(&again.reply), "{:?}", again.reply);
    tokio::task::block_in_place(|| d.wait_for("TRY2: already recorded in the history"));
    assert_eq!(pg.psql("SELECT COUNT(*) FROM messages"), "1");
    assert_eq!(pg.psql("SELECT COUNT(*) FROM dkim_results"), "2");
}
