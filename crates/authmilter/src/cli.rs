//! The command line: `authmilter [OPTIONS] genkey|testkey|audit ...`.

use crate::audit::{audit, AuditOptions};
use crate::dns::Dns;
use crate::genkey::{genkey, key_kind, GenkeyOptions};
use crate::report::Report;
use crate::testkey::{keys_from_config, testkey, KeyToTest};
use chassis::dns::ResolverSettings;
use dkim_policy::config::Config;
use std::io::Write;
use std::path::{Path, PathBuf};

/// sysexits(3), as the daemons use them.
pub const EX_USAGE: u8 = 64;
pub const EX_CANTCREAT: u8 = 73;
pub const EX_CONFIG: u8 = 78;

/// Where the daemons' configuration lives by default; its `[resolver]` is used when present.
pub const DEFAULT_CONFIG: &str = "/etc/dkim-milter.toml";

pub const USAGE: &str = "usage: authmilter [OPTIONS] COMMAND [ARGS]

commands:
  genkey --domain DOMAIN --selector SELECTOR [--type rsa|ed25519] [--bits 2048|3072|4096]
         [--out FILE]
      Make a DKIM key (default RSA 2048; FILE default SELECTOR.private, mode 0600, never
      overwritten) and print its DNS record and KeyTable/SigningTable lines.
  testkey [--domain DOMAIN --selector SELECTOR --key FILE]
      Check that the published key record matches the private key: the one given, or every
      KeyTable entry of the configuration (-c).
  audit DOMAIN [--selector SELECTOR]...
      Check the domain's mail DNS: MX, addresses, PTR/FCrDNS, SPF, DKIM (given selectors), DMARC,
      MTA-STS and TLS-RPT records.
  reports run|... [-c /etc/dmarc-reports.toml]
      DMARC aggregate reports from dmarc-milter's history (`authmilter reports help`).

options (anywhere on the line):
  -c, --config FILE       dkim-milter (or dmarc-milter) configuration: its [resolver] settings are
                          used, and testkey checks its keys (default /etc/dkim-milter.toml)
  --nameserver IP[:PORT]  ask this name server instead (repeatable; overrides the config)
  --timeout SECONDS       per-query timeout
  --json                  machine-readable output
  -h, --help | -V, --version

exit status: testkey and audit: 0 all OK, 1 worst finding WARN, 2 worst finding FAIL;
  genkey: 0 done; any command: 64 usage error, 73 cannot write the key, 78 configuration error.";

/// Parsed command line.
#[derive(Debug, Default)]
struct Args {
    config: Option<PathBuf>,
    nameservers: Vec<String>,
    timeout: Option<f64>,
    json: bool,
    command: Option<String>,
    positional: Vec<String>,
    domain: Option<String>,
    selectors: Vec<String>,
    key: Option<PathBuf>,
    key_type: Option<String>,
    bits: Option<usize>,
    out: Option<PathBuf>,
    help: bool,
    version: bool,
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
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
            "--nameserver" => a.nameservers.push(value(flag)?),
            "--timeout" => {
                let v = value(flag)?;
                a.timeout = Some(
                    v.parse()
                        .map_err(|_| format!("--timeout: '{v}' is not a number"))?,
                )
            }
            "--json" => a.json = true,
            "-d" | "--domain" => a.domain = Some(value(flag)?),
            "-s" | "--selector" => a.selectors.push(value(flag)?),
            "-k" | "--key" => a.key = Some(PathBuf::from(value(flag)?)),
            "-t" | "--type" => a.key_type = Some(value(flag)?),
            "-b" | "--bits" => {
                let v = value(flag)?;
                a.bits = Some(
                    v.parse()
                        .map_err(|_| format!("--bits: '{v}' is not a number"))?,
                )
            }
            "-o" | "--out" => a.out = Some(PathBuf::from(value(flag)?)),
            "-h" | "--help" => a.help = true,
            "-V" | "--version" => a.version = true,
            f if f.starts_with('-') && f.len() > 1 => return Err(format!("unknown option '{f}'")),
            _ => {
                if a.command.is_none() {
                    a.command = Some(arg.clone());
                } else {
                    a.positional.push(arg.clone());
                }
            }
        }
    }
    Ok(a)
}

