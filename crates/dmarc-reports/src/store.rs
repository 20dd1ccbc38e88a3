//! The report program's side of the history database: which rows went into which report, and
//! each report's state. Two tables of its own next to dmarc-milter's (docs/dmarc-reports.md):
//!
//! - `reports`: one row per (policy domain, period), `UNIQUE (policy_domain, begin)`, so a
//!   period is never reported twice; state `pending` → `sent` | `skipped` | `expired`.
//! - `report_rows`: message row → report, `PRIMARY KEY (message_id)`, so a message is claimed
//!   once. `report` is NULL for a row that arrived after its period had been reported.
//!
//! A report and all its rows are claimed in one transaction; the report's content is a pure
//! function of its claimed rows, so after a crash between claiming and "sent" the next run builds
//! the same report (same id, same Message-ID) and sends it again: at most that one report twice,
//! never a row twice in different reports, never a row lost. The mail itself cannot be part of
//! an SQLite transaction without holding the database's write lock (and stalling the milter's
//! commits) for as long as the MTA takes.

use dmarc_policy::history::{DkimEntry, Published, Record};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::time::Duration;

const REPORT_TABLES: &str = "
CREATE TABLE IF NOT EXISTS reports (
    id            INTEGER PRIMARY KEY,
    report_id     TEXT    NOT NULL UNIQUE,
    policy_domain TEXT    NOT NULL,
    begin         INTEGER NOT NULL,
    end           INTEGER NOT NULL,
    rua           TEXT    NOT NULL,
    rows          INTEGER NOT NULL,
    state         TEXT    NOT NULL,
    created       INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    finished      INTEGER,
    UNIQUE (policy_domain, begin)
);
CREATE INDEX IF NOT EXISTS reports_by_state ON reports (state);
CREATE TABLE IF NOT EXISTS report_rows (
    message_id INTEGER PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    report     INTEGER REFERENCES reports (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS report_rows_by_report ON report_rows (report);
";

/// The dmarc-milter schema versions this program reads.
const KNOWN_VERSIONS: [i64; 1] = [dmarc_policy::history::SCHEMA_VERSION];

/// A report that has been claimed but is not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: i64,
    pub report_id: String,
    pub policy_domain: String,
    pub begin: i64,
    pub end: i64,
    /// The rua URIs as published (space-separated), fixed when the report was claimed.
    pub rua: String,
    pub rows: i64,
    pub created: i64,
    pub attempts: i64,
}

/// A kept failure, not yet reported.
#[derive(Debug, Clone)]
pub struct PendingFailure {
    pub id: i64,
    pub ruf: String,
    pub fo: String,
    pub reporter: String,
    pub incident: crate::failure::Incident,
}

/// What one claim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// A new report with this many rows.
    Report(Pending),
    /// The period had been reported already; this many late rows were set aside.
    Late(usize),
    /// Nothing to claim (another process got there first).
    Nothing,
}

pub struct ReportStore {
    path: PathBuf,
    conn: Connection,
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> String + '_ {
    move |e| format!("history {}: {e}", path.display())
}

