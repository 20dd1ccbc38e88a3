//! `authmilter reports ...`: the command line of the report program. The `authmilter` command
//! hands everything after `reports` to [`run`]; this module owns its options.

use crate::config::{Config, Method, DEFAULT_CONFIG};
use std::io::Write;
use std::path::PathBuf;

pub const USAGE: &str = "usage: authmilter reports COMMAND [OPTIONS]

commands:
  run [-c FILE] [--dry-run DIR] [--now UNIX-TIME]
      Make the aggregate reports that are due from the history store, send them (each once),
      send the failure reports dmarc-milter kept, expire old rows. With --dry-run, write FILE.xml.gz and FILE.xml.gz.eml into DIR instead
      and leave the store unchanged.

  inspect FILE
      Summarise a DMARC aggregate report you received (FILE.xml, FILE.xml.gz or the report
      mail): sources, counts, results per mechanism, which sources fail DMARC and why.

options:
  -c, --config FILE   report configuration (default /etc/authmilter/dmarc-reports.toml)

exit status: 0 done (some reports may wait for a retry: see the log), 64 usage error,
  65 inspect: not a readable report, 66 inspect: cannot open FILE,
  75 the store could not be read or written, 78 configuration error.";

pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_NOINPUT: u8 = 66;
pub const EX_TEMPFAIL: u8 = 75;
pub const EX_CONFIG: u8 = 78;

#[derive(Debug, Default)]
struct Args {
    command: Option<String>,
    config: Option<PathBuf>,
    dry_run: Option<PathBuf>,
    now: Option<i64>,
    positional: Vec<String>,
}

fn parse(argv: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().cloned().ok_or(format!("{name} needs a value")),
            }
        };
        match flag {
            "-c" | "--config" => a.config = Some(PathBuf::from(value(flag)?)),
            "--dry-run" => a.dry_run = Some(PathBuf::from(value(flag)?)),
            "--now" => {
                let v = value(flag)?;
                a.now = Some(
                    v.parse()
                        .map_err(|_| format!("--now: '{v}' is not a number"))?,
                )
            }
            f if f.starts_with('-') && f.len() > 1 => return Err(format!("unknown option '{f}'")),
            _ if a.command.is_none() => a.command = Some(arg.clone()),
            _ => a.positional.push(arg.clone()),
        }
    }
    Ok(a)
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .try_init();
}

/// Runs `authmilter reports ARGS`; returns the exit status.
pub fn run(argv: &[String], out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let args = match parse(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(err, "authmilter reports: {e}\n{USAGE}");
            return EX_USAGE;
        }
    };
    match args.command.as_deref() {
        Some("run") => {
            init_logging();
            let path = args.config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
            let mut cfg = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    let _ = writeln!(err, "authmilter reports: {e}");
                    return EX_CONFIG;
                }
            };
            if let Some(dir) = args.dry_run {
                cfg.method = Method::DryRun;
                cfg.dry_run_dir = Some(dir);
            }
            let now = args.now.unwrap_or_else(now);
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
        Some("inspect") => {
            let [file] = args.positional.as_slice() else {
                let _ = writeln!(err, "authmilter reports: inspect takes one FILE\n{USAGE}");
                return EX_USAGE;
            };
            inspect(file, out, err)
        }
        Some("-h") | Some("help") => {
            let _ = writeln!(out, "{USAGE}");
            0
        }
        None => {
            let _ = writeln!(err, "authmilter reports: no command given\n{USAGE}");
            EX_USAGE
        }
        Some(other) => {
            let _ = writeln!(
                err,
                "authmilter reports: unknown command '{other}'\n{USAGE}"
            );
            EX_USAGE
        }
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

    fn code(args: &[&str]) -> (u8, String) {
        let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let c = run(&argv, &mut out, &mut err);
        (c, String::from_utf8_lossy(&err).into_owned())
    }

    #[test]
    fn usage_and_configuration_errors() {
        assert_eq!(code(&[]).0, EX_USAGE);
        assert_eq!(code(&["frobnicate"]).0, EX_USAGE);
        assert_eq!(code(&["inspect"]).0, EX_USAGE);
        assert_eq!(code(&["run", "--bogus"]).0, EX_USAGE);
        assert_eq!(code(&["run", "--now", "soon"]).0, EX_USAGE);
        assert_eq!(code(&["help"]).0, 0);
        let (c, err) = code(&["run", "-c", "/nonexistent/reports.toml"]);
        assert_eq!(c, EX_CONFIG);
        assert!(
            err.contains("/nonexistent/reports.toml: cannot read"),
            "{err}"
        );
        let (c, err) = code(&["inspect", "/nonexistent/r.xml"]);
        assert_eq!(c, EX_NOINPUT, "{err}");
    }
}
