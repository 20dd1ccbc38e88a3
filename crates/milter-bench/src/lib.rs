// SPDX-License-Identifier: GPL-3.0-or-later
//! `milter-bench`: a load generator for milters.
//!
//! It plays the MTA side of the milter protocol (through our `milter-client`
//! crate) on N concurrent connections, one connection per message as Postfix
//! opens one per SMTP session, and measures messages per second and the
//! latency of each whole transaction (connect to the final answer at end of
//! message). Every answer is checked: a message counts as a success only if
//! the milter made the modification the scenario expects (a `DKIM-Signature`
//! header when signing, an `Authentication-Results` header with `dkim=pass`
//! when verifying, one with `dmarc=pass` for DMARC), so a fast wrong answer
//! cannot score.
//!
//! The same scenarios run against OpenDKIM/OpenDMARC and against our daemons;
//! `bench/run` drives both and prints the comparison.

use milter_client::{
    apply_modifications, render, run_with, ConnectOptions, Endpoint, Modification, Outcome, Reply,
    Transaction,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod postfix;
pub mod smtpd;
pub mod zone;

/// What the milter is expected to do with each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Client inside InternalHosts, authenticated: expect a `DKIM-Signature`.
    Sign,
    /// External client: expect an `Authentication-Results` with `dkim=pass`.
    Verify,
    /// External client: expect an `Authentication-Results` with `dmarc=pass`.
    Dmarc,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sign" => Ok(Mode::Sign),
            "verify" => Ok(Mode::Verify),
            "dmarc" => Ok(Mode::Dmarc),
            _ => Err(format!("unknown mode {s:?} (sign, verify or dmarc)")),
        }
    }
}

impl Mode {
    /// The default check: header name and a text its value must contain.
    pub fn default_expectation(self) -> Expectation {
        match self {
            Mode::Sign => Expectation {
                header: "DKIM-Signature".into(),
                contains: None,
            },
            Mode::Verify => Expectation {
                header: "Authentication-Results".into(),
                contains: Some("dkim=pass".into()),
            },
            Mode::Dmarc => Expectation {
                header: "Authentication-Results".into(),
                contains: Some("dmarc=pass".into()),
            },
        }
    }
}

/// The modification that makes an answer correct: a header added or
/// inserted with this name (case-insensitive) whose value contains
/// `contains` (case-insensitive), if given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expectation {
    /// Header name.
    pub header: String,
    /// Text the value must contain.
    pub contains: Option<String>,
}

impl Expectation {
    /// Whether `mods` has the expected header.
    pub fn is_met(&self, mods: &[Modification]) -> bool {
        let want = self.contains.as_deref().map(str::to_ascii_lowercase);
        mods.iter().any(|m| {
            let (name, value) = match m {
                Modification::AddHeader { name, value }
                | Modification::InsertHeader { name, value, .. } => (name, value),
                _ => return false,
            };
            name.eq_ignore_ascii_case(&self.header)
                && want
                    .as_deref()
                    .is_none_or(|w| value.to_ascii_lowercase().contains(w))
        })
    }
}

/// A macro for one protocol stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacroDef {
    /// `connect`, `helo`, `mail`, `rcpt`, `data`, `eoh` or `eom`.
    pub stage: String,
    /// Macro name, e.g. `{auth_authen}` or `i`.
    pub name: String,
    /// Value.
    pub value: String,
}

impl std::str::FromStr for MacroDef {
    type Err = String;
    /// `STAGE:NAME=VALUE`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad macro {s:?}: want STAGE:NAME=VALUE");
        let (stage, rest) = s.split_once(':').ok_or_else(bad)?;
        let (name, value) = rest.split_once('=').ok_or_else(bad)?;
        if !matches!(
            stage,
            "connect" | "helo" | "mail" | "rcpt" | "data" | "eoh" | "eom"
        ) || name.is_empty()
        {
            return Err(bad());
        }
        Ok(MacroDef {
            stage: stage.into(),
            name: name.into(),
            value: value.into(),
        })
    }
}

