// SPDX-License-Identifier: GPL-3.0-or-later
//! `milter-bench`: command line of the load generator (see the library docs).

use clap::{Args, CommandFactory, Parser, Subcommand};
use milter_bench::{generate_message, hold_idle, run_bench, BenchConfig, Expectation, Mode};
use milter_client::Endpoint;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The command line. `run` is the default command: `milter-bench -e ENDPOINT ...` loads a milter.
#[derive(Debug, Parser)]
#[command(
    name = "milter-bench",
    version,
    about = "Load generator for milters: throughput, latency, and every answer checked",
    after_help = "Exit status: 0 if every message got the expected answer, 1 if any failed, \
        64 on usage errors.",
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Load a milter and check every answer (the default command)
    Run(Box<RunArgs>),
    /// Serve a DNS zone (UDP+TCP) until killed or --max-seconds
    Dns(DnsArgs),
    /// Hold N negotiated, idle sessions open
    Idle(IdleArgs),
    /// Sign through a throwaway OpenSMTPD 6.8 with our filter, filter-dkimsign or none; prints
    /// one JSON report
    Smtpd(SmtpdArgs),
    /// Run the test kit's throwaway Postfix with these milters until stdin closes (bench/soak)
    Postfix(PostfixArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: chassis::cli::Shell,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// inet:PORT@HOST, inet:HOST:PORT or unix:/path
    #[arg(short = 'e', long, value_name = "SPEC")]
    endpoint: Endpoint,
    /// sign (client 127.0.0.1, {auth_authen}), verify (client 192.0.2.x, expects dkim=pass) or
    /// dmarc (expects dmarc=pass)
    #[arg(short = 'm', long, value_name = "MODE", default_value = "sign")]
    mode: Mode,
    /// Concurrent sessions, one message per connection [default: 1]
    #[arg(short = 'c', long, value_name = "N", value_parser = at_least_one)]
    concurrency: Option<usize>,
    /// Stop after N messages [default: 100]
    #[arg(short = 'n', long, value_name = "N")]
    messages: Option<u64>,
    /// Stop after SECS seconds (instead of -n)
    #[arg(short = 'd', long, value_name = "SECS")]
    duration: Option<f64>,
    /// Send this message (RFC 5322, CRLF or LF)
    #[arg(long, value_name = "FILE")]
    message: Option<PathBuf>,
    /// Or a generated message of about BYTES
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    size: usize,
    /// From domain of the generated message
    #[arg(long, value_name = "DOMAIN", default_value = "example.com")]
    domain: String,
    /// Envelope sender [default: sender@example.com]
    #[arg(long, value_name = "ADDR")]
    mail_from: Option<String>,
    /// Envelope recipient [default: rcpt@example.org]
    #[arg(long, value_name = "ADDR")]
    rcpt: Option<String>,
    /// HELO name [default: mail.example.com]
    #[arg(long, value_name = "NAME")]
    helo: Option<String>,
    /// Client address instead of the mode's default
    #[arg(long, value_name = "IP")]
    client_ip: Option<std::net::IpAddr>,
    /// Extra macro (stages: connect helo mail rcpt data eoh eom); repeatable
    #[arg(long = "macro", value_name = "STAGE:NAME=VALUE")]
    macros: Vec<milter_bench::MacroDef>,
    /// Header that makes an answer correct
    #[arg(long, value_name = "NAME")]
    expect_header: Option<String>,
    /// Text its value must contain
    #[arg(long, value_name = "TEXT")]
    expect_contains: Option<String>,
    /// Do not set TCP_NODELAY on the client socket
    #[arg(long)]
    no_nodelay: bool,
    /// Delay our ACKs (by default TCP_QUICKACK is set after every read)
    #[arg(long)]
    no_quickack: bool,
    /// Per read/write timeout in seconds [default: 30]
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Write the first correctly modified message there
    #[arg(long, value_name = "FILE")]
    save_first: Option<PathBuf>,
    /// Client runtime threads
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
    /// Print the report as one JSON object
    #[arg(long)]
    json: bool,
    /// A Message-ID of its own for every message (a history store records each one)
    #[arg(long)]
    unique_message_ids: bool,
}

