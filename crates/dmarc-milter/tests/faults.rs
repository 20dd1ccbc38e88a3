//! Faults of the history store, with the real binary (issue 8, "Faults"):
//!
//! * the store becomes unwritable (the database and its WAL immutable, or the disk full on a tiny
//!   tmpfs): the configured `store_failure` action applies, a log line names the problem, and
//!   the daemon recovers by itself once the store does (no restart);
//! * `kill -9` under load: after a restart on the same database, every message that got an
//!   accept reply before the kill has its row.
//!
//! The unwritable cases need root (`chattr +i`, `mount -t tmpfs`); without it they say so on
//! stderr and pass without checking anything.

use milter_client::{run, Reply, Transaction};
use rusqlite::{Connection, OpenFlags};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::binary::Daemon;

const BIN: &str = env!("CARGO_BIN_EXE_dmarc-milter");

/// A name server on loopback answering NXDOMAIN to every query (the query echoed back with QR,
/// RA and RCODE 3): the DMARC lookup finds no record at once, so messages go through quickly.
fn nxdomain_server() -> std::net::SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n >= 12 {
                buf[2] |= 0x80;
                buf[3] = 0x80 | 3;
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    addr
}

/// A config on a free loopback port recording into `history`. DNS answers NXDOMAIN (no DMARC
/// record: accepted) and SPF is not checked, so each message is quick and gets its history row.
fn write_config(dir: &Path, history: &Path, actions: &str) -> PathBuf {
    let path = dir.join("dmarc-milter.toml");
    std::fs::write(
        &path,
        format!(
            "socket = \"inet:0@127.0.0.1\"\nauthserv_id = \"mx.test.example\"\nspf_self_validate = false\n\
             history = \"{}\"\n[actions]\n{actions}\n\
             [resolver]\nnameservers = [\"{}\"]\ntimeout = 0.5\nattempts = 1\n",
            history.display(),
            nxdomain_server()
        ),
    )
    .unwrap();
    path
}

/// One message with queue id `qid` (the `i` macro, sent at MAIL and at end-of-message).
fn tx(qid: &str) -> Transaction {
    let raw = format!(
        "From: a@example.com\r\nTo: b@example.org\r\nSubject: {qid}\r\n\
         Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{qid}@example.com>\r\n\r\nbody\r\n"
    );
    let mut t = Transaction::from_message(raw.as_bytes());
    t.mail_macros.push(("i".into(), qid.into()));
    t.eom_macros.push(("i".into(), qid.into()));
    t.timeout = Duration::from_secs(10);
    t
}

fn accepted(reply: &Reply) -> bool {
    matches!(reply, Reply::Accept | Reply::Continue)
}

/// Rows recorded for `qid`, read through a separate read-only connection.
fn rows(history: &Path, qid: &str) -> i64 {
    let conn = Connection::open_with_flags(history, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM messages WHERE job_id = ?1",
        [qid],
        |r| r.get(0),
    )
    .unwrap()
}

fn sh(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Files made immutable (`chattr +i`), made mutable again when dropped, so a failing test leaves
/// nothing behind that cannot be deleted.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(files: &[PathBuf]) -> Option<Immutable> {
        let mut done = Immutable(Vec::new());
        for f in files {
            if !sh("chattr", &["+i", f.to_str().unwrap()]) {
                return None;
            }
            done.0.push(f.clone());
        }
        Some(done)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for f in &self.0 {
            sh("chattr", &["-i", f.to_str().unwrap()]);
        }
    }
}

/// A tmpfs of `size` mounted on a fresh directory, lazily unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let opt = format!("size={size}");
        sh(
            "mount",
            &["-t", "tmpfs", "-o", &opt, "tmpfs", at.to_str().unwrap()],
        )
        .then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        sh("umount", &["-l", self.0.to_str().unwrap()]);
    }
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> usize {
    let mut f = std::fs::File::create(path).unwrap();
    let mut total = 0;
    for chunk in [4096usize, 512, 1] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {
            total += chunk;
        }
    }
    let _ = f.sync_all();
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_history_tempfails_with_a_log_line_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.sqlite");
    let cfg = write_config(dir.path(), &history, "");
    let d = Daemon::start(BIN, &cfg);
    let ep = d.endpoint();

    let out = run(&ep, &tx("IMM1")).await.unwrap();
    assert!(accepted(&out.reply), "{:?}", out.reply);
    assert_eq!(rows(&history, "IMM1"), 1);

    let wal = dir.path().join("history.sqlite-wal");
    assert!(wal.exists(), "the store runs in WAL mode");
    let Some(guard) = Immutable::set(&[history.clone(), wal]) else {
        eprintln!("skipping: chattr +i is not available here (needs root and ext4/xfs/tmpfs)");
        return;
    };
    // Default store_failure: the MTA is told to retry, and the log names the store and the cause.
    for qid in ["IMM2", "IMM3"] {
        let out = run(&ep, &tx(qid)).await.unwrap();
        match &out.reply {
            Reply::ReplyCode(r) => assert!(r.starts_with("451 4.3.0 "), "{r}"),
            other => panic!("{qid}: expected a 451 tempfail, got {other:?}"),
        }
        let line = d.wait_for(&format!("{qid}: history store {}", history.display()));
        assert!(
            line.contains("cannot record message: disk I/O error (Operation not permitted"),
            "the cause is named: {line}"
        );
    }

    // The store comes back: the very next message is recorded, same process.
    drop(guard);
    let out = run(&ep, &tx("IMM4")).await.unwrap();
    assert!(accepted(&out.reply), "{:?}", out.reply);
    assert_eq!(rows(&history, "IMM4"), 1);
    assert_eq!(rows(&history, "IMM2") + rows(&history, "IMM3"), 0);
    let out = run(&ep, &tx("IMM5")).await.unwrap();
    assert!(accepted(&out.reply), "{:?}", out.reply);
    assert_eq!(rows(&history, "IMM5"), 1);
}