/// The resolver settings: the config file's `[resolver]` (when there is one), then command-line
/// overrides. Only the `[resolver]` table is read, so any of the daemons' files will do.
pub fn resolver_settings(
    config: Option<&Path>,
    nameservers: &[String],
    timeout: Option<f64>,
) -> Result<ResolverSettings, String> {
    let mut settings = ResolverSettings::default();
    let path = match config {
        Some(p) => Some(p.to_path_buf()),
        None if nameservers.is_empty() && Path::new(DEFAULT_CONFIG).exists() => {
            Some(PathBuf::from(DEFAULT_CONFIG))
        }
        None => None,
    };
    if let Some(path) = path {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let value: toml::Table =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(r) = value.get("resolver") {
            settings = r
                .clone()
                .try_into()
                .map_err(|e| format!("{}: [resolver]: {e}", path.display()))?;
        }
    }
    if !nameservers.is_empty() {
        settings.nameservers = nameservers.to_vec();
    }
    if let Some(t) = timeout {
        settings.timeout = t;
    }
    settings.parsed_nameservers()?;
    Ok(settings)
}

/// Runs the command line `argv` (without the program name); returns the exit status.
pub fn run(argv: &[String], out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    // The report program owns its command line (crates/dmarc-reports/src/cli.rs).
    if argv.first().map(String::as_str) == Some("reports") {
        return dmarc_reports::cli::run(&argv[1..], out, err);
    }
    let args = match parse_args(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(err, "authmilter: {e}\n{USAGE}");
            return EX_USAGE;
        }
    };
    if args.help {
        let _ = writeln!(out, "{USAGE}");
        return 0;
    }
    if args.version {
        let _ = writeln!(out, "authmilter {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    let usage = |err: &mut dyn Write, msg: &str| {
        let _ = writeln!(err, "authmilter: {msg}\n{USAGE}");
        EX_USAGE
    };
    let Some(command) = args.command.clone() else {
        return usage(err, "no command given");
    };
    match command.as_str() {
        "genkey" => run_genkey(&args, out, err),
        "testkey" | "audit" => {
            if command == "audit" && args.positional.len() != 1 {
                return usage(err, "audit takes one DOMAIN");
            }
            if command == "testkey" && !args.positional.is_empty() {
                return usage(err, "testkey takes no positional arguments");
            }
            let settings =
                match resolver_settings(args.config.as_deref(), &args.nameservers, args.timeout) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = writeln!(err, "authmilter: {e}");
                        return EX_CONFIG;
                    }
                };
            let dns = match Dns::from_settings(&settings) {
                Ok(d) => d,
                Err(e) => {
                    let _ = writeln!(err, "authmilter: {e}");
                    return EX_CONFIG;
                }
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = writeln!(err, "authmilter: cannot start the runtime: {e}");
                    return EX_CONFIG;
                }
            };
            let report = if command == "audit" {
                let opts = AuditOptions {
                    domain: args.positional[0].clone(),
                    selectors: args.selectors.clone(),
                };
                runtime.block_on(audit(&dns, &opts))
            } else {
                let keys = match testkey_keys(&args) {
                    Ok(k) => k,
                    Err((code, e)) => {
                        if code == EX_USAGE {
                            return usage(err, &e);
                        }
                        let _ = writeln!(err, "authmilter: {e}");
                        return code;
                    }
                };
                runtime.block_on(testkey(&dns, &keys))
            };
            print_report(&report, args.json, &dns, out)
        }
        other => usage(err, &format!("unknown command '{other}'")),
    }
}

fn testkey_keys(args: &Args) -> Result<Vec<KeyToTest>, (u8, String)> {
    match (&args.domain, args.selectors.as_slice(), &args.key) {
        (Some(d), [s], Some(k)) => Ok(vec![KeyToTest::from_file(d, s, k)]),
        (None, [], None) => {
            let path = args
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
            let cfg = Config::load(&path).map_err(|e| (EX_CONFIG, e.to_string()))?;
            let keys = keys_from_config(&cfg);
            if keys.is_empty() {
                return Err((EX_CONFIG, format!("{}: no keys configured", path.display())));
            }
            Ok(keys)
        }
        _ => Err((
            EX_USAGE,
            "testkey needs all of --domain, --selector and --key, or none of them (then every key of -c FILE)".into(),
        )),
    }
}