#[derive(Debug, Args)]
struct DnsArgs {
    /// The zone file to serve
    #[arg(long, value_name = "FILE")]
    zone: PathBuf,
    /// Address to listen on [default: a free loopback port]
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Write the bound address there once the sockets are bound
    #[arg(long, value_name = "FILE")]
    addr_file: Option<PathBuf>,
    /// Stop by itself after N seconds
    #[arg(long, value_name = "N", default_value_t = 3600.0)]
    max_seconds: f64,
    /// TTL of every record and of negative answers [default: 300, negative 60]; short TTLs let
    /// resolver caches expire while bench/soak's DNS front misbehaves
    #[arg(long, value_name = "SECS")]
    ttl: Option<u32>,
}

#[derive(Debug, Args)]
struct PostfixArgs {
    /// A milter in Postfix syntax (inet:HOST:PORT or unix:/path), in order; repeatable
    #[arg(long = "milter", value_name = "SPEC")]
    milters: Vec<String>,
    /// A main.cf setting NAME=VALUE that overrides the test kit's; repeatable
    #[arg(long = "set", value_name = "NAME=VALUE")]
    settings: Vec<String>,
    /// Write {"dir", "smtp", "submission"} as JSON there once Postfix runs
    #[arg(long, value_name = "FILE")]
    info_file: PathBuf,
    /// Stop by itself after N seconds
    #[arg(long, value_name = "N", default_value_t = 3600.0)]
    max_seconds: f64,
}

#[derive(Debug, Args)]
struct IdleArgs {
    /// inet:PORT@HOST, inet:HOST:PORT or unix:/path
    #[arg(short = 'e', long, value_name = "SPEC")]
    endpoint: Endpoint,
    /// How many sessions
    #[arg(long, value_name = "N", default_value_t = 1000)]
    sessions: usize,
    /// How long to hold them, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    hold: f64,
}

#[derive(Debug, Args)]
struct SmtpdArgs {
    /// none, ours, dkimsign or ours-verify (ours=PATH: that build of ours); several,
    /// comma-separated (`ours,dkimsign`), run side by side, each in an smtpd of its own, the
    /// messages dealt to them in turn
    #[arg(
        long,
        value_name = "FILTER[,FILTER…]",
        value_delimiter = ',',
        required = true
    )]
    filter: Vec<milter_bench::smtpd::FilterSpec>,
    /// Our filter's binary (dkim-milter)
    #[arg(
        long,
        value_name = "PATH",
        default_value = "target/release/dkim-milter"
    )]
    bin: PathBuf,
    /// Messages
    #[arg(short = 'n', long, value_name = "N", default_value_t = 200)]
    messages: u64,
    /// Concurrent SMTP sessions
    #[arg(short = 'c', long, value_name = "N", default_value_t = 4)]
    concurrency: usize,
    /// Size of the generated message
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    size: usize,
}

/// `-c 0` would never send anything.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("concurrency must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

const SUBCOMMANDS: &[&str] = &["run", "dns", "idle", "smtpd", "postfix", "completions"];

fn main() -> ExitCode {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `run` may be left out: anything but a command name or a request for help/version runs it.
    let first = argv.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let top_level = ["-h", "--help", "-V", "--version"];
    if !SUBCOMMANDS.contains(&first) && !top_level.contains(&first) {
        argv.insert(1, "run".into());
    }
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let cli: Cli = match chassis::cli::parse(Cli::command(), argv, &mut out, &mut err) {
        Ok(c) => c,
        Err(code) => return ExitCode::from(code),
    };
    let res = match cli.command {
        Sub::Dns(a) => cmd_dns(a),
        Sub::Idle(a) => cmd_idle(a),
        Sub::Smtpd(a) => cmd_smtpd(a),
        Sub::Postfix(a) => milter_bench::postfix::run(
            a.milters,
            &a.settings,
            &a.info_file,
            Duration::from_secs_f64(a.max_seconds),
        )
        .map(|()| ExitCode::SUCCESS),
        Sub::Run(a) => cmd_run(*a),
        Sub::Completions { shell } => {
            chassis::cli::completions(Cli::command(), shell, &mut out);
            Ok(ExitCode::SUCCESS)
        }
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("milter-bench: {e}");
            ExitCode::from(1)
        }
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    let mut b = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.enable_all().build().map_err(|e| e.to_string())
}

