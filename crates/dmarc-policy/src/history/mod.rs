//! The history store: one row per evaluated message with everything an RFC 9990 aggregate
//! report needs, in embedded SQLite (schema in docs/dmarc-history.md).
//!
//! Durability is the point: OpenDMARC's HistoryFile is appended without fsync, so a crash loses
//! report data silently. Here every row is committed, and synced, before the milter answers
//! end-of-message; when that fails the caller applies the configured action (tempfail by
//! default), so the MTA retries and nothing is lost without a log line.
//!
//! Journal: WAL with `synchronous=FULL`. WAL lets a report generator read while the milter
//! writes; FULL syncs the WAL on every commit. `NORMAL` would be faster but, in WAL mode, a
//! power loss can roll back the last commits, which contradicts "committed before the reply".

pub mod postgres;
pub mod store;
pub mod tls;
pub mod value;
mod writer;

pub use store::HistoryStore;

use rusqlite::{Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use value::Val;

/// The schema this code writes; bumped with every incompatible change, with a migration.
pub const SCHEMA_VERSION: i64 = 3;

const SCHEMA_TABLES: &str = "
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY,
    received        INTEGER NOT NULL,
    job_id          TEXT    NOT NULL,
    reporter        TEXT    NOT NULL,
    source_ip       TEXT,
    header_from     TEXT    NOT NULL,
    envelope_from   TEXT    NOT NULL,
    envelope_to     TEXT    NOT NULL,
    policy_domain   TEXT,
    p               TEXT,
    sp              TEXT,
    np              TEXT,
    adkim           TEXT,
    aspf            TEXT,
    testing         INTEGER,
    pct             INTEGER,
    psd             TEXT,
    rua             TEXT,
    policy_applied  TEXT    NOT NULL,
    spf_domain      TEXT,
    spf_scope       TEXT,
    spf_result      TEXT,
    dkim_aligned    TEXT    NOT NULL,
    spf_aligned     TEXT    NOT NULL,
    dmarc_result    TEXT    NOT NULL,
    disposition     TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    override_reason TEXT,
    message_key     TEXT,
    override_comment TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_domain ON messages (policy_domain, received);
CREATE TABLE IF NOT EXISTS dkim_results (
    message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    domain     TEXT    NOT NULL,
    selector   TEXT    NOT NULL,
    result     TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS dkim_results_by_message ON dkim_results (message_id);
CREATE TABLE IF NOT EXISTS failures (
    id              INTEGER PRIMARY KEY,
    received        INTEGER NOT NULL,
    job_id          TEXT    NOT NULL,
    reporter        TEXT    NOT NULL,
    policy_domain   TEXT    NOT NULL,
    ruf             TEXT    NOT NULL,
    fo              TEXT    NOT NULL,
    source_ip       TEXT,
    mail_from       TEXT    NOT NULL,
    rcpt_to         TEXT    NOT NULL,
    auth_results    TEXT    NOT NULL,
    dkim            TEXT    NOT NULL,
    spf             TEXT,
    dkim_aligned    INTEGER NOT NULL,
    spf_aligned     INTEGER NOT NULL,
    disposition     TEXT    NOT NULL,
    headers         TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending',
    finished        INTEGER,
    sent_to         TEXT,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS failures_by_state ON failures (state);
";

/// The largest header block kept for a failure report.
pub const MAX_FAILURE_HEADERS: usize = 64 * 1024;

/// A message that failed for a domain asking for failure reports (`ruf=`), kept for the report
/// program (`failure_reports = true`; docs/dmarc-reports.md). Which failures are reported is
/// decided there, from `fo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub received: i64,
    pub job_id: String,
    pub reporter: String,
    pub policy_domain: String,
    /// The ruf URIs (`mailto:ADDRESS[!BYTES]`).
    pub ruf: Vec<String>,
    /// The record's `fo=` (`0`, `1`, `d`, `s`, `:`-separated).
    pub fo: String,
    pub source_ip: Option<String>,
    pub mail_from: String,
    pub rcpt_to: String,
    /// Our Authentication-Results value.
    pub auth_results: String,
    pub dkim: Vec<DkimEntry>,
    pub spf: Option<(String, String, String)>,
    pub dkim_aligned: bool,
    pub spf_aligned: bool,
    pub disposition: String,
    /// The header block as received (at most [`MAX_FAILURE_HEADERS`] bytes).
    pub headers: String,
}

/// Report mail is never the subject of a failure report (RFC 7489 §7.3, no report loops): a
/// multipart/report, or a message with an aggregate report's subject.
pub fn is_report_mail(headers: &str) -> bool {
    let lower = headers.to_ascii_lowercase();
    lower.lines().any(|l| {
        (l.starts_with("content-type:") && l.contains("multipart/report"))
            || l.starts_with("subject: report domain:")
    })
}

/// What the domain published, as found at the policy domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    pub p: String,
    pub sp: String,
    pub np: String,
    pub adkim: String,
    pub aspf: String,
    pub testing: bool,
    /// RFC 7489 `pct=`, when the record carries it (DMARCbis dropped it).
    pub pct: Option<u8>,
    pub psd: String,
    pub rua: Vec<String>,
}

/// One DKIM result as reported (`auth_results/dkim` of RFC 9990).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimEntry {
    pub domain: String,
    pub selector: String,
    pub result: String,
}