/// The disk holding the history fills up, then space is freed again.
async fn disk_full(actions: &str, expect_failed: fn(&Reply) -> bool) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mnt) = Tmpfs::mount(&dir.path().join("mnt"), "512k") else {
        eprintln!("skipping: cannot mount a tmpfs here (needs root)");
        return;
    };
    let history = mnt.0.join("history.sqlite");
    let cfg = write_config(dir.path(), &history, actions);
    let d = Daemon::start(BIN, &cfg);
    let ep = d.endpoint();

    let out = run(&ep, &tx("FULL1")).await.unwrap();
    assert!(accepted(&out.reply), "{:?}", out.reply);
    assert_eq!(rows(&history, "FULL1"), 1);

    let filler = mnt.0.join("filler");
    assert!(fill(&filler) > 0);
    let mut failed = Vec::new();
    for i in 2..=4 {
        let qid = format!("FULL{i}");
        let out = run(&ep, &tx(&qid)).await.unwrap();
        assert!(expect_failed(&out.reply), "{qid}: {:?}", out.reply);
        let line = d.wait_for(&format!("{qid}: history store {}", history.display()));
        assert!(line.contains("cannot record message: "), "{line}");
        assert!(line.contains("full"), "the cause is named: {line}");
        failed.push(qid);
    }

    std::fs::remove_file(&filler).unwrap();
    for qid in ["FULL5", "FULL6"] {
        let out = run(&ep, &tx(qid)).await.unwrap();
        assert!(accepted(&out.reply), "{:?}", out.reply);
        assert_eq!(
            rows(&history, qid),
            1,
            "{qid} recorded after the space came back"
        );
    }
    for qid in &failed {
        assert_eq!(rows(&history, qid), 0, "{qid}");
    }
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_tempfails_by_default_and_recovers_without_restart() {
    disk_full(
        "",
        |r| matches!(r, Reply::ReplyCode(c) if c.starts_with("451 4.3.0 ")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_with_store_failure_accept_accepts_and_recovers() {
    disk_full("store_failure = \"accept\"", accepted).await;
}

/// Messages sent in all, clients at a time, and after how many accepts the daemon is killed.
const MESSAGES: usize = 300;
const CONCURRENT: usize = 8;
const KILL_AFTER: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_accepted_message() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.sqlite");
    let cfg = write_config(dir.path(), &history, "");
    let mut d = Daemon::start(BIN, &cfg);
    let ep = d.endpoint();

    let next = Arc::new(AtomicUsize::new(0));
    let accepts = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let errors = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CONCURRENT {
        let (ep, next, accepts, acked, errors, killed) = (
            ep.clone(),
            next.clone(),
            accepts.clone(),
            acked.clone(),
            errors.clone(),
            killed.clone(),
        );
        clients.push(tokio::spawn(async move {
            // Like an MTA: keep sending; a client stops at its first error after the kill.
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= MESSAGES {
                    return;
                }
                let qid = format!("K{i:04}");
                match run(&ep, &tx(&qid)).await {
                    Ok(out) if accepted(&out.reply) => {
                        acked.lock().unwrap().push(qid);
                        accepts.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(out) if !killed.load(Ordering::SeqCst) => {
                        panic!("{qid}: unexpected reply {:?}", out.reply)
                    }
                    Ok(_) => {
                        errors.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::SeqCst);
                        assert!(
                            killed.load(Ordering::SeqCst),
                            "{qid}: error before the kill: {e}"
                        );
                        return;
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepts.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(Instant::now() < deadline, "load did not get going");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    killed.store(true, Ordering::SeqCst);
    d.kill9();
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let sent = next.load(Ordering::SeqCst).min(MESSAGES);
    eprintln!(
        "kill -9 after {} accepts; {} accepted in all, {} client errors, {sent} sessions started",
        KILL_AFTER,
        acked.len(),
        errors.load(Ordering::SeqCst)
    );
    assert!(acked.len() >= KILL_AFTER);
    assert!(
        errors.load(Ordering::SeqCst) > 0,
        "the kill came after all messages were sent: nothing was in flight"
    );

    // Restart on the same database: it opens (WAL recovery) and keeps recording.
    let d = Daemon::start(BIN, &cfg);
    let ep = d.endpoint();
    let out = run(&ep, &tx("AFTER")).await.unwrap();
    assert!(accepted(&out.reply), "{:?}", out.reply);
    drop(d);

    let conn = Connection::open_with_flags(&history, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut missing = Vec::new();
    for qid in &acked {
        let n: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM messages WHERE job_id = ?1",
                [qid],
                |r| r.get(0),
            )
            .unwrap();
        if n != 1 {
            missing.push(format!("{qid}: {n} rows"));
        }
    }
    assert!(
        missing.is_empty(),
        "accepted but not recorded once: {missing:?}"
    );
    let total: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM messages WHERE job_id LIKE 'K%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    eprintln!("{total} rows for {} accepts", acked.len());
    // Rows may exceed the accepts (committed, reply lost in the kill), never the sessions started.
    assert!(
        total as usize >= acked.len() && total as usize <= sent,
        "{total}"
    );
    assert_eq!(rows(&history, "AFTER"), 1);
}
