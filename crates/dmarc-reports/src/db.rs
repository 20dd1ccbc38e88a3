//! The report program's connection to either history store: the SQLite file or PostgreSQL
//! (blocking `postgres` client, from the project behind tokio-postgres). The report store's
//! statements are written once, with `$N` placeholders and SQL both databases read; this module
//! runs them and hands rows back as [`Val`]s.

use dmarc_policy::history::store::{redact, Target};
use dmarc_policy::history::value::{for_sqlite, Val};
use std::time::Duration;

pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(postgres::Client),
}

pub struct Db {
    conn: Conn,
    /// Path or URL without password, for error messages.
    shown: String,
    /// Open transactions (the outer one `BEGIN`, inner ones savepoints).
    depth: usize,
}

/// One result row.
pub struct Row(Vec<Val>);

impl Row {
    pub fn int(&self, i: usize) -> Result<i64, String> {
        self.opt_int(i)?
            .ok_or_else(|| format!("column {i}: NULL where a number is needed"))
    }

    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, String> {
        match self.0.get(i) {
            Some(Val::Int(v)) => Ok(Some(*v)),
            Some(Val::Null) => Ok(None),
            Some(Val::Text(t)) => t
                .parse()
                .map(Some)
                .map_err(|_| format!("column {i}: '{t}' is not a number")),
            None => Err(format!("no column {i}")),
        }
    }

    pub fn text(&self, i: usize) -> Result<String, String> {
        self.opt_text(i)?
            .ok_or_else(|| format!("column {i}: NULL where text is needed"))
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>, String> {
        match self.0.get(i) {
            Some(v) => Ok(v.text()),
            None => Err(format!("no column {i}")),
        }
    }
}

fn pg(e: postgres::Error) -> String {
    dmarc_policy::history::postgres::pg_error(&e)
}

impl Db {
    /// Connects; for SQLite the file must exist (dmarc-milter creates it).
    pub fn open(target: &Target) -> Result<Db, String> {
        let shown = target.to_string();
        let conn = match target {
            Target::Sqlite(path) => {
                if !path.exists() {
                    return Err(format!("history {shown}: no such database"));
                }
                let fail = |e: rusqlite::Error| format!("history {shown}: {e}");
                let c = rusqlite::Connection::open(path).map_err(fail)?;
                c.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
                c.execute_batch("PRAGMA foreign_keys=ON; PRAGMA synchronous=FULL;")
                    .map_err(fail)?;
                Conn::Sqlite(c)
            }
            Target::Postgres(url) => {
                let prepared = dmarc_policy::history::tls::prepare(url)
                    .map_err(|e| format!("history {}: {e}", redact(url)))?;
                let mut cfg: postgres::Config = prepared
                    .url
                    .parse()
                    .map_err(|e| format!("history {}: {}", redact(url), pg(e)))?;
                if cfg.get_connect_timeout().is_none() {
                    cfg.connect_timeout(Duration::from_secs(10));
                }
                if cfg.get_application_name().is_none() {
                    cfg.application_name("authmilter-reports");
                }
                let c = cfg
                    .connect(prepared.tls)
                    .map_err(|e| format!("history {shown}: {}", pg(e)))?;
                Conn::Postgres(c)
            }
        };
        Ok(Db {
            conn,
            shown,
            depth: 0,
        })
    }

    pub fn describe(&self) -> &str {
        &self.shown
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.conn, Conn::Postgres(_))
    }

    fn fail(&self, e: String) -> String {
        format!("history {}: {e}", self.shown)
    }

    /// Statements without parameters (DDL), run as one batch.
    pub fn batch(&mut self, sql: &str) -> Result<(), String> {
        let r = match &mut self.conn {
            Conn::Sqlite(c) => c.execute_batch(sql).map_err(|e| e.to_string()),
            Conn::Postgres(c) => c.batch_execute(sql).map_err(pg),
        };
        r.map_err(|e| self.fail(e))
    }