/// One evaluated message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Unix time (seconds).
    pub received: i64,
    pub job_id: String,
    /// Who evaluated: our authserv-id.
    pub reporter: String,
    pub source_ip: Option<String>,
    /// RFC5322.From domain (empty when there is none; several joined with `,`).
    pub header_from: String,
    /// RFC5321.MailFrom domain (empty for the null sender).
    pub envelope_from: String,
    /// Envelope recipient domains, `,`-joined (RFC 9990 `envelope_to`).
    pub envelope_to: String,
    /// Where the DMARC record was found; `None`: no record.
    pub policy_domain: Option<String>,
    pub published: Option<Published>,
    /// The policy that applied after sp/np/t/pct: none, quarantine, reject.
    pub policy_applied: String,
    /// SPF: domain, scope (`mfrom` or `helo`), result.
    pub spf: Option<(String, String, String)>,
    pub dkim: Vec<DkimEntry>,
    /// `pass` or `fail` (RFC 9990 `policy_evaluated`).
    pub dkim_aligned: String,
    pub spf_aligned: String,
    /// pass, fail, none, temperror, permerror.
    pub dmarc_result: String,
    /// none, quarantine, reject: what was applied.
    pub disposition: String,
    /// The milter action: accept, quarantine, reject, tempfail.
    pub action: String,
    /// RFC 9990 `reason/type` when the disposition differs from the policy (e.g.
    /// `local_policy`, `sampled_out`).
    pub override_reason: Option<String>,
    /// RFC 9990 `reason/comment`: for the ARC override `arc=pass as[N].d=SEALER aar dkim=pass`.
    pub override_comment: Option<String>,
    /// One message once: see [`message_key`]. A second record with the same key is not added.
    pub message_key: String,
}

/// The identity of a message for the history: who evaluated it (our authserv-id), the client,
/// the envelope and the Message-ID. A message the MTA retries after a temporary failure comes
/// back with a new queue id but all of these unchanged, so it is recorded once. Without a
/// Message-ID the queue id stands in (such a retry cannot be recognised and is recorded again).
/// A 128-bit FNV-1a digest, stable across versions and platforms, written as hex.
pub fn message_key(
    reporter: &str,
    env: &chassis::envelope::Envelope,
    message_ids: &[String],
) -> String {
    let mut rcpts: Vec<String> = env.rcpts.iter().map(|r| r.to_ascii_lowercase()).collect();
    rcpts.sort();
    let message = match message_ids
        .first()
        .map(|m| m.trim())
        .filter(|m| !m.is_empty())
    {
        Some(m) => format!("mid:{m}"),
        None => format!("qid:{}", env.queue_id()),
    };
    let client = env.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
    let parts = [
        reporter.to_ascii_lowercase(),
        client,
        env.mail_from.to_ascii_lowercase(),
        rcpts.join(","),
        message,
    ];
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0u8)) {
            h ^= u128::from(b);
            h = h.wrapping_mul(0x0000000001000000000000000000013B);
        }
    }
    format!("{h:032x}")
}

