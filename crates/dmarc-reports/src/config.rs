//! The report program's configuration (`/etc/authmilter/dmarc-reports.toml` by default): parsed once into a
//! typed model, errors with file, line and key. A file of its own rather than a table in
//! dmarc-milter.toml: the program runs as its own user with its own rights (Postfix style), and
//! the milter never needs to know about mail submission.

use chassis::configfile::{self, ConfigError};
use chassis::dns::ResolverSettings;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/authmilter/dmarc-reports.toml";

/// Which aggregate report schema the XML follows.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schema {
    /// RFC 9990 (DMARCbis aggregate reporting): namespace `urn:ietf:params:xml:ns:dmarc-2.0`.
    #[default]
    Rfc9990,
    /// RFC 7489 Appendix C: no namespace, `pct` in `policy_published`, HELO scope for SPF.
    Rfc7489,
}

/// How reports leave the host.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Pipe each report to `sendmail -oi -t -f FROM` (the local MTA signs and delivers it).
    #[default]
    Sendmail,
    /// SMTP submission (see `[smtp]`).
    Smtp,
    /// Write the `.xml.gz` attachment and the whole message into `dry_run_dir`; nothing is sent
    /// and nothing is marked in the store.
    DryRun,
}

/// TLS on the submission connection.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// STARTTLS required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// Plain text: only for a relay on the loopback interface.
    None,
}

#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub username: Option<String>,
    /// A file holding the password (first line), readable by the report user only.
    pub password_file: Option<PathBuf>,
    /// Seconds to wait for the server at each step.
    pub timeout: u64,
}

impl Default for Smtp {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 587,
            tls: Tls::Starttls,
            username: None,
            password_file: None,
            timeout: 60,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    history: String,
    org_name: String,
    /// Our reporting address: `report_metadata/email` and the From of report mail.
    email: String,
    #[serde(default)]
    submitter: Option<String>,
    #[serde(default)]
    extra_contact_info: Option<String>,
    #[serde(default)]
    schema: Schema,
    #[serde(default = "default_period")]
    period_hours: u32,
    #[serde(default = "default_delay")]
    delay_minutes: u32,
    #[serde(default = "default_retention")]
    retention_days: u32,
    #[serde(default = "default_give_up")]
    give_up_hours: u32,
    #[serde(default)]
    report_envelope_to: bool,
    #[serde(default)]
    ignore_rua: Vec<String>,
    #[serde(default)]
    method: Method,
    #[serde(default = "default_sendmail")]
    sendmail: PathBuf,
    #[serde(default)]
    dry_run_dir: Option<PathBuf>,
    #[serde(default)]
    smtp: Smtp,
    #[serde(default = "default_failure_rate")]
    failure_rate_per_hour: u32,
    #[serde(default)]
    failure_redaction: Redaction,
    #[serde(default)]
    resolver: ResolverSettings,
}

fn default_failure_rate() -> u32 {
    10
}

/// What failure reports show of the failing message's addresses.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Redaction {
    /// Local parts replaced by `redacted` (RFC 6590).
    #[default]
    Localparts,
    /// Addresses as received.
    None,
}

