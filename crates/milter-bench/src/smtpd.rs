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

/// A filter to run, with the binary of ours when it is not `--bin`'s: `ours=PATH` compares two
/// builds of our filter side by side (`--filter ours=old/dkim-milter,ours=new/dkim-milter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSpec {
    pub kind: Filter,
    pub bin: Option<PathBuf>,
}

impl FilterSpec {
    fn label(&self) -> String {
        match &self.bin {
            Some(b) => format!("{}={}", self.kind.name(), b.display()),
            None => self.kind.name().to_string(),
        }
    }
}

impl std::str::FromStr for FilterSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, bin) = match s.split_once('=') {
            Some((k, b)) => (k, Some(PathBuf::from(b))),
            None => (s, None),
        };
        let kind: Filter = kind.parse()?;
        if bin.is_some() && !matches!(kind, Filter::Ours | Filter::OursVerify) {
            return Err(format!("{s:?}: only ours and ours-verify take a binary"));
        }
        Ok(FilterSpec { kind, bin })
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

/// One smtpd with one filter, ready to take submissions.
struct Rig {
    filter: Filter,
    label: String,
    smtpd: Opensmtpd,
    /// The filter process (none without a filter).
    pid: Option<u32>,
    addr: std::net::SocketAddr,
    /// The one signed message sent N times (verification), or none: a fresh message each time.
    signed: Option<Arc<Vec<u8>>>,
    size: usize,
    _dns: Option<testkit::dns::TestDns>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn body(&self, n: u64) -> Vec<u8> {
        match &self.signed {
            Some(m) => m.as_ref().clone(),
            None => message(self.size, n),
        }
    }

    fn send(&self, n: u64) -> bool {
        testkit::smtp::send(
            self.addr,
            "bench.example",
            "sender@example.com",
            &["rcpt@example.org"],
            &self.body(n),
            None,
        )
        .map(|r| r.code == 250)
        .unwrap_or(false)
    }
}

/// Starts a throwaway smtpd with `filter` on the listener that filter serves.
fn rig(spec: &FilterSpec, ours: &Path, size: usize) -> Result<Rig, String> {
    let filter = spec.kind;
    let ours = spec.bin.as_deref().unwrap_or(ours);
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
    let rig = Rig {
        filter,
        label: spec.label(),
        smtpd,
        pid,
        addr,
        signed,
        size,
        _dns: dns,
        _dir: dir,
    };
    // One warm-up message (keys loaded, caches filled), not counted.
    if !rig.send(0) {
        return Err(format!("{}: the warm-up message was refused", spec.label()));
    }
    Ok(rig)
}

impl Filter {
    fn name(self) -> &'static str {
        match self {
            Filter::None => "none",
            Filter::Ours => "ours",
            Filter::Dkimsign => "dkimsign",
            Filter::OursVerify => "ours-verify",
        }
    }
}

/// Runs `messages` submissions per filter, each filter in an smtpd of its own, all at the same
/// time: the clients take the next message number and send it to filter `number % filters`, so
/// every filter sees the same minutes of the machine. On a shared VM whose speed drifts by 10-50 %
/// between runs minutes apart, this is what makes a ratio of two filters' CPU per message
/// repeatable; one filter alone is the plain run.
pub fn run_side_by_side(
    filters: &[FilterSpec],
    ours: &Path,
    messages: u64,
    concurrency: usize,
    size: usize,
) -> Result<Vec<Report>, String> {
    if filters.is_empty() {
        return Err("no filter to run".into());
    }
    let rigs: Vec<Rig> = filters
        .iter()
        .map(|f| rig(f, ours, size))
        .collect::<Result<_, _>>()?;
    let rigs = Arc::new(rigs);
    let k = rigs.len() as u64;
    let cpu_before: Vec<f64> = rigs
        .iter()
        .map(|r| r.pid.map(cpu_seconds).unwrap_or(0.0))
        .collect();
    let next = Arc::new(AtomicU64::new(0));
    let failed: Arc<Vec<AtomicU64>> = Arc::new(rigs.iter().map(|_| AtomicU64::new(0)).collect());
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, failed, rigs) = (next.clone(), failed.clone(), rigs.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= messages * k {
                    return;
                }
                let which = (i % k) as usize;
                // Message numbers start at 1 (0 was the warm-up).
                if !rigs[which].send(i / k + 1) {
                    failed[which].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut reports = Vec::new();
    for (i, r) in rigs.iter().enumerate() {
        let cpu = r.pid.map(cpu_seconds).unwrap_or(0.0) - cpu_before[i];
        // Deliveries finish in the background; the run measured submission only.
        let delivered = r
            .smtpd
            .wait_for_deliveries(messages as usize + 1, Duration::from_secs(60));
        if r.filter == Filter::OursVerify {
            // Every delivered copy must carry our dkim=pass, or the rate measured nothing.
            let passed = delivered
                .iter()
                .filter(|(_, m)| String::from_utf8_lossy(m).contains("dkim=pass"))
                .count();
            if passed == 0 {
                return Err("no delivered message says dkim=pass".into());
            }
        }
        reports.push(Report {
            filter: r.label.clone(),
            messages,
            failed: failed[i].load(Ordering::Relaxed),
            concurrency,
            seconds,
            messages_per_second: messages as f64 / seconds,
            filter_cpu_ms_per_message: cpu * 1000.0 / messages as f64,
        });
    }
    Ok(reports)
}