/// The statements both stores run, with PostgreSQL placeholders (see [`value::for_sqlite`]).
pub const INSERT_MESSAGE: &str = "INSERT INTO messages (received, job_id, reporter, source_ip,
        header_from, envelope_from, envelope_to, policy_domain, p, sp, np, adkim, aspf, testing,
        pct, psd, rua, policy_applied, spf_domain, spf_scope, spf_result, dkim_aligned,
        spf_aligned, dmarc_result, disposition, action, override_reason, message_key,
        override_comment)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
        $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29)
     ON CONFLICT (message_key) DO NOTHING";

pub const INSERT_DKIM: &str =
    "INSERT INTO dkim_results (message_id, domain, selector, result) VALUES ($1, $2, $3, $4)";

pub const INSERT_FAILURE: &str = "INSERT INTO failures (received, job_id, reporter,
        policy_domain, ruf, fo, source_ip, mail_from, rcpt_to, auth_results, dkim, spf,
        dkim_aligned, spf_aligned, disposition, headers)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";

/// The parameters of [`INSERT_MESSAGE`] for `r`.
pub fn message_values(r: &Record) -> Vec<Val> {
    let p = r.published.clone().unwrap_or_default();
    let has = r.published.is_some();
    let opt = |s: &str| Val::from(has.then_some(s));
    vec![
        r.received.into(),
        (&r.job_id).into(),
        (&r.reporter).into(),
        r.source_ip.as_ref().into(),
        (&r.header_from).into(),
        (&r.envelope_from).into(),
        (&r.envelope_to).into(),
        r.policy_domain.as_ref().into(),
        opt(&p.p),
        opt(&p.sp),
        opt(&p.np),
        opt(&p.adkim),
        opt(&p.aspf),
        has.then_some(p.testing).into(),
        p.pct.map(i64::from).into(),
        opt(&p.psd),
        has.then(|| p.rua.join(" ")).as_ref().into(),
        (&r.policy_applied).into(),
        r.spf.as_ref().map(|s| &s.0).into(),
        r.spf.as_ref().map(|s| &s.1).into(),
        r.spf.as_ref().map(|s| &s.2).into(),
        (&r.dkim_aligned).into(),
        (&r.spf_aligned).into(),
        (&r.dmarc_result).into(),
        (&r.disposition).into(),
        (&r.action).into(),
        r.override_reason.as_ref().into(),
        (&r.message_key).into(),
        r.override_comment.as_ref().into(),
    ]
}

/// The parameters of [`INSERT_DKIM`] for one DKIM result of message row `id`.
pub fn dkim_values(id: i64, d: &DkimEntry) -> Vec<Val> {
    vec![
        id.into(),
        (&d.domain).into(),
        (&d.selector).into(),
        (&d.result).into(),
    ]
}

/// The parameters of [`INSERT_FAILURE`] for `f`.
pub fn failure_values(f: &Failure) -> Vec<Val> {
    let dkim: Vec<String> = f
        .dkim
        .iter()
        .map(|d| format!("{} {} {}", d.domain, d.selector, d.result))
        .collect();
    vec![
        f.received.into(),
        (&f.job_id).into(),
        (&f.reporter).into(),
        (&f.policy_domain).into(),
        f.ruf.join(" ").as_str().into(),
        (&f.fo).into(),
        f.source_ip.as_ref().into(),
        (&f.mail_from).into(),
        (&f.rcpt_to).into(),
        (&f.auth_results).into(),
        dkim.join(";").as_str().into(),
        f.spf
            .as_ref()
            .map(|(d, s, r)| format!("{d} {s} {r}"))
            .as_ref()
            .into(),
        f.dkim_aligned.into(),
        f.spf_aligned.into(),
        (&f.disposition).into(),
        (&f.headers).into(),
    ]
}

