// SPDX-License-Identifier: GPL-3.0-or-later
//! `milter-bench`: command line of the load generator (see the library docs).

use milter_bench::{generate_message, hold_idle, run_bench, BenchConfig, Expectation, Mode};
use milter_client::Endpoint;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage:
  milter-bench [run] -e ENDPOINT [options]     load a milter and check every answer
  milter-bench dns --zone FILE [--listen ADDR] [--addr-file FILE] [--max-seconds N]
                                               serve a DNS zone (UDP+TCP) until killed
  milter-bench idle -e ENDPOINT --sessions N [--hold SECS]
                                               hold N negotiated, idle sessions open
  milter-bench smtpd --filter none|ours|dkimsign|ours-verify [--bin PATH] [-n N] [-c N] [--size BYTES]
                                               sign through a throwaway OpenSMTPD 6.8 with our
                                               filter (PATH: dkim-milter), filter-dkimsign or
                                               none; prints one JSON report

run options:
  -e, --endpoint SPEC      inet:PORT@HOST, inet:HOST:PORT or unix:/path
  -m, --mode MODE          sign (client 127.0.0.1, {auth_authen}), verify (client 192.0.2.x,
                           expects dkim=pass) or dmarc (expects dmarc=pass)   [sign]
  -c, --concurrency N      concurrent sessions, one message per connection   [1]
  -n, --messages N         stop after N messages                             [100]
  -d, --duration SECS      stop after SECS seconds (instead of -n)
      --message FILE       send this message (RFC 5322, CRLF or LF)
      --size BYTES         or a generated message of about BYTES              [4096]
      --domain DOMAIN      From domain of the generated message             [example.com]
      --mail-from ADDR     envelope sender                         [sender@example.com]
      --rcpt ADDR          envelope recipient                         [rcpt@example.org]
      --helo NAME          HELO name                                  [mail.example.com]
      --client-ip IP       client address instead of the mode's default
      --macro STAGE:NAME=VALUE   extra macro (connect helo mail rcpt data eoh eom); repeatable
      --expect-header NAME       header that makes an answer correct
      --expect-contains TEXT     text its value must contain
      --no-nodelay         do not set TCP_NODELAY on the client socket
      --no-quickack        delay our ACKs (clear TCP_QUICKACK after every read; by default
                           it is set after every read, so every segment is acked at once)
      --timeout SECS       per read/write                                      [30]
      --save-first FILE    write the first correctly modified message there
      --threads N          client runtime threads                               [1]
      --json               print the report as one JSON object
