// SPDX-License-Identifier: GPL-3.0-or-later
//! `milter-bench smtpd`: signing through a real OpenSMTPD (the test kit's throwaway smtpd 6.8)
//! with our filter (`dkim-milter --opensmtpd`), with Debian's `filter-dkimsign`, or with no
//! filter at all, the same RSA-2048 key and message for each: messages per second end to end
//! (SMTP submission until the 250 after DATA) and the filter process's CPU time per message
//! (utime + stime from /proc, before and after the run).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::keys::TestKey;
use testkit::mta::Mta;
use testkit::opensmtpd::{filter_dkimsign, Opensmtpd, OpensmtpdOptions};

/// Which filter smtpd runs on the submission listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    None,
    Ours,
    Dkimsign,
    /// Ours verifying: signed mail from outside on the plain listener, keys from a test DNS.
    OursVerify,
}

impl std::str::FromStr for Filter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Filter::None),
            "ours" => Ok(Filter::Ours),
            "dkimsign" => Ok(Filter::Dkimsign),
            "ours-verify" => Ok(Filter::OursVerify),
            other => Err(format!(
                "unknown filter {other:?} (none, ours, dkimsign, ours-verify)"
            )),
        }
    }
}

/// What one run measured.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub filter: String,
    pub messages: u64,
    pub failed: u64,
    pub concurrency: usize,
    pub seconds: f64,
    pub messages_per_second: f64,
    /// CPU milliseconds of the filter process per message (0 without a filter).
    pub filter_cpu_ms_per_message: f64,
}

/// /proc/PID/stat counts CPU time in USER_HZ ticks, 100 per second on Linux whatever the
/// kernel's own HZ (the same unit bench/run's sampling uses).
const USER_HZ: f64 = 100.0;

/// CPU time of `pid` in seconds: the scheduler's own nanosecond count of time on a CPU
/// (`/proc/PID/task/*/schedstat`, first field, summed over the threads), so a run of a few
/// hundred messages is not rounded to 10 ms ticks; utime + stime from /proc/PID/stat where
/// schedstat is missing.
fn cpu_seconds(pid: u32) -> f64 {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    let mut ns = 0u64;
    let mut seen = false;
    for t in threads {
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        if let Some(v) = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            ns += v;
            seen = true;
        }
    }
    if seen {
        return ns as f64 / 1e9;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After ')': state(0) ppid(1) … utime(11) stime(12).
    (ticks(11) + ticks(12)) / USER_HZ
}

fn message(size: usize, n: u64) -> Vec<u8> {
    let mut body = String::new();
    let line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n";
    while body.len() < size {
        body.push_str(line);
    }
    format!(
        "From: Sender <sender@example.com>\r\nTo: rcpt@example.org\r\nSubject: bench {n}\r\n\
         Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <bench-{n}@example.com>\r\n\r\n{body}"
    )
    .into_bytes()
}

