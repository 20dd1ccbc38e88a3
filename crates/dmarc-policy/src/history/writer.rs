//! Group commit for the SQLite history: one thread owns the connection and writes whatever
//! records are waiting in one transaction, with one WAL sync for all of them.
//!
//! Why: with a transaction and a sync per message, the history was the largest cost
//! dmarc-milter added per message (BENCHMARKS.md: 0.22 ms of CPU per message without history,
//! about twice that with it). Sessions finish their evaluations concurrently; while one batch is
//! being synced the next ones queue up, so under load a sync serves many messages, and a lone
//! message is written at once (nothing waits for company).
//!
//! What does not change: each record is committed, and synced, before its caller gets its row
//! id (the milter replies only after that), and a record whose deadline passes before the
//! commit is not committed at all: the batch is rolled back and written again without it.
//! A record that fails on its own (it cannot be written) is answered with its error and the
//! others are written again without it, so one bad record never costs the others their rows.

use super::{failure, failure_values, message_values, Failure, Record};
use super::{value, INSERT_DKIM, INSERT_FAILURE, INSERT_MESSAGE};
use rusqlite::{Connection, Transaction};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// At most this many records share a transaction (a bound on the work one sync waits for).
const MAX_BATCH: usize = 256;

/// How long a write without a deadline of its own (a failure report's sample) waits for a busy
/// database.
const NO_DEADLINE_BUSY: Duration = Duration::from_secs(5);

/// What to write.
pub enum Work {
    /// A message's row and its DKIM rows, committed before `commit_by` or not at all.
    Message {
        record: Box<Record>,
        commit_by: Instant,
    },
    /// A failure-report sample (no deadline: the milter does not wait on it).
    Failure(Box<Failure>),
}

impl Work {
    fn deadline(&self) -> Option<Instant> {
        match self {
            Work::Message { commit_by, .. } => Some(*commit_by),
            Work::Failure(_) => None,
        }
    }
}

/// Where the result goes: a blocking caller's channel or an async caller's oneshot.
type Reply = Box<dyn FnOnce(Result<i64, String>) + Send>;

struct Job {
    work: Work,
    reply: Reply,
}

/// The queue to the writer thread; the thread ends when the `Writer` is dropped.
pub struct Writer {
    queue: mpsc::Sender<Job>,
}

const STOPPED: &str = "the history writer has stopped";

impl Writer {
    /// Starts the writer thread on an open, migrated connection.
    pub fn start(conn: Connection) -> Result<Writer, String> {
        let (queue, jobs) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || run(conn, jobs))
            .map_err(|e| format!("cannot start the history writer: {e}"))?;
        Ok(Writer { queue })
    }

    fn submit(&self, work: Work, reply: Reply) {
        if let Err(mpsc::SendError(job)) = self.queue.send(Job { work, reply }) {
            (job.reply)(Err(STOPPED.into()));
        }
    }

    /// Writes and waits (blocking).
    pub fn write(&self, work: Work) -> Result<i64, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            work,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or_else(|_| Err(STOPPED.into()))
    }

    /// Writes and waits without blocking the caller's thread.
    pub async fn write_async(&self, work: Work) -> Result<i64, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            work,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.unwrap_or_else(|_| Err(STOPPED.into()))
    }
}

/// The statements in SQLite's placeholder form, converted once.
struct Statements {
    message: String,
    dkim: String,
    failure: String,
}

fn run(mut conn: Connection, jobs: mpsc::Receiver<Job>) {
    let sql = Statements {
        message: value::for_sqlite(INSERT_MESSAGE),
        dkim: value::for_sqlite(INSERT_DKIM),
        failure: value::for_sqlite(INSERT_FAILURE),
    };
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, &sql, batch);
    }
}

/// How one try at a batch ended.
enum Attempt {
    /// Committed (or the commit failed for all): one result per job.
    Done(Vec<Result<i64, String>>),
    /// Job `i` could not be written: rolled back, nothing committed.
    Failed(usize, String),
    /// A deadline passed before the commit: rolled back, nothing committed.
    Late,
}

fn commit_batch(conn: &mut Connection, sql: &Statements, mut batch: Vec<Job>) {
    loop {
        let now = Instant::now();
        let (late, live): (Vec<Job>, Vec<Job>) = batch
            .into_iter()
            .partition(|j| j.work.deadline().is_some_and(|d| d <= now));
        for j in late {
            (j.reply)(Err(
                "no time left to record the message before the deadline".into(),
            ));
        }
        batch = live;
        if batch.is_empty() {
            return;
        }
        match attempt(conn, sql, &batch) {
            Attempt::Done(results) => {
                for (j, r) in batch.into_iter().zip(results) {
                    (j.reply)(r);
                }
                return;
            }
            Attempt::Failed(i, e) => {
                let j = batch.remove(i);
                (j.reply)(Err(e));
            }
            // The late ones are answered at the top of the loop.
            Attempt::Late => {}
        }
    }
}

fn attempt(conn: &mut Connection, sql: &Statements, batch: &[Job]) -> Attempt {
    let now = Instant::now();
    let busy = batch
        .iter()
        .filter_map(|j| j.work.deadline())
        .min()
        .map(|d| d.saturating_duration_since(now))
        .unwrap_or(NO_DEADLINE_BUSY);
    let all = |e: String| Attempt::Done(batch.iter().map(|_| Err(e.clone())).collect());
    if let Err(e) = conn.busy_timeout(busy) {
        return all(e.to_string());
    }
    let tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => return all(e.to_string()),
    };
    let mut ids = Vec::with_capacity(batch.len());
    for (i, j) in batch.iter().enumerate() {
        match write(&tx, sql, &j.work) {
            Ok(id) => ids.push(id),
            // Dropping the transaction rolls it back.
            Err(e) => return Attempt::Failed(i, e),
        }
    }
    let now = Instant::now();
    if batch
        .iter()
        .any(|j| j.work.deadline().is_some_and(|d| d <= now))
    {
        return Attempt::Late;
    }
    match tx.commit() {
        Ok(()) => Attempt::Done(ids.into_iter().map(Ok).collect()),
        Err(e) => all(failure(conn, e)),
    }
}

/// One job's statements inside the batch's transaction; its row id (the existing row's for a
/// message recorded before: the same message key is one row).
fn write(tx: &Transaction, sql: &Statements, work: &Work) -> Result<i64, String> {
    match work {
        Work::Message { record: r, .. } => {
            let added = tx
                .prepare_cached(&sql.message)
                .and_then(|mut s| s.execute(rusqlite::params_from_iter(message_values(r))))
                .map_err(|e| failure(tx, e))?;
            if added == 0 {
                let id: i64 = tx
                    .query_row(
                        "SELECT id FROM messages WHERE message_key = ?1",
                        [&r.message_key],
                        |row| row.get(0),
                    )
                    .map_err(|e| failure(tx, e))?;
                tracing::info!(
                    "{}: already recorded in the history (row {id}); not counted twice",
                    r.job_id
                );
                return Ok(id);
            }
            let id = tx.last_insert_rowid();
            for d in &r.dkim {
                tx.prepare_cached(&sql.dkim)
                    .and_then(|mut s| {
                        s.execute(rusqlite::params_from_iter(super::dkim_values(id, d)))
                    })
                    .map_err(|e| failure(tx, e))?;
            }
            Ok(id)
        }
        Work::Failure(f) => {
            tx.prepare_cached(&sql.failure)
                .and_then(|mut s| s.execute(rusqlite::params_from_iter(failure_values(f))))
                .map_err(|e| failure(tx, e))?;
            Ok(tx.last_insert_rowid())
        }
    }
}