fn cmd_smtpd(a: SmtpdArgs) -> Result<ExitCode, String> {
    let reports = milter_bench::smtpd::run_side_by_side(
        &a.filter,
        &a.bin,
        a.messages,
        a.concurrency.max(1),
        a.size,
    )?;
    // One JSON object per filter, one per line.
    for report in &reports {
        println!(
            "{}",
            serde_json::to_string(report).map_err(|e| e.to_string())?
        );
    }
    Ok(if reports.iter().all(|r| r.failed == 0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn cmd_run(a: RunArgs) -> Result<ExitCode, String> {
    let mode = a.mode;
    let mut cfg = BenchConfig::new(a.endpoint, mode);
    cfg.message = match &a.message {
        Some(p) => std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => generate_message(&a.domain, a.size),
    };
    if let Some(n) = a.concurrency {
        cfg.concurrency = n;
    }
    if let Some(n) = a.messages {
        cfg.messages = Some(n);
    }
    if let Some(s) = a.duration {
        cfg.duration = Some(Duration::from_secs_f64(s));
        cfg.messages = None;
    }
    if let Some(v) = a.mail_from {
        cfg.mail_from = v;
    }
    if let Some(v) = a.rcpt {
        cfg.rcpt = v;
    }
    if let Some(v) = a.helo {
        cfg.helo = v;
    }
    cfg.client_ip = a.client_ip.or(cfg.client_ip);
    cfg.macros.extend(a.macros);
    cfg.nodelay &= !a.no_nodelay;
    cfg.quickack &= !a.no_quickack;
    if let Some(s) = a.timeout {
        cfg.timeout = Duration::from_secs_f64(s);
    }
    cfg.save_first = a.save_first;
    if a.unique_message_ids {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        cfg.unique_ids = Some(format!("{}.{t}", std::process::id()));
    }
    let (expect_header, expect_contains, json, threads) =
        (a.expect_header, a.expect_contains, a.json, a.threads);
    if expect_header.is_some() || expect_contains.is_some() {
        let d = mode.default_expectation();
        cfg.expect = Expectation {
            header: expect_header.unwrap_or(d.header),
            contains: expect_contains.or(d.contains),
        };
    }
    let report = runtime(threads)?.block_on(run_bench(cfg));
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", report.text());
    }
    if report.failed > 0 || report.messages == 0 {
        eprintln!(
            "milter-bench: {} of {} messages did not get the expected answer",
            report.failed, report.messages
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_dns(a: DnsArgs) -> Result<ExitCode, String> {
    let (zone_file, listen, addr_file, max) = (a.zone, a.listen, a.addr_file, a.max_seconds);
    let text =
        std::fs::read_to_string(&zone_file).map_err(|e| format!("{}: {e}", zone_file.display()))?;
    let mut zone = milter_bench::zone::parse_zone(&text)?;
    if let Some(ttl) = a.ttl {
        zone = zone.ttl(ttl).negative_ttl(ttl);
    }
    let dns = testkit::dns::TestDns::start_at_blocking(&zone, listen)
        .map_err(|e| format!("cannot start DNS server: {e}"))?;
    let addr = dns.addr();
    eprintln!(
        "milter-bench dns: serving {} on {addr}",
        zone_file.display()
    );
    if let Some(p) = addr_file {
        // Written once the sockets are bound, so a script can wait for it.
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, format!("{addr}\n")).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &p).map_err(|e| e.to_string())?;
    }
    // Bounded: a forgotten server stops by itself.
    let until = Instant::now() + Duration::from_secs_f64(max);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "milter-bench dns: --max-seconds reached after {} queries",
        dns.query_count()
    );
    dns.stop_blocking();
    Ok(ExitCode::SUCCESS)
}

fn cmd_idle(a: IdleArgs) -> Result<ExitCode, String> {
    let (endpoint, sessions, hold) = (a.endpoint, a.sessions, a.hold);
    let n = runtime(1)?.block_on(hold_idle(
        &endpoint,
        sessions,
        Duration::from_secs_f64(hold),
    ));
    println!("{n}");
    Ok(if n == sessions {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