fn print_report(report: &Report, json: bool, dns: &Dns, out: &mut dyn Write) -> u8 {
    if json {
        let _ = writeln!(out, "{}", report.json());
    } else {
        let text = report.human();
        let mut lines = text.splitn(2, '\n');
        let first = lines.next().unwrap_or("");
        let _ = write!(
            out,
            "{first} (resolver: {})\n{}",
            dns.description,
            lines.next().unwrap_or("")
        );
    }
    report.exit
}

fn run_genkey(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let (Some(domain), [selector]) = (&args.domain, args.selectors.as_slice()) else {
        let _ = writeln!(
            err,
            "authmilter: genkey needs --domain and one --selector\n{USAGE}"
        );
        return EX_USAGE;
    };
    let kind = match key_kind(args.key_type.as_deref().unwrap_or("rsa"), args.bits) {
        Ok(k) => k,
        Err(e) => {
            let _ = writeln!(err, "authmilter: {e}");
            return EX_USAGE;
        }
    };
    let opts = GenkeyOptions {
        domain: domain.clone(),
        selector: selector.clone(),
        kind,
        out: args.out.clone(),
    };
    match genkey(&opts) {
        Ok(g) => {
            if args.json {
                let v = serde_json::json!({
                    "private_key": g.private_key,
                    "txt_name": format!("{}._domainkey.{}", opts.selector, opts.domain.trim_end_matches('.')),
                    "txt_value": g.txt_value,
                    "zone_record": g.zone_record,
                    "key_table": g.key_table_line,
                    "signing_table": g.signing_table_line,
                });
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                );
            } else {
                let _ = write!(out, "{}", g.render(&opts));
            }
            0
        }
        Err(e) => {
            let _ = writeln!(err, "authmilter: {e}");
            EX_CANTCREAT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn args_anywhere() {
        let a = parse_args(&s(&[
            "audit",
            "example.com",
            "--json",
            "--nameserver=127.0.0.1:53",
            "-s",
            "a",
            "--selector",
            "b",
        ]))
        .unwrap();
        assert_eq!(a.command.as_deref(), Some("audit"));
        assert_eq!(a.positional, vec!["example.com"]);
        assert!(a.json);
        assert_eq!(a.nameservers, vec!["127.0.0.1:53"]);
        assert_eq!(a.selectors, vec!["a", "b"]);
        assert!(parse_args(&s(&["--bogus"])).is_err());
        assert!(parse_args(&s(&["audit", "--nameserver"])).is_err());
    }

    #[test]
    fn usage_errors() {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        assert_eq!(run(&s(&[]), &mut o, &mut e), EX_USAGE);
        assert_eq!(run(&s(&["frobnicate"]), &mut o, &mut e), EX_USAGE);
        assert_eq!(
            run(
                &s(&["audit", "--nameserver", "127.0.0.1:1"]),
                &mut o,
                &mut e
            ),
            EX_USAGE
        );
        assert_eq!(
            run(&s(&["genkey", "--domain", "x.example"]), &mut o, &mut e),
            EX_USAGE
        );
        assert_eq!(
            run(
                &s(&[
                    "genkey",
                    "--domain",
                    "x.example",
                    "-s",
                    "a",
                    "--bits",
                    "1024"
                ]),
                &mut o,
                &mut e
            ),
            EX_USAGE
        );
        assert_eq!(
            run(
                &s(&["audit", "x.example", "--nameserver", "not-an-ip"]),
                &mut o,
                &mut e
            ),
            EX_CONFIG
        );
        assert_eq!(run(&s(&["--help"]), &mut o, &mut e), 0);
    }

    #[test]
    fn resolver_from_config_and_override() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "mode = \"v\"\n[resolver]\nnameservers = [\"127.0.0.1:5353\"]\ntimeout = 1.5\n",
        )
        .unwrap();
        let r = resolver_settings(Some(&p), &[], None).unwrap();
        assert_eq!(r.nameservers, vec!["127.0.0.1:5353"]);
        assert_eq!(r.timeout, 1.5);
        let r = resolver_settings(Some(&p), &["127.0.0.1:9".into()], Some(0.5)).unwrap();
        assert_eq!(r.nameservers, vec!["127.0.0.1:9"]);
        assert_eq!(r.timeout, 0.5);
    }
}