impl ReportStore {
    /// Opens dmarc-milter's history database (it must exist and have a known schema) and adds
    /// the report tables if they are missing.
    pub fn open(path: &Path) -> Result<ReportStore, String> {
        if !path.exists() {
            return Err(format!("history {}: no such database", path.display()));
        }
        let fail = sql(path);
        let conn = Connection::open(path).map_err(&fail)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(&fail)?;
        conn.execute_batch("PRAGMA foreign_keys=ON; PRAGMA synchronous=FULL;")
            .map_err(&fail)?;
        let version: Option<i64> = conn
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .optional()
            .map_err(|e| {
                format!(
                    "history {}: not a dmarc-milter history database ({e})",
                    path.display()
                )
            })?
            .flatten();
        match version {
            Some(v) if KNOWN_VERSIONS.contains(&v) => {}
            v => {
                return Err(format!(
                    "history {}: schema version {}, this program reads version {}",
                    path.display(),
                    v.map(|v| v.to_string()).unwrap_or_else(|| "none".into()),
                    dmarc_policy::history::SCHEMA_VERSION
                ))
            }
        }
        conn.execute_batch(REPORT_TABLES).map_err(&fail)?;
        Ok(ReportStore {
            path: path.to_path_buf(),
            conn,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a transaction around everything that follows (a dry run rolls it back).
    pub fn begin(&mut self) -> Result<(), String> {
        self.conn.execute_batch("BEGIN").map_err(sql(&self.path))
    }

    pub fn rollback(&mut self) -> Result<(), String> {
        self.conn.execute_batch("ROLLBACK").map_err(sql(&self.path))
    }

    /// (policy domain, period start) of every period that ended before `cutoff` and has
    /// unclaimed rows of a domain that asks for reports, oldest first.
    pub fn due_periods(&self, period: i64, cutoff: i64) -> Result<Vec<(String, i64)>, String> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT m.policy_domain, (m.received / ?1) * ?1 AS b FROM messages m
                 WHERE m.policy_domain IS NOT NULL AND m.rua IS NOT NULL AND m.rua <> ''
                   AND m.source_ip IS NOT NULL AND m.received < ?2
                   AND NOT EXISTS (SELECT 1 FROM report_rows r WHERE r.message_id = m.id)
                 GROUP BY 1, 2 ORDER BY 2, 1",
            )
            .map_err(sql(&self.path))?;
        let rows = st
            .query_map(params![period, cutoff], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sql(&self.path))
    }

    /// Claims every unclaimed row of `domain` received in `[begin, end]` with a client address
    /// for a new report `report_id`, in one transaction; the report's rua is the newest one
    /// published in the period. When the period has a report already, the rows are set aside
    /// as late (never in a second report for the same period).
    pub fn claim(
        &mut self,
        domain: &str,
        begin: i64,
        end: i64,
        report_id: &str,
        now: i64,
    ) -> Result<Claimed, String> {
        let fail = sql(&self.path);
        let tx = self.conn.savepoint().map_err(&fail)?;
        let unclaimed = "FROM messages m WHERE m.policy_domain = ?1 AND m.received >= ?2
             AND m.received <= ?3 AND m.source_ip IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM report_rows r WHERE r.message_id = m.id)";
        let existing: Option<i64> = tx
            .query_row(
                "SELECT id FROM reports WHERE policy_domain = ?1 AND begin = ?2",
                params![domain, begin],
                |r| r.get(0),
            )
            .optional()
            .map_err(&fail)?;
        if existing.is_some() {
            let n = tx
                .execute(
                    &format!(
                        "INSERT INTO report_rows (message_id, report) SELECT m.id, NULL {unclaimed}"
                    ),
                    params![domain, begin, end],
                )
                .map_err(&fail)?;
            tx.commit().map_err(&fail)?;
            return Ok(if n > 0 {
                Claimed::Late(n)
            } else {
                Claimed::Nothing
            });
        }
        let rua: Option<String> = tx
            .query_row(
                &format!(
                    "SELECT m.rua {unclaimed} AND m.rua IS NOT NULL AND m.rua <> ''
                     ORDER BY m.received DESC, m.id DESC LIMIT 1"
                ),
                params![domain, begin, end],
                |r| r.get(0),
            )
            .optional()
            .map_err(&fail)?;
        let Some(rua) = rua else {
            return Ok(Claimed::Nothing);
        };
        tx.execute(
            "INSERT INTO reports (report_id, policy_domain, begin, end, rua, rows, state, created)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, 'pending', ?6)",
            params![report_id, domain, begin, end, rua, now],
        )
        .map_err(&fail)?;
        let id = tx.last_insert_rowid();
        let n = tx
            .execute(
                &format!(
                    "INSERT INTO report_rows (message_id, report) SELECT m.id, ?4 {unclaimed}"
                ),
                params![domain, begin, end, id],
            )
            .map_err(&fail)?;
        tx.execute(
            "UPDATE reports SET rows = ?1 WHERE id = ?2",
            params![n as i64, id],
        )
        .map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok(Claimed::Report(Pending {
            id,
            report_id: report_id.to_string(),
            policy_domain: domain.to_string(),
            begin,
            end,
            rua,
            rows: n as i64,
            created: now,
            attempts: 0,
        }))
    }