/// Everything one benchmark run needs.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The milter.
    pub endpoint: Endpoint,
    /// Concurrent sessions (each one message per connection, back to back).
    pub concurrency: usize,
    /// Stop after this many messages (in total).
    pub messages: Option<u64>,
    /// Stop starting messages after this long.
    pub duration: Option<Duration>,
    /// The message, as from a file (CRLF or LF).
    pub message: Vec<u8>,
    /// Scenario.
    pub mode: Mode,
    /// What makes an answer correct.
    pub expect: Expectation,
    /// Client address; default 127.0.0.1 to sign, 192.0.2.x to verify.
    pub client_ip: Option<IpAddr>,
    /// Envelope sender (also the SPF identity for DMARC).
    pub mail_from: String,
    /// Envelope recipient.
    pub rcpt: String,
    /// HELO name.
    pub helo: String,
    /// Extra macros, after the defaults of the mode.
    pub macros: Vec<MacroDef>,
    /// Set TCP_NODELAY on the client socket.
    pub nodelay: bool,
    /// Acknowledge every segment at once (`true`, the default: the best case
    /// for a milter that splits replies into several writes), or delay acks
    /// like a bulk-transfer peer (`false`: exposes Nagle stalls).
    pub quickack: bool,
    /// Per read/write timeout.
    pub timeout: Duration,
    /// Write the first correctly modified message (as Postfix would deliver
    /// it) to this file: how the verify scenarios get a signed message.
    pub save_first: Option<PathBuf>,
    /// Give every message its own Message-ID, `<PREFIX.N@bench.invalid>` (N counts messages):
    /// with the same Message-ID, dmarc-milter's history records a message once however often
    /// it is sent, so a history benchmark or test needs distinct ones.
    pub unique_ids: Option<String>,
}

impl BenchConfig {
    /// Defaults for `mode` against `endpoint`: concurrency 1, 100 messages,
    /// a generated 4 KiB message from `example.com`.
    pub fn new(endpoint: Endpoint, mode: Mode) -> Self {
        BenchConfig {
            endpoint,
            concurrency: 1,
            messages: Some(100),
            duration: None,
            message: generate_message("example.com", 4096),
            mode,
            expect: mode.default_expectation(),
            client_ip: None,
            mail_from: "sender@example.com".into(),
            rcpt: "rcpt@example.org".into(),
            helo: "mail.example.com".into(),
            macros: Vec::new(),
            nodelay: true,
            quickack: true,
            timeout: Duration::from_secs(30),
            save_first: None,
            unique_ids: None,
        }
    }
}

/// Generates a plain-text message from `user@domain` of about `size` bytes
/// (headers included), lines of 76 characters plus CRLF.
pub fn generate_message(domain: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Bench Sender <bench@{domain}>\r\n\
         To: Recipient <rcpt@example.org>\r\n\
         Subject: milter benchmark message\r\n\
         Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n\
         Message-ID: <bench.{size}@{domain}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n"
    )
    .into_bytes();
    const LINE: &[u8] =
        b"The quick brown fox jumps over the lazy dog; pack my box with five dozen ..";
    let mut n = 0u64;
    while m.len() < size {
        // A counter per line keeps the body from being one repeated line.
        let prefix = format!("{n:06} ");
        m.extend_from_slice(prefix.as_bytes());
        m.extend_from_slice(&LINE[..76 - prefix.len()]);
        m.extend_from_slice(b"\r\n");
        n += 1;
    }
    m
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// The result of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub mode: String,
    pub endpoint: String,
    pub concurrency: usize,
    pub message_bytes: usize,
    pub nodelay: bool,
    pub quickack: bool,
    /// Transactions finished (correct or not).
    pub messages: u64,
    /// Transactions with the expected modification and an accepting answer.
    pub ok: u64,
    /// Everything else: wrong answer, missing modification, protocol or I/O
    /// error.
    pub failed: u64,
    pub elapsed_s: f64,
    /// Correct messages per second.
    pub msgs_per_s: f64,
    /// Latency of all finished transactions (connect to final answer).
    pub latency: Latency,
    /// Final answers by kind (`accept`, `continue`, `tempfail`, `reject`,
    /// `discard`, `reply:CODE`, `error`).
    pub replies: BTreeMap<String, u64>,
    /// Failures by reason.
    pub failures: BTreeMap<String, u64>,
    /// The first failure in full, for diagnosis.
    pub first_failure: Option<String>,
}

