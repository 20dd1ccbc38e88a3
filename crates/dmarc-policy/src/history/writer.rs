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

/// Asks the scheduler not to let this thread preempt the one that wakes it (`SCHED_BATCH`,
/// same share of the CPU, same nice value).
///
/// Why: woken by each record a session hands over, the writer would otherwise run at once, ahead
/// of the session thread that sent it (the scheduler favours a thread that slept), commit a batch
/// of one or two, and switch back: about two thread switches per message when both share a core,
/// which cost more than the SQLite work itself (BENCHMARKS.md "Pinned": 1.9 switches and 0.17 ms
/// of CPU per message before, 0.7 and 0.14 ms after, rows per sync 3 → 7.5). Batched, the writer
/// runs when the session thread has handed over everything it had ready (or on another core at
/// once), so one sync serves those rows. What it costs: on a core busy with other work, a commit
/// may wait for the running task's time slice (milliseconds), far inside the commit deadline.
/// Failing to set it (not Linux, a sandbox forbidding it) changes only the speed.
fn prefer_batches() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param that outlives the call; pid 0 is this thread,
        // and SCHED_BATCH with priority 0 is a valid policy for any unprivileged thread.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc != 0 {
            tracing::debug!(
                "history writer: cannot switch to SCHED_BATCH ({}); commits stay correct, \
                 only batching is worse",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn run(mut conn: Connection, jobs: mpsc::Receiver<Job>) {
    prefer_batches();
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The scheduling policy of this process's thread named `name`.
    fn policy_of(name: &str) -> Option<i32> {
        for entry in std::fs::read_dir("/proc/self/task").ok()? {
            let dir = entry.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if comm.trim_end() == name {
                let tid: libc::pid_t = dir.file_name()?.to_str()?.parse().ok()?;
                // SAFETY: sched_getscheduler only reads the policy of thread `tid`.
                return Some(unsafe { libc::sched_getscheduler(tid) });
            }
        }
        None
    }

    #[test]
    fn writer_thread_runs_batched() {
        let conn = Connection::open_in_memory().unwrap();
        let writer = Writer::start(conn).unwrap();
        // The thread sets its policy first thing; wait for it to be there.
        let mut policy = None;
        for _ in 0..200 {
            policy = policy_of("history-writer");
            if policy == Some(libc::SCHED_BATCH) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(policy, Some(libc::SCHED_BATCH), "policy of history-writer");
        drop(writer);
    }
}