/// An open history database. Its connection belongs to the writer thread (group commit, see
/// [`writer`]).
pub struct Store {
    path: PathBuf,
    writer: writer::Writer,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings the schema up to date.
    pub fn open(path: &Path) -> Result<Store, String> {
        let fail = |e: rusqlite::Error| format!("history {}: {e}", path.display());
        let conn = Connection::open(path).map_err(fail)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(fail)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(fail)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!(
                "history {}: cannot switch to WAL (journal mode is {mode})",
                path.display()
            ));
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(fail)?;
        conn.execute_batch(SCHEMA_TABLES).map_err(fail)?;
        let found: Option<i64> = conn
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .optional()
            .map_err(fail)?
            .flatten();
        match found {
            None => {
                conn.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [SCHEMA_VERSION],
                )
                .map_err(fail)?;
            }
            Some(v) if v == SCHEMA_VERSION => {}
            Some(1) => {
                // Version 1 had no message key: add it (old rows keep NULL, which never
                // collides), then version 3's override comment, and record the new version,
                // in one transaction.
                conn.execute_batch(
                    "BEGIN IMMEDIATE;
                     ALTER TABLE messages ADD COLUMN message_key TEXT;
                     ALTER TABLE messages ADD COLUMN override_comment TEXT;
                     INSERT INTO schema_version (version) VALUES (3);
                     COMMIT;",
                )
                .map_err(fail)?;
            }
            Some(2) => {
                // Version 2 had no override comment (the ARC override's `reason/comment`).
                conn.execute_batch(
                    "BEGIN IMMEDIATE;
                     ALTER TABLE messages ADD COLUMN override_comment TEXT;
                     INSERT INTO schema_version (version) VALUES (3);
                     COMMIT;",
                )
                .map_err(fail)?;
            }
            Some(v) => {
                return Err(format!(
                "history {}: schema version {v}, this dmarc-milter writes version {SCHEMA_VERSION}",
                path.display()
            ))
            }
        }
        conn.execute_batch(
            "CREATE UNIQUE INDEX IF NOT EXISTS messages_by_key ON messages (message_key);",
        )
        .map_err(fail)?;
        Ok(Store {
            path: path.to_path_buf(),
            writer: writer::Writer::start(conn)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one record, committed (and synced) only while `commit_by` has not passed
    /// (waiting for a busy database at most until then), possibly in one transaction with
    /// other sessions' records; returns its row id, or the existing row's when a record with
    /// the same message key is already there. Blocking; [`Store::insert_async`] is the same
    /// without blocking the thread.
    pub fn insert(&self, r: &Record, commit_by: Instant) -> Result<i64, String> {
        self.writer.write(writer::Work::Message {
            record: Box::new(r.clone()),
            commit_by,
        })
    }

    /// [`Store::insert`] for async callers.
    pub async fn insert_async(&self, record: Record, commit_by: Instant) -> Result<i64, String> {
        self.writer
            .write_async(writer::Work::Message {
                record: Box::new(record),
                commit_by,
            })
            .await
    }

    /// Keeps a failing message for a failure report. Blocking.
    pub fn insert_failure(&self, f: &Failure) -> Result<i64, String> {
        self.writer
            .write(writer::Work::Failure(Box::new(f.clone())))
    }

    /// [`Store::insert_failure`] for async callers.
    pub async fn insert_failure_async(&self, f: Failure) -> Result<i64, String> {
        self.writer
            .write_async(writer::Work::Failure(Box::new(f)))
            .await
    }
}

/// `e` as a log message; when an OS call failed (a read-only or immutable file, an I/O error),
/// with the OS error, since SQLite's own text ("disk I/O error") does not say what went wrong.
/// Nothing else is needed to recover: SQLite rolls the transaction back and the next insert on
/// the same connection tries again.
fn failure(conn: &Connection, e: rusqlite::Error) -> String {
    use rusqlite::ErrorCode::{CannotOpen, SystemIoFailure};
    // SQLite keeps the OS error code of the last SQLITE_IOERR or SQLITE_CANTOPEN only.
    if !matches!(e.sqlite_error_code(), Some(SystemIoFailure | CannotOpen)) {
        return e.to_string();
    }
    // SAFETY: the handle belongs to `conn`, which is borrowed for the whole call, and
    // sqlite3_system_errno only reads the connection's last OS error code.
    let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) };
    if errno != 0 {
        format!("{e} ({})", std::io::Error::from_raw_os_error(errno))
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn sample() -> Record {
        keyed("k1")
    }

    fn keyed(key: &str) -> Record {
        Record {
            received: 1_700_000_000,
            job_id: "Q1".into(),
            reporter: "mx.test".into(),
            source_ip: Some("192.0.2.1".into()),
            header_from: "example.com".into(),
            envelope_from: "example.com".into(),
            envelope_to: "example.org".into(),
            policy_domain: Some("example.com".into()),
            published: Some(Published {
                p: "reject".into(),
                pct: Some(50),
                ..Default::default()
            }),
            policy_applied: "reject".into(),
            spf: Some(("example.com".into(), "mfrom".into(), "pass".into())),
            dkim: vec![DkimEntry {
                domain: "example.com".into(),
                selector: "s".into(),
                result: "pass".into(),
            }],
            dkim_aligned: "pass".into(),
            spf_aligned: "pass".into(),
            dmarc_result: "pass".into(),
            disposition: "none".into(),
            action: "accept".into(),
            override_reason: None,
            override_comment: None,
            message_key: key.into(),
        }
    }

    fn rows(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn rows_round_trip_and_schema_is_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite");
        let store = Store::open(&path).unwrap();
        let id = store.insert(&sample(), soon()).unwrap();
        drop(store);
        // Reopening an up-to-date database is fine and keeps the rows.
        let _again = Store::open(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        let (v,): (i64,) = conn
            .query_row("SELECT version FROM schema_version", [], |r| {
                Ok((r.get(0)?,))
            })
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let (p, pct, sel): (String, i64, String) = conn
            .query_row(
                "SELECT m.p, m.pct, d.selector FROM messages m JOIN dkim_results d ON d.message_id = m.id WHERE m.id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((p.as_str(), pct, sel.as_str()), ("reject", 50, "s"));
    }

    /// A write failure names the OS error, and the same store records again once the file is
    /// writable (no reopen). Needs `chattr +i` (root on ext4/xfs/tmpfs); skipped otherwise.
    #[test]
    fn write_failure_names_the_os_error_and_the_store_recovers() {
        let chattr = |flag: &str, p: &Path| {
            std::process::Command::new("chattr")
                .arg(flag)
                .arg(p)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite");
        let store = Store::open(&path).unwrap();
        store.insert(&keyed("a"), soon()).unwrap();
        let wal = dir.path().join("h.sqlite-wal");
        if !chattr("+i", &wal) {
            eprintln!("skipping: chattr +i not available");
            return;
        }
        let failed = store.insert(&keyed("b"), soon());
        chattr("-i", &wal);
        let e = failed.unwrap_err();
        assert!(e.contains("disk I/O error (Operation not permitted"), "{e}");
        store.insert(&keyed("b"), soon()).unwrap();
        assert_eq!(rows(&path), 2);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite");
        drop(Store::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE schema_version SET version = 99", [])
            .unwrap();
        let e = Store::open(&path).err().unwrap();
        assert!(e.contains("schema version 99"), "{e}");
    }

    /// A retried message (same key) is one row, with its DKIM results once.
    #[test]
    fn the_same_message_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite");
        let store = Store::open(&path).unwrap();
        let first = store.insert(&sample(), soon()).unwrap();
        let mut retry = sample();
        retry.job_id = "Q2".into();
        assert_eq!(store.insert(&retry, soon()).unwrap(), first);
        store.insert(&keyed("other"), soon()).unwrap();
        assert_eq!(rows(&path), 2);
        let dkim: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM dkim_results", [], |r| r.get(0))
            .unwrap();
        assert_eq!(dkim, 2);
    }

    /// Past the deadline nothing is committed, also when the database was busy until then.
    #[test]
    fn nothing_is_committed_past_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite");
        let store = Store::open(&path).unwrap();
        let e = store.insert(&sample(), Instant::now()).unwrap_err();
        assert!(e.contains("deadline"), "{e}");
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let t = Instant::now();
        let e = store
            .insert(&sample(), Instant::now() + Duration::from_millis(300))
            .unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "waited {:?}",
            t.elapsed()
        );
        assert!(
            e.contains("locked") || e.contains("busy") || e.contains("deadline"),
            "{e}"
        );
        blocker.execute_batch("ROLLBACK").unwrap();
        assert_eq!(rows(&path), 0);
        store.insert(&sample(), soon()).unwrap();
        assert_eq!(rows(&path), 1);
    }

    /// Sessions writing at once share transactions (group commit): every record gets its own
    /// committed row and id.
    #[test]
    fn concurrent_writers_each_get_a_committed_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite");
        let store = std::sync::Arc::new(Store::open(&path).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| store.insert(&keyed(&format!("t{t}-{i}")), soon()).unwrap())
                        .collect::<Vec<i64>>()
                })
            })
            .collect();
        let mut ids: Vec<i64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 200);
        assert_eq!(rows(&path), 200);
        let dkim: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM dkim_results", [], |r| r.get(0))
            .unwrap();
        assert_eq!(dkim, 200);
    }

    /// A record whose deadline passes while it waits behind a busy batch is not committed;
    /// the one queued beside it with time left is.
    #[test]
    fn a_record_late_in_the_queue_is_not_committed_its_neighbour_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite");
        let store = std::sync::Arc::new(Store::open(&path).unwrap());
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let t0 = Instant::now();
        let spawn = |key: &'static str, delay_ms: u64, budget_ms: u64| {
            let store = store.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay_ms));
                store.insert(
                    &keyed(key),
                    Instant::now() + Duration::from_millis(budget_ms),
                )
            })
        };
        // The writer waits on the lock for "first"; the other two queue meanwhile.
        let first = spawn("first", 0, 600);
        let late = spawn("late", 100, 100);
        let neighbour = spawn("neighbour", 100, 5_000);
        std::thread::sleep(Duration::from_millis(400));
        blocker.execute_batch("ROLLBACK").unwrap();
        assert!(first.join().unwrap().is_ok());
        let e = late.join().unwrap().unwrap_err();
        assert!(e.contains("deadline"), "{e}");
        assert!(neighbour.join().unwrap().is_ok());
        assert!(t0.elapsed() < Duration::from_secs(3));
        let keys: Vec<String> = Connection::open(&path)
            .unwrap()
            .prepare("SELECT message_key FROM messages ORDER BY message_key")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(keys, ["first", "neighbour"]);
    }

    /// A version-1 database (no message key) is migrated in place and keeps its rows.
    #[test]
    fn version_1_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            let v1 = SCHEMA_TABLES.replace(
                ",\n    message_key     TEXT,\n    override_comment TEXT",
                "",
            );
            assert!(!v1.contains("message_key"));
            conn.execute_batch(&v1).unwrap();
            conn.execute_batch(
                "INSERT INTO schema_version (version) VALUES (1);
                 INSERT INTO messages (received, job_id, reporter, header_from, envelope_from,
                    envelope_to, policy_applied, dkim_aligned, spf_aligned, dmarc_result,
                    disposition, action) VALUES (1, 'Q0', 'mx', 'a', 'a', 'b', 'none', 'fail',
                    'fail', 'none', 'none', 'accept');",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        store.insert(&sample(), soon()).unwrap();
        store.insert(&sample(), soon()).unwrap();
        assert_eq!(rows(&path), 2);
        let v: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    /// A version-2 database (no override comment) is migrated in place and keeps its rows.
    #[test]
    fn version_2_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            let v2 = SCHEMA_TABLES.replace(",\n    override_comment TEXT", "");
            assert!(!v2.contains("override_comment"));
            conn.execute_batch(&v2).unwrap();
            conn.execute_batch("INSERT INTO schema_version (version) VALUES (2);")
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let mut r = sample();
        r.override_reason = Some("local_policy".into());
        r.override_comment = Some("arc=pass as[1].d=lists.example aar dkim=pass".into());
        let id = store.insert(&r, soon()).unwrap();
        let (v, comment): (i64, String) = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT (SELECT MAX(version) FROM schema_version), override_comment FROM messages WHERE id = ?1",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!(v, 3);
        assert_eq!(comment, "arc=pass as[1].d=lists.example aar dkim=pass");
    }
}