impl Report {
    /// Human-readable summary.
    pub fn text(&self) -> String {
        let mut s = format!(
            "{} {} c={} msg={}B nodelay={} quickack={}\n\
             messages {} ok {} failed {} in {:.2}s: {:.1} msgs/s\n\
             latency ms: p50 {:.3} p90 {:.3} p99 {:.3} max {:.3} mean {:.3}\n",
            self.mode,
            self.endpoint,
            self.concurrency,
            self.message_bytes,
            self.nodelay,
            self.quickack,
            self.messages,
            self.ok,
            self.failed,
            self.elapsed_s,
            self.msgs_per_s,
            self.latency.p50_ms,
            self.latency.p90_ms,
            self.latency.p99_ms,
            self.latency.max_ms,
            self.latency.mean_ms,
        );
        let replies: Vec<String> = self
            .replies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        s.push_str(&format!("replies: {}\n", replies.join(" ")));
        for (k, v) in &self.failures {
            s.push_str(&format!("FAILED {v}x: {k}\n"));
        }
        if let Some(f) = &self.first_failure {
            s.push_str(&format!("first failure: {f}\n"));
        }
        s
    }
}

fn reply_kind(r: &Reply) -> String {
    match r {
        Reply::Continue => "continue".into(),
        Reply::Accept => "accept".into(),
        Reply::Reject => "reject".into(),
        Reply::Tempfail => "tempfail".into(),
        Reply::Discard => "discard".into(),
        Reply::Skip => "skip".into(),
        Reply::NoReply => "noreply".into(),
        Reply::ReplyCode(c) => format!("reply:{}", c.split_whitespace().next().unwrap_or("")),
    }
}

/// Per-worker tallies, merged at the end.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    ok: u64,
    replies: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
    first_failure: Option<(Instant, String)>,
}

impl Tally {
    fn fail(&mut self, reason: String, detail: String) {
        *self.failures.entry(reason).or_default() += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some((Instant::now(), detail));
        }
    }
}

fn stage_macros(cfg: &BenchConfig, stage: &str) -> Vec<(String, String)> {
    cfg.macros
        .iter()
        .filter(|m| m.stage == stage)
        .map(|m| (m.name.clone(), m.value.clone()))
        .collect()
}

/// The transaction worker `w` sends: the message, the envelope, the client
/// address of the mode, and the macros an MTA would send.
fn transaction(cfg: &BenchConfig, w: usize) -> Transaction {
    let mut tx = Transaction::from_message(&cfg.message);
    let ip = cfg.client_ip.unwrap_or(match cfg.mode {
        Mode::Sign => IpAddr::V4(Ipv4Addr::LOCALHOST),
        // TEST-NET-1, a different client per worker, as on a real MX.
        Mode::Verify | Mode::Dmarc => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + (w % 200) as u8)),
    });
    let name = match cfg.mode {
        Mode::Sign => "localhost".to_owned(),
        _ => format!("client{w}.example.com"),
    };
    tx = tx
        .with_client(&name, Some(SocketAddr::new(ip, 40000 + (w % 20000) as u16)))
        .with_helo(&cfg.helo)
        .with_mail_from(&cfg.mail_from)
        .with_rcpts(&[&cfg.rcpt]);
    tx.timeout = cfg.timeout;
    tx.connect_macros = vec![
        ("j".into(), "mx.bench.test".into()),
        ("{daemon_name}".into(), "bench".into()),
    ];
    if cfg.mode == Mode::Sign {
        // An authenticated submission, as Postfix reports SASL logins.
        tx.mail_macros = vec![
            ("{auth_type}".into(), "PLAIN".into()),
            ("{auth_authen}".into(), "bench".into()),
        ];
    }
    tx.eoh_macros = vec![("i".into(), format!("BENCH{w:04X}"))];
    tx.eom_macros = vec![("i".into(), format!("BENCH{w:04X}"))];
    for (stage, list) in [
        ("connect", &mut tx.connect_macros),
        ("helo", &mut tx.helo_macros),
        ("mail", &mut tx.mail_macros),
        ("rcpt", &mut tx.rcpt_macros),
        ("data", &mut tx.data_macros),
        ("eoh", &mut tx.eoh_macros),
        ("eom", &mut tx.eom_macros),
    ] {
        for (n, v) in stage_macros(cfg, stage) {
            list.retain(|(old, _)| old != &n);
            list.push((n, v));
        }
    }
    tx
}

