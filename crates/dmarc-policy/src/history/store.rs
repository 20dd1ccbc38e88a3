//! Which history store a dmarc-milter writes: the embedded SQLite file (one host) or a shared
//! PostgreSQL database (a fleet of MX hosts, one report per domain and period). Both hold the
//! same tables and take the same statements; sessions see one type.

use super::postgres::PgStore;
use super::{Failure, Record, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the history lives, as configured by `history = …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Sqlite(PathBuf),
    /// A `postgresql://` (or `postgres://`) URL, as libpq takes it.
    Postgres(String),
}

impl Target {
    /// A `postgresql://`/`postgres://` URL, else a file path (relative to `base`).
    pub fn parse(value: &str, base: &Path) -> Target {
        let lower = value.trim().to_ascii_lowercase();
        if lower.starts_with("postgresql://") || lower.starts_with("postgres://") {
            Target::Postgres(value.trim().to_string())
        } else if Path::new(value).is_absolute() {
            Target::Sqlite(PathBuf::from(value))
        } else {
            Target::Sqlite(base.join(value))
        }
    }
}

/// For logs: the path, or the URL without its password.
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Sqlite(p) => write!(f, "{}", p.display()),
            Target::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// `postgresql://user:secret@host/db` → `postgresql://user:***@host/db`.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &authority[..colon],
                &rest[at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// How the store is used: the PostgreSQL pool size, and how long one store operation may take
/// before the message gets the `store_failure` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    pub pool_size: usize,
    pub timeout: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            pool_size: 4,
            timeout: Duration::from_secs(5),
        }
    }
}

/// An open history store.
pub enum HistoryStore {
    Sqlite(Arc<Store>),
    Postgres(PgStore),
}

impl HistoryStore {
    /// Opens the store. SQLite is opened (and migrated) here; PostgreSQL connects lazily, so a
    /// database that is down at start-up only makes messages take the `store_failure` action
    /// until it answers (the schema is checked on the first connection).
    pub fn open(target: &Target, settings: StoreSettings) -> Result<HistoryStore, String> {
        match target {
            Target::Sqlite(p) => Ok(HistoryStore::Sqlite(Arc::new(Store::open(p)?))),
            Target::Postgres(url) => Ok(HistoryStore::Postgres(PgStore::new(url, settings)?)),
        }
    }

    /// The path or the URL without its password, for log lines.
    pub fn describe(&self) -> String {
        match self {
            HistoryStore::Sqlite(s) => s.path().display().to_string(),
            HistoryStore::Postgres(p) => p.describe(),
        }
    }

    /// Records one message, committed before `commit_by` or not at all (see [`Store::insert`]).
    pub async fn insert(&self, record: Record, commit_by: Instant) -> Result<i64, String> {
        match self {
            HistoryStore::Sqlite(s) => s.insert_async(record, commit_by).await,
            HistoryStore::Postgres(p) => p.insert(&record, commit_by).await,
        }
    }

    /// Keeps a failing message for a failure report.
    pub async fn insert_failure(&self, failure: Failure) -> Result<i64, String> {
        match self {
            HistoryStore::Sqlite(s) => s.insert_failure_async(failure).await,
            HistoryStore::Postgres(p) => p.insert_failure(&failure).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_postgres_and_paths_are_relative_to_the_file() {
        let base = Path::new("/etc/authmilter");
        assert_eq!(
            Target::parse("postgresql://mx@db/dmarc", base),
            Target::Postgres("postgresql://mx@db/dmarc".into())
        );
        assert_eq!(
            Target::parse("POSTGRES://db", base),
            Target::Postgres("POSTGRES://db".into())
        );
        assert_eq!(
            Target::parse("h.sqlite", base),
            Target::Sqlite("/etc/authmilter/h.sqlite".into())
        );
        assert_eq!(
            Target::parse("/var/lib/h.sqlite", base),
            Target::Sqlite("/var/lib/h.sqlite".into())
        );
    }

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redact("postgresql://mx:s3cret@db.example:5432/dmarc?sslmode=require"),
            "postgresql://mx:***@db.example:5432/dmarc?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://mx@db/dmarc"),
            "postgresql://mx@db/dmarc"
        );
        assert_eq!(redact("postgresql://db/dmarc"), "postgresql://db/dmarc");
        let t = Target::Postgres("postgres://a:b@h/d".into());
        assert!(!t.to_string().contains(":b@"), "{t}");
    }
}