    /// Reports claimed but not finished, oldest first.
    pub fn pending(&self) -> Result<Vec<Pending>, String> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, report_id, policy_domain, begin, end, rua, rows, created, attempts
                 FROM reports WHERE state = 'pending' ORDER BY id",
            )
            .map_err(sql(&self.path))?;
        let rows = st
            .query_map([], |r| {
                Ok(Pending {
                    id: r.get(0)?,
                    report_id: r.get(1)?,
                    policy_domain: r.get(2)?,
                    begin: r.get(3)?,
                    end: r.get(4)?,
                    rua: r.get(5)?,
                    rows: r.get(6)?,
                    created: r.get(7)?,
                    attempts: r.get(8)?,
                })
            })
            .map_err(sql(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sql(&self.path))
    }

    /// The history rows claimed by report `report`, in row order (tests and small reports).
    pub fn rows(&self, report: i64) -> Result<Vec<Record>, String> {
        let mut out = Vec::new();
        self.for_each_row(report, &mut |r| out.push(r))?;
        Ok(out)
    }

    /// Calls `f` with each history row claimed by report `report`, in row order, holding one
    /// row at a time (a report of a million messages does not need a million rows in memory).
    pub fn for_each_row(&self, report: i64, f: &mut dyn FnMut(Record)) -> Result<(), String> {
        let fail = sql(&self.path);
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT m.id, m.received, m.job_id, m.reporter, m.source_ip, m.header_from,
                    m.envelope_from, m.envelope_to, m.policy_domain, m.p, m.sp, m.np, m.adkim,
                    m.aspf, m.testing, m.pct, m.psd, m.rua, m.policy_applied, m.spf_domain,
                    m.spf_scope, m.spf_result, m.dkim_aligned, m.spf_aligned, m.dmarc_result,
                    m.disposition, m.action, m.override_reason, m.message_key, m.override_comment,
                    d.domain, d.selector, d.result
                 FROM report_rows r JOIN messages m ON m.id = r.message_id
                 LEFT JOIN dkim_results d ON d.message_id = m.id
                 WHERE r.report = ?1 ORDER BY m.id, d.rowid",
            )
            .map_err(&fail)?;
        let mut rows = st.query([report]).map_err(&fail)?;
        let mut current: Option<(i64, Record)> = None;
        while let Some(r) = rows.next().map_err(&fail)? {
            let id: i64 = r.get(0).map_err(&fail)?;
            let dkim = match r.get::<_, Option<String>>(30).map_err(&fail)? {
                Some(domain) => Some(DkimEntry {
                    domain,
                    selector: r.get(31).map_err(&fail)?,
                    result: r.get(32).map_err(&fail)?,
                }),
                None => None,
            };
            match &mut current {
                Some((cid, rec)) if *cid == id => rec.dkim.extend(dkim),
                _ => {
                    if let Some((_, done)) = current.take() {
                        f(done);
                    }
                    let mut rec = record(r).map_err(&fail)?;
                    rec.dkim.extend(dkim);
                    current = Some((id, rec));
                }
            }
        }
        if let Some((_, done)) = current {
            f(done);
        }
        Ok(())
    }

    /// Counts one more attempt (and its error) for a pending report.
    pub fn attempt_failed(&mut self, id: i64, error: &str) -> Result<(), String> {
        self.conn
            .execute(
                "UPDATE reports SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
                params![id, error],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Ends a pending report: `sent`, `skipped` (no usable destination) or `expired`.
    pub fn finish(
        &mut self,
        id: i64,
        state: &str,
        error: Option<&str>,
        now: i64,
    ) -> Result<(), String> {
        self.conn
            .execute(
                "UPDATE reports SET state = ?2, finished = ?3, last_error = COALESCE(?4, last_error),
                    attempts = attempts + (?2 = 'sent')
                 WHERE id = ?1 AND state = 'pending'",
                params![id, state, now, error],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Deletes history rows (with their claims) and finished reports older than `before`;
    /// returns (messages, reports) deleted.
    pub fn expire(&mut self, before: i64) -> Result<(usize, usize), String> {
        let fail = sql(&self.path);
        let tx = self.conn.savepoint().map_err(&fail)?;
        let m = tx
            .execute("DELETE FROM messages WHERE received < ?1", [before])
            .map_err(&fail)?;
        let r = tx
            .execute(
                "DELETE FROM reports WHERE end < ?1 AND state <> 'pending'",
                [before],
            )
            .map_err(&fail)?;
        tx.execute("DELETE FROM failures WHERE received < ?1", [before])
            .map_err(&fail)?;
        tx.commit().map_err(&fail)?;
        Ok((m, r))
    }

    /// Failures not yet reported, oldest first.
    pub fn pending_failures(&self) -> Result<Vec<PendingFailure>, String> {
        let fail = sql(&self.path);
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT id, received, reporter, policy_domain, ruf, fo, source_ip, mail_from,
                    rcpt_to, auth_results, dkim, spf, dkim_aligned, spf_aligned, disposition,
                    headers
                 FROM failures WHERE state = 'pending' ORDER BY id",
            )
            .map_err(&fail)?;
        let rows = st
            .query_map([], |r| {
                let dkim: String = r.get(10)?;
                let spf: Option<String> = r.get(11)?;
                let disposition: String = r.get(14)?;
                let three = |s: &str| {
                    let mut it = s.split(' ');
                    (
                        it.next().unwrap_or("").to_string(),
                        it.next().unwrap_or("").to_string(),
                        it.next().unwrap_or("").to_string(),
                    )
                };
                Ok(PendingFailure {
                    id: r.get(0)?,
                    ruf: r.get(4)?,
                    fo: r.get(5)?,
                    reporter: r.get(2)?,
                    incident: crate::failure::Incident {
                        arrival: r.get(1)?,
                        source_ip: r.get::<_, Option<String>>(6)?.and_then(|s| s.parse().ok()),
                        mail_from: r.get(7)?,
                        rcpt_to: r.get(8)?,
                        policy_domain: r.get(3)?,
                        authentication_results: r.get(9)?,
                        dkim: dkim
                            .split(';')
                            .filter(|s| !s.is_empty())
                            .map(|s| {
                                let (domain, selector, result) = three(s);
                                DkimEntry {
                                    domain,
                                    selector,
                                    result,
                                }
                            })
                            .collect(),
                        spf: spf.as_deref().map(three),
                        dkim_aligned: r.get(12)?,
                        spf_aligned: r.get(13)?,
                        headers: r.get(15)?,
                        delivery: match disposition.as_str() {
                            "reject" => chassis::mailauth::report::DeliveryResult::Reject,
                            "quarantine" => chassis::mailauth::report::DeliveryResult::Spam,
                            _ => chassis::mailauth::report::DeliveryResult::Delivered,
                        },
                    },
                })
            })
            .map_err(&fail)?;
        rows.collect::<Result<_, _>>().map_err(&fail)
    }

    /// Ends a pending failure: `sent` (to `sent_to`), `not_requested` (fo=), `skipped`,
    /// `expired`.
    pub fn finish_failure(
        &mut self,
        id: i64,
        state: &str,
        sent_to: Option<&str>,
        error: Option<&str>,
        now: i64,
    ) -> Result<(), String> {
        self.conn
            .execute(
                "UPDATE failures SET state = ?2, sent_to = ?3, last_error = ?4, finished = ?5
                 WHERE id = ?1 AND state = 'pending'",
                params![id, state, sent_to, error, now],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Failure reports sent to `address` since `since` (the per-destination rate limit).
    pub fn failures_sent_to(&self, address: &str, since: i64) -> Result<i64, String> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM failures WHERE state = 'sent' AND finished >= ?2
                   AND (' ' || sent_to || ' ') LIKE ('% ' || ?1 || ' %')",
                params![address, since],
                |r| r.get(0),
            )
            .map_err(sql(&self.path))
    }

    /// (state, count) of all reports: for `status` and the tests.
    pub fn report_states(&self) -> Result<Vec<(String, i64)>, String> {
        let mut st = self
            .conn
            .prepare("SELECT state, COUNT(*) FROM reports GROUP BY state ORDER BY state")
            .map_err(sql(&self.path))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sql(&self.path))
    }
}

/// One `messages` row (columns as selected by [`ReportStore::for_each_row`]) as a record.
fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let text = |i: usize| -> rusqlite::Result<String> {
        Ok(r.get::<_, Option<String>>(i)?.unwrap_or_default())
    };
    let published = match r.get::<_, Option<String>>(9)? {
        Some(p) => Some(Published {
            p,
            sp: text(10)?,
            np: text(11)?,
            adkim: text(12)?,
            aspf: text(13)?,
            testing: r.get::<_, Option<i64>>(14)?.unwrap_or(0) != 0,
            pct: r.get::<_, Option<i64>>(15)?.map(|v| v.clamp(0, 100) as u8),
            psd: text(16)?,
            rua: text(17)?.split_whitespace().map(str::to_string).collect(),
        }),
        None => None,
    };
    let spf = match (
        r.get::<_, Option<String>>(19)?,
        r.get::<_, Option<String>>(20)?,
        r.get::<_, Option<String>>(21)?,
    ) {
        (Some(d), Some(s), Some(res)) => Some((d, s, res)),
        _ => None,
    };
    Ok(Record {
        received: r.get(1)?,
        job_id: r.get(2)?,
        reporter: r.get(3)?,
        source_ip: r.get(4)?,
        header_from: r.get(5)?,
        envelope_from: r.get(6)?,
        envelope_to: r.get(7)?,
        policy_domain: r.get(8)?,
        published,
        policy_applied: r.get(18)?,
        spf,
        dkim: Vec::new(),
        dkim_aligned: r.get(22)?,
        spf_aligned: r.get(23)?,
        dmarc_result: r.get(24)?,
        disposition: r.get(25)?,
        action: r.get(26)?,
        override_reason: r.get(27)?,
        message_key: text(28)?,
        override_comment: r.get(29)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::tests::row;
    use std::time::Instant;

    #[test]
    fn a_period_is_claimed_once_even_by_two_programs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite");
        let store = dmarc_policy::history::Store::open(&path).unwrap();
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            let mut r = row("192.0.2.1", "pass", "pass");
            r.message_key = key.to_string();
            r.received += i as i64;
            store
                .insert(&r, Instant::now() + Duration::from_secs(5))
                .unwrap();
        }
        let begin = (86400 * 20000 + 100) / 86400 * 86400;
        let mut one = ReportStore::open(&path).unwrap();
        let mut two = ReportStore::open(&path).unwrap();
        assert_eq!(
            one.due_periods(86400, begin + 86400).unwrap(),
            [("example.com".to_string(), begin)]
        );
        let first = one
            .claim("example.com", begin, begin + 86399, "r1", 1)
            .unwrap();
        assert!(
            matches!(&first, Claimed::Report(p) if p.rows == 3),
            "{first:?}"
        );
        // The other program (another host of a fleet) finds nothing left to claim.
        assert!(two.due_periods(86400, begin + 86400).unwrap().is_empty());
        assert_eq!(
            two.claim("example.com", begin, begin + 86399, "r2", 2)
                .unwrap(),
            Claimed::Nothing
        );
        assert_eq!(two.pending().unwrap().len(), 1);
        assert_eq!(two.rows(first_id(&first)).unwrap().len(), 3);
    }

    fn first_id(c: &Claimed) -> i64 {
        match c {
            Claimed::Report(p) => p.id,
            _ => unreachable!(),
        }
    }
}
