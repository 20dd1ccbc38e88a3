//! `authmilter reports run|inspect`: the report program's commands, as clap definitions that
//! the `authmilter` command line embeds (help, man page and completions come from them) and
//! [`execute`], which runs one.

use crate::config::{Config, Method, DEFAULT_CONFIG};
use std::io::Write;
use std::path::PathBuf;

pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_NOINPUT: u8 = 66;
pub const EX_TEMPFAIL: u8 = 75;
pub const EX_CONFIG: u8 = 78;

/// The exit statuses, for `--help` and the man page.
pub const EXIT_STATUS: &str = "0 done (some reports may wait for a retry: see the log), 64 usage \
    error, 65 inspect: not a readable report, 66 inspect: cannot open FILE, 75 the store could \
    not be read or written, 78 configuration error.";

/// `authmilter reports COMMAND`. The configuration file is `authmilter`'s global `-c`.
#[derive(Debug, clap::Args)]
#[command(
    about = "DMARC aggregate and failure reports from dmarc-milter's history store",
    long_about = "Make the DMARC reports that are due from dmarc-milter's history store (SQLite \
        or a fleet's PostgreSQL) and send each once (run), or summarise a report you received \
        (inspect). -c names the report configuration [default: /etc/authmilter/dmarc-reports.toml]."
)]
pub struct ReportsArgs {
    #[command(subcommand)]
    pub command: ReportsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ReportsCommand {
    /// Make the reports that are due, send them (each once), expire old rows
    #[command(
        long_about = "Make the aggregate reports that are due from the history store, send them \
            (each once), send the failure reports dmarc-milter kept, expire old rows. With \
            --dry-run, write FILE.xml.gz and FILE.xml.gz.eml into DIR instead and leave the \
            store unchanged."
    )]
    Run {
        /// Write the reports into DIR instead of sending them; the store is left unchanged
        #[arg(long = "dry-run", value_name = "DIR")]
        dry_run: Option<PathBuf>,
        /// Run as if the time were this (Unix seconds) [default: now]
        #[arg(long, value_name = "UNIX-TIME")]
        now: Option<i64>,
    },
    /// Summarise a DMARC aggregate report you received (FILE.xml, FILE.xml.gz or the mail)
    #[command(
        long_about = "Summarise a DMARC aggregate report you received (FILE.xml, FILE.xml.gz or \
            the report mail): sources, counts, results per mechanism, which sources fail DMARC \
            and why."
    )]
    Inspect {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .try_init();
}

/// Runs one parsed `authmilter reports` command with the configuration `config` (`-c`);
/// returns the exit status.
pub fn execute(
    command: ReportsCommand,
    config: Option<PathBuf>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    match command {
        ReportsCommand::Run { dry_run, now: at } => {
            init_logging();
            let path = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
            let mut cfg = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    let _ = writeln!(err, "authmilter reports: {e}");
                    return EX_CONFIG;
                }
            };
            if let Some(dir) = dry_run {
                cfg.method = Method::DryRun;
                cfg.dry_run_dir = Some(dir);
            }
            let now = at.unwrap_or_else(now);
            let mut sender = match crate::send::from_config(&cfg) {
                Ok(s) => s,
                Err(e) => {
                    let _ = writeln!(err, "authmilter reports: {}: {e}", path.display());
                    return EX_CONFIG;
                }
            };
            let verifier = match crate::verify::DnsVerifier::new(&cfg.resolver) {
                Ok(v) => v,
                Err(e) => {
                    let _ = writeln!(
                        err,
                        "authmilter reports: {}: [resolver]: {e}",
                        path.display()
                    );
                    return EX_CONFIG;
                }
            };
            match crate::run::run(&cfg, now, sender.as_mut(), &verifier) {
                Ok(o) => {
                    let _ = writeln!(
                        out,
                        "claimed {} sent {} skipped {} expired {} retry {} late {}",
                        o.claimed, o.sent, o.skipped, o.expired, o.failed, o.late
                    );
                    if o.failures_sent + o.failures_skipped > 0 {
                        let _ = writeln!(
                            out,
                            "failure reports: sent {} skipped {}",
                            o.failures_sent, o.failures_skipped
                        );
                    }
                    0
                }
                Err(e) => {
                    let _ = writeln!(err, "authmilter reports: {e}");
                    EX_TEMPFAIL
                }
            }
        }
        ReportsCommand::Inspect { file } => inspect(&file.display().to_string(), out, err),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn inspect(file: &str, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    use std::io::Read;
    let max = crate::inspect::MAX_SIZE;
    let mut bytes = Vec::new();
    let read =
        std::fs::File::open(file).and_then(|f| f.take(max as u64 + 1).read_to_end(&mut bytes));
    if let Err(e) = read {
        let _ = writeln!(err, "authmilter reports: {file}: {e}");
        return EX_NOINPUT;
    }
    match crate::inspect::parse(&bytes, max) {
        Ok(report) => {
            let _ = write!(out, "{}", crate::inspect::summary(&report));
            0
        }
        Err(e) => {
            let _ = writeln!(err, "authmilter reports: {file}: {e}");
            EX_DATAERR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_and_input_errors() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let run = ReportsCommand::Run {
            dry_run: None,
            now: None,
        };
        let c = execute(
            run,
            Some("/nonexistent/reports.toml".into()),
            &mut out,
            &mut err,
        );
        assert_eq!(c, EX_CONFIG);
        let err = String::from_utf8_lossy(&err).into_owned();
        assert!(
            err.contains("/nonexistent/reports.toml: cannot read"),
            "{err}"
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let inspect = ReportsCommand::Inspect {
            file: "/nonexistent/r.xml".into(),
        };
        assert_eq!(execute(inspect, None, &mut out, &mut err), EX_NOINPUT);
    }
}
