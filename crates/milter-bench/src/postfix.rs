// SPDX-License-Identifier: GPL-3.0-or-later
//! `milter-bench postfix`: the test kit's throwaway Postfix ([`testkit::postfix::Postfix`]) as a
//! process of its own, for harnesses written outside Rust (bench/soak). The instance is the one
//! the end-to-end tests use (private spool, file sink, loopback only, no DNS), with the milters
//! and main.cf overrides given on the command line. It runs until its standard input closes (so
//! it stops when the harness that started it dies, however it dies) or `max` has passed, and is
//! stopped the way the tests stop it (`postfix stop`, then kill).

use std::io::Read;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;
use testkit::mta::Mta;
use testkit::postfix::{Postfix, PostfixOptions};

/// Parses `NAME=VALUE` main.cf settings.
pub fn parse_settings(settings: &[String]) -> Result<Vec<(String, String)>, String> {
    settings
        .iter()
        .map(|s| {
            let (n, v) = s
                .split_once('=')
                .ok_or_else(|| format!("--set {s:?}: want NAME=VALUE"))?;
            let n = n.trim();
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("--set {s:?}: not a main.cf parameter name"));
            }
            Ok((n.to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// Starts Postfix, writes the info file, waits for end of stdin or `max`, stops Postfix.
pub fn run(
    milters: Vec<String>,
    settings: &[String],
    info_file: &Path,
    max: Duration,
) -> Result<(), String> {
    let mut opts = PostfixOptions::with_milters(milters);
    opts.main_cf = parse_settings(settings)?;
    let pf = Postfix::start(opts).map_err(|e| format!("postfix: {e}"))?;
    let info = serde_json::json!({
        "dir": pf.dir().display().to_string(),
        "smtp": pf.smtp_addr().to_string(),
        "submission": pf.submission_addr().to_string(),
    });
    // Written under a temporary name and renamed, so a reader never sees half of it.
    let tmp = info_file.with_extension("tmp");
    std::fs::write(&tmp, info.to_string()).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, info_file).map_err(|e| e.to_string())?;
    eprintln!("milter-bench postfix: running in {}", pf.dir().display());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    match rx.recv_timeout(max) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            eprintln!("milter-bench postfix: stdin closed, stopping")
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            eprintln!("milter-bench postfix: --max-seconds reached, stopping")
        }
    }
    drop(pf);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_name_value_pairs() {
        assert_eq!(
            parse_settings(&["a_b = 1s".into(), "c=".into()]).unwrap(),
            vec![("a_b".into(), "1s".into()), ("c".into(), String::new())]
        );
        assert!(parse_settings(&["novalue".into()]).is_err());
        assert!(parse_settings(&["bad name=1".into()]).is_err());
    }
}