/// Runs `messages` submissions with `concurrency` clients through smtpd with `filter`.
pub fn run(
    filter: Filter,
    ours: &Path,
    messages: u64,
    concurrency: usize,
    size: usize,
) -> Result<Report, String> {
    // smtpd runs relative proc-exec paths from /usr/libexec/opensmtpd.
    let ours = &std::fs::canonicalize(ours).map_err(|e| format!("{}: {e}", ours.display()))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let key = TestKey::rsa(2048);
    let key_path: PathBuf = key.write_pem(d, "rsa.pem", true);
    let mut opts = OpensmtpdOptions::default();
    // Verification needs the public key in DNS: the test kit's server on loopback.
    let dns = (filter == Filter::OursVerify)
        .then(|| {
            testkit::dns::TestDns::start_blocking(
                &testkit::dns::Zone::new().txt("rsa._domainkey.example.com", &key.dns_record()),
            )
        })
        .transpose()
        .map_err(|e| format!("dns: {e}"))?;
    let needle = match filter {
        Filter::None => None,
        Filter::Ours => {
            std::fs::write(d.join("KeyTable"), "rsa example.com:rsa:rsa.pem\n")
                .map_err(|e| e.to_string())?;
            std::fs::write(d.join("SigningTable"), "*@example.com rsa\n")
                .map_err(|e| e.to_string())?;
            let cfg = d.join("dkim-milter.toml.in");
            // No per-message log line (filter-dkimsign writes none either).
            std::fs::write(
                &cfg,
                "key_table = \"file:KeyTable\"\nsigning_table = \"refile:SigningTable\"\n\
                 internal_hosts = [\"192.0.2.1\"]\nmta = [\"127.0.0.1:@SUBMISSION_PORT@\"]\n\
                 [log]\nsuccess = false\nlevel = \"warn\"\n\
                 [resolver]\nnameservers = [\"127.0.0.1:9\"]\ntimeout = 0.5\nattempts = 1\n",
            )
            .map_err(|e| e.to_string())?;
            opts.port_templates.push(cfg.clone());
            let cfg = cfg.with_extension("");
            opts.filters.push(format!(
                "filter \"sign\" proc-exec \"{} --opensmtpd -c {}\" user root group root",
                ours.display(),
                cfg.display()
            ));
            Some(cfg.display().to_string())
        }
        Filter::OursVerify => {
            let cfg = d.join("dkim-milter.toml");
            std::fs::write(
                &cfg,
                format!(
                    "mode = \"v\"\n[log]\nsuccess = false\n\
                     [resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
                    dns.as_ref().expect("dns").addr()
                ),
            )
            .map_err(|e| e.to_string())?;
            opts.filters.push(format!(
                "filter \"sign\" proc-exec \"{} --opensmtpd -c {}\" user root group root",
                ours.display(),
                cfg.display()
            ));
            Some(cfg.display().to_string())
        }
        Filter::Dkimsign => {
            opts.filters.push(format!(
                "filter \"sign\" proc-exec \"{} -a rsa-sha256 -c relaxed/relaxed -d example.com -s rsa -k {}\" user root group root",
                filter_dkimsign().display(),
                key_path.display()
            ));
            Some(format!("-k {}", key_path.display()))
        }
    };
    match filter {
        Filter::None => {}
        Filter::OursVerify => opts.smtp_filter = Some("sign".into()),
        _ => opts.submission_filter = Some("sign".into()),
    }
    let smtpd = Opensmtpd::start(opts).map_err(|e| format!("smtpd: {e}"))?;
    let pid = match &needle {
        // smtpd has started its filters when it accepts mail; a process being set up may not
        // show its command line yet, so look a few times.
        Some(n) => Some(
            (0..50)
                .find_map(|_| {
                    testkit::binary::pid_with_cmdline(&[n]).or_else(|| {
                        std::thread::sleep(Duration::from_millis(100));
                        None
                    })
                })
                .ok_or("the filter process was not found")?,
        ),
        None => None,
    };
    let (addr, signed) = if filter == Filter::OursVerify {
        // One message signed once (by dkimpy, an independent signer), sent N times.
        let raw = message(size, 0);
        let signed = testkit::judges::dkimpy_sign(
            &raw,
            &key,
            &testkit::judges::SignOptions::new("example.com", "rsa"),
        )
        .map_err(|e| format!("dkimpy: {e}"))?;
        (smtpd.smtp_addr(), Some(Arc::new(signed)))
    } else {
        (smtpd.submission_addr(), None)
    };
    let body_of = move |n: u64| -> Vec<u8> {
        match &signed {
            Some(m) => m.as_ref().clone(),
            None => message(size, n),
        }
    };
    let body_of = Arc::new(body_of);
    // One warm-up message (keys loaded, caches filled), not counted.
    let warm = testkit::smtp::send(
        addr,
        "bench.example",
        "sender@example.com",
        &["rcpt@example.org"],
        &body_of(0),
        None,
    )
    .map_err(|e| e.to_string())?;
    if warm.code != 250 {
        return Err(format!("warm-up message refused: {warm}"));
    }
    let cpu_before = pid.map(cpu_seconds).unwrap_or(0.0);
    let next = Arc::new(AtomicU64::new(1));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, failed, body_of) = (next.clone(), failed.clone(), body_of.clone());
            std::thread::spawn(move || loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n > messages {
                    return;
                }
                let ok = testkit::smtp::send(
                    addr,
                    "bench.example",
                    "sender@example.com",
                    &["rcpt@example.org"],
                    &body_of(n),
                    None,
                )
                .map(|r| r.code == 250)
                .unwrap_or(false);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = pid.map(cpu_seconds).unwrap_or(0.0) - cpu_before;
    // Deliveries finish in the background; the run measured submission only.
    let delivered = smtpd.wait_for_deliveries(messages as usize + 1, Duration::from_secs(60));
    if filter == Filter::OursVerify {
        // Every delivered copy must carry our dkim=pass, or the rate measured nothing.
        let passed = delivered
            .iter()
            .filter(|(_, m)| String::from_utf8_lossy(m).contains("dkim=pass"))
            .count();
        if passed == 0 {
            return Err("no delivered message says dkim=pass".into());
        }
    }
    drop(dns);
    Ok(Report {
        filter: match filter {
            Filter::None => "none",
            Filter::Ours => "ours",
            Filter::Dkimsign => "dkimsign",
            Filter::OursVerify => "ours-verify",
        }
        .into(),
        messages,
        failed: failed.load(Ordering::Relaxed),
        concurrency,
        seconds,
        messages_per_second: messages as f64 / seconds,
        filter_cpu_ms_per_message: cpu * 1000.0 / messages as f64,
    })
}