Exit status: 0 if every message got the expected answer, 1 if any failed, 2 on usage errors.";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let sub = match args.first().map(String::as_str) {
        Some("dns") | Some("idle") | Some("run") | Some("smtpd") => args.remove(0),
        Some("-h") | Some("--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => "run".to_owned(),
    };
    let res = match sub.as_str() {
        "dns" => cmd_dns(args),
        "idle" => cmd_idle(args),
        "smtpd" => cmd_smtpd(args),
        _ => cmd_run(args),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("milter-bench: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// A tiny option parser: `--name VALUE` pairs and boolean flags.
struct Args {
    rest: std::vec::IntoIter<String>,
}

impl Args {
    fn value(&mut self, opt: &str) -> Result<String, String> {
        self.rest
            .next()
            .ok_or_else(|| format!("{opt} needs a value"))
    }

    fn parse<T: std::str::FromStr>(&mut self, opt: &str) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.value(opt)?;
        v.parse()
            .map_err(|e| format!("bad value {v:?} for {opt}: {e}"))
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

fn cmd_smtpd(argv: Vec<String>) -> Result<ExitCode, String> {
    let mut a = Args {
        rest: argv.into_iter(),
    };
    let mut filter = None;
    let mut bin = PathBuf::from("target/release/dkim-milter");
    let (mut n, mut c, mut size) = (200u64, 4usize, 4096usize);
    while let Some(opt) = a.rest.next() {
        match opt.as_str() {
            "--filter" => filter = Some(a.parse::<milter_bench::smtpd::Filter>(&opt)?),
            "--bin" => bin = PathBuf::from(a.value(&opt)?),
            "-n" | "--messages" => n = a.parse(&opt)?,
            "-c" | "--concurrency" => c = a.parse::<usize>(&opt)?.max(1),
            "--size" => size = a.parse(&opt)?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    let filter = filter.ok_or("--filter is required")?;
    let report = milter_bench::smtpd::run(filter, &bin, n, c, size)?;
    println!(
        "{}",
        serde_json::to_string(&report).map_err(|e| e.to_string())?
    );
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A deferred change to the configuration (applied once the mode is known).
type Setter = Box<dyn FnOnce(&mut BenchConfig)>;

fn cmd_run(argv: Vec<String>) -> Result<ExitCode, String> {
    let mut a = Args {
        rest: argv.into_iter(),
    };
    let mut endpoint: Option<Endpoint> = None;
    let mut mode = Mode::Sign;
    let mut cfg_fns: Vec<Setter> = Vec::new();
    let mut message: Option<PathBuf> = None;
    let mut size = 4096usize;
    let mut domain = "example.com".to_owned();
    let mut expect_header: Option<String> = None;
    let mut expect_contains: Option<String> = None;
    let mut json = false;
    let mut threads = 1usize;
    while let Some(opt) = a.rest.next() {
        match opt.as_str() {
            "-e" | "--endpoint" => {
                endpoint = Some(a.parse::<Endpoint>(&opt)?);
            }
            "-m" | "--mode" => mode = a.parse(&opt)?,
            "-c" | "--concurrency" => {
                let n: usize = a.parse(&opt)?;
                if n == 0 {
                    return Err("concurrency must be at least 1".into());
                }
                cfg_fns.push(Box::new(move |c| c.concurrency = n));
            }
            "-n" | "--messages" => {
                let n: u64 = a.parse(&opt)?;
                cfg_fns.push(Box::new(move |c| c.messages = Some(n)));
            }
            "-d" | "--duration" => {
                let s: f64 = a.parse(&opt)?;
                cfg_fns.push(Box::new(move |c| {
                    c.duration = Some(Duration::from_secs_f64(s));
                    c.messages = None;
                }));
            }
            "--message" => message = Some(PathBuf::from(a.value(&opt)?)),
            "--size" => size = a.parse(&opt)?,
            "--domain" => domain = a.value(&opt)?,
            "--mail-from" => {
                let v = a.value(&opt)?;
                cfg_fns.push(Box::new(move |c| c.mail_from = v));
            }
            "--rcpt" => {
                let v = a.value(&opt)?;
                cfg_fns.push(Box::new(move |c| c.rcpt = v));
            }
            "--helo" => {
                let v = a.value(&opt)?;
                cfg_fns.push(Box::new(move |c| c.helo = v));
            }
            "--client-ip" => {
                let ip: std::net::IpAddr = a.parse(&opt)?;
                cfg_fns.push(Box::new(move |c| c.client_ip = Some(ip)));
            }
            "--macro" => {
                let m: milter_bench::MacroDef = a.parse(&opt)?;
                cfg_fns.push(Box::new(move |c| c.macros.push(m)));
            }
            "--expect-header" => expect_header = Some(a.value(&opt)?),
            "--expect-contains" => expect_contains = Some(a.value(&opt)?),
            "--no-nodelay" => cfg_fns.push(Box::new(|c| c.nodelay = false)),
            "--no-quickack" => cfg_fns.push(Box::new(|c| c.quickack = false)),
            "--timeout" => {
                let s: f64 = a.parse(&opt)?;
                cfg_fns.push(Box::new(move |c| c.timeout = Duration::from_secs_f64(s)));
            }
            "--save-first" => {
                let p = PathBuf::from(a.value(&opt)?);
                cfg_fns.push(Box::new(move |c| c.save_first = Some(p)));
            }
            "--threads" => threads = a.parse(&opt)?,
            "--json" => json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let endpoint = endpoint.ok_or("--endpoint is required")?;
    let mut cfg = BenchConfig::new(endpoint, mode);
    cfg.message = match &message {
        Some(p) => std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => generate_message(&domain, size),
    };
    for f in cfg_fns {
        f(&mut cfg);
    }
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

fn cmd_dns(argv: Vec<String>) -> Result<ExitCode, String> {
    let mut a = Args {
        rest: argv.into_iter(),
    };
    let mut zone_file: Option<PathBuf> = None;
    let mut listen: Option<std::net::SocketAddr> = None;
    let mut addr_file: Option<PathBuf> = None;
    let mut max = 3600.0f64;
    while let Some(opt) = a.rest.next() {
        match opt.as_str() {
            "--zone" => zone_file = Some(PathBuf::from(a.value(&opt)?)),
            "--listen" => listen = Some(a.parse(&opt)?),
            "--addr-file" => addr_file = Some(PathBuf::from(a.value(&opt)?)),
            "--max-seconds" => max = a.parse(&opt)?,
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let zone_file = zone_file.ok_or("--zone is required")?;
    let text =
        std::fs::read_to_string(&zone_file).map_err(|e| format!("{}: {e}", zone_file.display()))?;
    let zone = milter_bench::zone::parse_zone(&text)?;
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

fn cmd_idle(argv: Vec<String>) -> Result<ExitCode, String> {
    let mut a = Args {
        rest: argv.into_iter(),
    };
    let mut endpoint: Option<Endpoint> = None;
    let mut sessions = 1000usize;
    let mut hold = 10.0f64;
    while let Some(opt) = a.rest.next() {
        match opt.as_str() {
            "-e" | "--endpoint" => endpoint = Some(a.parse(&opt)?),
            "--sessions" => sessions = a.parse(&opt)?,
            "--hold" => hold = a.parse(&opt)?,
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let endpoint = endpoint.ok_or("--endpoint is required")?;
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