fn default_period() -> u32 {
    24
}
fn default_delay() -> u32 {
    15
}
fn default_retention() -> u32 {
    180
}
fn default_give_up() -> u32 {
    48
}
fn default_sendmail() -> PathBuf {
    PathBuf::from("/usr/sbin/sendmail")
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    /// dmarc-milter's history store: the SQLite file or the fleet's PostgreSQL URL.
    pub history: dmarc_policy::history::store::Target,
    pub org_name: String,
    pub email: String,
    /// The reporting host or domain: the first part of the file name and the subject's
    /// `Submitter:` (default: the domain of `email`).
    pub submitter: String,
    pub extra_contact_info: Option<String>,
    pub schema: Schema,
    /// Report period in seconds: divides a UTC day or is a whole number of days, so periods
    /// start at UTC midnight.
    pub period: i64,
    /// Seconds after a period ends before it is reported (rows of messages still in progress
    /// are committed by then).
    pub delay: i64,
    /// Rows (and reports) older than this many seconds are deleted.
    pub retention: i64,
    /// A report still not sent this many seconds after it was made expires.
    pub give_up: i64,
    /// Put `envelope_to` into the identifiers (and group by it). OpenDMARC does not.
    pub report_envelope_to: bool,
    /// Lowercased addresses (or `@domain`) never sent a report: loop and abuse protection.
    pub ignore_rua: Vec<String>,
    pub method: Method,
    pub sendmail: PathBuf,
    pub dry_run_dir: Option<PathBuf>,
    pub smtp: Smtp,
    /// Failure reports per destination address and hour, at most.
    pub failure_rate_per_hour: u32,
    pub failure_redaction: Redaction,
    pub resolver: ResolverSettings,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, None, None, format!("cannot read: {e}")))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = configfile::parse_toml(path, text)?;
        let bad = |key: &str, msg: String| ConfigError::new(path, None, Some(key), msg);
        let Some((local, domain)) = raw.email.rsplit_once('@') else {
            return Err(bad("email", format!("'{}' is not an address", raw.email)));
        };
        if local.is_empty() || domain.is_empty() || raw.email.contains(char::is_whitespace) {
            return Err(bad("email", format!("'{}' is not an address", raw.email)));
        }
        let p = raw.period_hours;
        if p == 0 || !(24u32.is_multiple_of(p) || p.is_multiple_of(24)) {
            return Err(bad(
                "period_hours",
                format!(
                    "{p}: must divide 24 or be a multiple of 24 (periods start at UTC midnight)"
                ),
            ));
        }
        if raw.method == Method::DryRun && raw.dry_run_dir.is_none() {
            return Err(bad(
                "dry_run_dir",
                "method dry-run needs dry_run_dir".into(),
            ));
        }
        if raw.org_name.trim().is_empty() {
            return Err(bad("org_name", "must not be empty".into()));
        }
        raw.resolver
            .parsed_nameservers()
            .map_err(|e| bad("resolver.nameservers", e))?;
        Ok(Config {
            file: path.to_path_buf(),
            history: dmarc_policy::history::store::Target::parse(
                &raw.history,
                path.parent().unwrap_or(Path::new(".")),
            ),
            org_name: raw.org_name,
            submitter: raw.submitter.unwrap_or_else(|| domain.to_ascii_lowercase()),
            email: raw.email,
            extra_contact_info: raw.extra_contact_info,
            schema: raw.schema,
            period: i64::from(p) * 3600,
            delay: i64::from(raw.delay_minutes) * 60,
            retention: i64::from(raw.retention_days) * 86400,
            give_up: i64::from(raw.give_up_hours) * 3600,
            report_envelope_to: raw.report_envelope_to,
            ignore_rua: raw
                .ignore_rua
                .iter()
                .map(|a| a.trim().trim_start_matches("mailto:").to_ascii_lowercase())
                .collect(),
            method: raw.method,
            sendmail: raw.sendmail,
            dry_run_dir: raw.dry_run_dir,
            smtp: raw.smtp,
            failure_rate_per_hour: raw.failure_rate_per_hour,
            failure_redaction: raw.failure_redaction,
            resolver: raw.resolver,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("r.toml"), text)
    }

    const BASE: &str =
        "history = \"/h.sqlite\"\norg_name = \"Example\"\nemail = \"dmarc@mx.example.net\"\n";

    #[test]
    fn defaults() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.submitter, "mx.example.net");
        assert_eq!(c.period, 86400);
        assert_eq!(c.schema, Schema::Rfc9990);
        assert_eq!(c.method, Method::Sendmail);
        assert_eq!(c.retention, 180 * 86400);
    }

    #[test]
    fn shipped_example_parses() {
        let c = parse(include_str!("../../../etc/dmarc-reports.toml")).unwrap();
        assert_eq!(c.submitter, "mx.example.net");
        assert_eq!(c.smtp.port, 587);
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(&format!("{BASE}period_hours = 5\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("period_hours"));
        let e = parse(&format!("{BASE}method = \"dry-run\"\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("dry_run_dir"));
        let e = parse(&format!("{BASE}schema = \"rfc1\"\n")).unwrap_err();
        assert_eq!(e.line, Some(4));
        let e = parse("history = \"/h\"\norg_name = \"x\"\nemail = \"nobody\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("email"));
    }
}