/// `tx` with its Message-ID field's value replaced (added when there is none).
fn with_message_id(tx: &Transaction, value: &str) -> Transaction {
    let mut t = tx.clone();
    match t
        .headers
        .iter_mut()
        .find(|(n, _)| n.eq_ignore_ascii_case("message-id"))
    {
        Some(h) => h.1 = value.to_string(),
        None => t.headers.push(("Message-ID".into(), value.to_string())),
    }
    t
}

/// Checks one outcome; `Ok` if correct, else (reason, detail).
fn check(cfg: &BenchConfig, out: &Outcome) -> Result<(), (String, String)> {
    let accepted = matches!(out.reply, Reply::Accept | Reply::Continue);
    if !accepted {
        return Err((
            format!("answer {} at {}", reply_kind(&out.reply), out.stage),
            format!("{out:?}"),
        ));
    }
    if !cfg.expect.is_met(&out.modifications) {
        return Err((
            format!(
                "no {} header{}",
                cfg.expect.header,
                cfg.expect
                    .contains
                    .as_deref()
                    .map(|c| format!(" containing {c:?}"))
                    .unwrap_or_default()
            ),
            format!("{out:?}"),
        ));
    }
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// Runs the benchmark. Returns the report; the caller decides what a failure
/// means (the binary exits non-zero on any).
pub async fn run_bench(cfg: BenchConfig) -> Report {
    assert!(cfg.concurrency > 0, "concurrency must be at least 1");
    let cfg = Arc::new(cfg);
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| started + d);
    let next = Arc::new(AtomicU64::new(0));
    let saved = Arc::new(std::sync::atomic::AtomicBool::new(cfg.save_first.is_none()));
    let opts = ConnectOptions {
        timeout: cfg.timeout,
        nodelay: cfg.nodelay,
        quickack: Some(cfg.quickack),
        // Macros travel with their command, as from Postfix's buffered
        // stream: otherwise, without TCP_NODELAY, the client itself would
        // cause Nagle stalls and blur what the milter does.
        coalesce_writes: true,
    };
    let mut tasks = Vec::new();
    for w in 0..cfg.concurrency {
        let cfg = cfg.clone();
        let next = next.clone();
        let saved = saved.clone();
        tasks.push(tokio::spawn(async move {
            let tx = transaction(&cfg, w);
            let mut t = Tally::default();
            loop {
                if let Some(d) = deadline {
                    if Instant::now() >= d {
                        break;
                    }
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if cfg.messages.is_some_and(|m| i >= m) {
                    break;
                }
                let fresh;
                let tx = match &cfg.unique_ids {
                    Some(prefix) => {
                        fresh = with_message_id(&tx, &format!(" <{prefix}.{i}@bench.invalid>"));
                        &fresh
                    }
                    None => &tx,
                };
                let t0 = Instant::now();
                let res = run_with(&cfg.endpoint, tx, &opts).await;
                t.latencies_us.push(t0.elapsed().as_micros() as u64);
                match res {
                    Ok(out) => {
                        *t.replies.entry(reply_kind(&out.reply)).or_default() += 1;
                        match check(&cfg, &out) {
                            Ok(()) => {
                                t.ok += 1;
                                if !saved.swap(true, Ordering::Relaxed) {
                                    if let Some(path) = &cfg.save_first {
                                        let headers = apply_modifications(
                                            None,
                                            &tx.headers,
                                            &out.modifications,
                                            out.leadspc(),
                                        );
                                        if let Err(e) =
                                            std::fs::write(path, render(&headers, &tx.body))
                                        {
                                            t.fail(
                                                "cannot save message".into(),
                                                format!("{}: {e}", path.display()),
                                            );
                                        }
                                    }
                                }
                            }
                            Err((reason, detail)) => t.fail(reason, detail),
                        }
                    }
                    Err(e) => {
                        *t.replies.entry("error".into()).or_default() += 1;
                        let reason = match &e {
                            milter_client::Error::Io(io) => format!("i/o error: {:?}", io.kind()),
                            other => {
                                let s = other.to_string();
                                s.chars().take(60).collect()
                            }
                        };
                        t.fail(reason, e.to_string());
                    }
                }
            }
            t
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = match task.await {
            Ok(t) => t,
            Err(e) => {
                let mut t = Tally::default();
                t.fail("worker panicked".into(), e.to_string());
                t
            }
        };
        all.latencies_us.extend(t.latencies_us);
        all.ok += t.ok;
        for (k, v) in t.replies {
            *all.replies.entry(k).or_default() += v;
        }
        for (k, v) in t.failures {
            *all.failures.entry(k).or_default() += v;
        }
        if let Some((at, d)) = t.first_failure {
            if all.first_failure.as_ref().is_none_or(|(a, _)| at < *a) {
                all.first_failure = Some((at, d));
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = all.latencies_us;
    lat.sort_unstable();
    let n = lat.len() as u64;
    let failed: u64 = all.failures.values().sum();
    Report {
        mode: format!("{:?}", cfg.mode).to_lowercase(),
        endpoint: cfg.endpoint.to_string(),
        concurrency: cfg.concurrency,
        message_bytes: cfg.message.len(),
        nodelay: cfg.nodelay,
        quickack: cfg.quickack,
        messages: n,
        ok: all.ok,
        failed,
        elapsed_s: elapsed,
        msgs_per_s: if elapsed > 0.0 {
            all.ok as f64 / elapsed
        } else {
            0.0
        },
        latency: Latency {
            p50_ms: percentile(&lat, 50.0),
            p90_ms: percentile(&lat, 90.0),
            p99_ms: percentile(&lat, 99.0),
            max_ms: lat.last().copied().unwrap_or(0) as f64 / 1000.0,
            mean_ms: if n > 0 {
                lat.iter().sum::<u64>() as f64 / n as f64 / 1000.0
            } else {
                0.0
            },
        },
        replies: all.replies,
        failures: all.failures,
        first_failure: all.first_failure.map(|(_, d)| d),
    }
}

/// Opens `n` connections, negotiates on each and then holds them idle for
/// `hold` (a busy MTA keeps sessions open between messages): for measuring
/// a daemon's memory per idle session. Returns how many were established.
pub async fn hold_idle(ep: &Endpoint, n: usize, hold: Duration) -> usize {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut c) = milter_client::MilterClient::connect(ep).await else {
            break;
        };
        if c.negotiate(
            milter_client::consts::ALL_ACTIONS,
            milter_client::consts::ALL_PROTOCOL,
        )
        .await
        .is_err()
        {
            break;
        }
        let _ = c
            .connect_info(
                "client.example.com",
                Some(SocketAddr::from(([192, 0, 2, 1], 40000))),
            )
            .await;
        clients.push(c);
    }
    let established = clients.len();
    eprintln!("milter-bench: {established} idle sessions open");
    tokio::time::sleep(hold).await;
    for c in clients {
        let _ = c.quit().await;
    }
    established
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_message_has_the_size_and_line_shape() {
        let m = generate_message("example.com", 10_000);
        assert!(m.len() >= 10_000 && m.len() < 10_080);
        let text = String::from_utf8(m).unwrap();
        assert!(text.starts_with("From: Bench Sender <bench@example.com>\r\n"));
        assert!(text.lines().all(|l| l.len() <= 78));
    }

    #[test]
    fn macro_definitions_parse() {
        let m: MacroDef = "mail:{auth_authen}=alice".parse().unwrap();
        assert_eq!(m.stage, "mail");
        assert_eq!(m.name, "{auth_authen}");
        assert_eq!(m.value, "alice");
        assert!("nostage:x=1".parse::<MacroDef>().is_err());
        assert!("mail:x".parse::<MacroDef>().is_err());
    }

    #[test]
    fn expectations_need_the_header_and_the_text() {
        let e = Mode::Verify.default_expectation();
        let ar = |v: &str| Modification::InsertHeader {
            index: 0,
            name: "Authentication-Results".into(),
            value: v.into(),
        };
        assert!(e.is_met(&[ar("mx; dkim=pass header.d=example.com")]));
        assert!(!e.is_met(&[ar("mx; dkim=fail header.d=example.com")]));
        assert!(!e.is_met(&[]));
        let s = Mode::Sign.default_expectation();
        assert!(s.is_met(&[Modification::AddHeader {
            name: "dkim-signature".into(),
            value: "v=1".into()
        }]));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