    /// One statement; the number of rows it changed.
    pub fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, String> {
        let r = match &mut self.conn {
            Conn::Sqlite(c) => c
                .prepare_cached(&for_sqlite(sql))
                .and_then(|mut st| st.execute(rusqlite::params_from_iter(params)))
                .map(|n| n as u64)
                .map_err(|e| e.to_string()),
            Conn::Postgres(c) => c
                .execute(sql, &dmarc_policy::history::postgres::refs(params))
                .map_err(pg),
        };
        r.map_err(|e| self.fail(e))
    }

    /// Calls `f` with each row, one at a time (a million-row report is never all in memory).
    pub fn each(
        &mut self,
        sql: &str,
        params: &[Val],
        f: &mut dyn FnMut(Row) -> Result<(), String>,
    ) -> Result<(), String> {
        let r = match &mut self.conn {
            Conn::Sqlite(c) => (|| {
                let mut st = c
                    .prepare_cached(&for_sqlite(sql))
                    .map_err(|e| e.to_string())?;
                let n = st.column_count();
                let mut rows = st
                    .query(rusqlite::params_from_iter(params))
                    .map_err(|e| e.to_string())?;
                while let Some(r) = rows.next().map_err(|e| e.to_string())? {
                    let vals = (0..n)
                        .map(|i| r.get::<_, Val>(i))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| e.to_string())?;
                    f(Row(vals))?;
                }
                Ok(())
            })(),
            Conn::Postgres(c) => (|| {
                use postgres::fallible_iterator::FallibleIterator;
                let mut rows = c.query_raw(sql, params.iter()).map_err(pg)?;
                while let Some(r) = rows.next().map_err(pg)? {
                    let vals = (0..r.len())
                        .map(|i| r.try_get::<_, Val>(i))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(pg)?;
                    f(Row(vals))?;
                }
                Ok(())
            })(),
        };
        r.map_err(|e| self.fail(e))
    }

    pub fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, String> {
        let mut out = Vec::new();
        self.each(sql, params, &mut |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    pub fn first(&mut self, sql: &str, params: &[Val]) -> Result<Option<Row>, String> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// A transaction (or, inside one, a savepoint).
    pub fn begin(&mut self) -> Result<(), String> {
        let sql = match self.depth {
            0 => "BEGIN".to_string(),
            n => format!("SAVEPOINT s{n}"),
        };
        self.batch(&sql)?;
        self.depth += 1;
        Ok(())
    }

    pub fn commit(&mut self) -> Result<(), String> {
        let sql = match self.depth {
            0 => return Err(self.fail("commit without a transaction".into())),
            1 => "COMMIT".to_string(),
            n => format!("RELEASE SAVEPOINT s{}", n - 1),
        };
        self.batch(&sql)?;
        self.depth -= 1;
        Ok(())
    }

    pub fn rollback(&mut self) -> Result<(), String> {
        let sql = match self.depth {
            0 => return Ok(()),
            1 => "ROLLBACK".to_string(),
            n => format!("ROLLBACK TO SAVEPOINT s{0}; RELEASE SAVEPOINT s{0}", n - 1),
        };
        self.depth -= 1;
        self.batch(&sql)
    }

    /// Runs `work` in a transaction: committed when it succeeds, rolled back when it fails.
    pub fn in_tx<T>(
        &mut self,
        work: impl FnOnce(&mut Db) -> Result<T, String>,
    ) -> Result<T, String> {
        self.begin()?;
        match work(self) {
            Ok(v) => {
                self.commit()?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.rollback();
                Err(e)
            }
        }
    }

    /// The history schema version (`None`: not a dmarc-milter history database).
    pub fn schema_version(&mut self) -> Result<Option<i64>, String> {
        let found = match &mut self.conn {
            Conn::Sqlite(c) => c
                .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
                .map_err(|e| e.to_string()),
            Conn::Postgres(c) => c
                .query_one("SELECT MAX(version) FROM schema_version", &[])
                .map(|r| r.get(0))
                .map_err(pg),
        };
        found.map_err(|e| self.fail(format!("not a dmarc-milter history database ({e})")))
    }
}
