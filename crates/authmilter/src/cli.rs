//! The command line: `authmilter [OPTIONS] genkey|testkey|audit|completions ...`, on clap (the
//! same parsing, help and one-line usage errors as the daemons, see `chassis::cli`).
//!
//! Adding a command: a variant of [`Command`] (its arguments a `clap::Args` struct, here or in
//! the crate that implements it) and one arm in [`dispatch`], which hands it the parsed
//! [`GlobalArgs`] and the output streams and returns the exit status.

use crate::audit::{audit, AuditOptions};
use crate::dns::Dns;
use crate::genkey::{genkey, key_kind, GenkeyOptions};
use crate::report::Report;
use crate::testkey::{keys_from_config, testkey, KeyToTest};
use chassis::cli;
use chassis::dns::ResolverSettings;
use clap::{Args, CommandFactory, Parser, Subcommand};
use dkim_policy::config::Config;
use std::io::Write;
use std::path::{Path, PathBuf};

/// sysexits(3), as the daemons use them.
pub const EX_USAGE: u8 = cli::EX_USAGE;
pub const EX_CANTCREAT: u8 = 73;
pub const EX_CONFIG: u8 = 78;

/// Where the daemons' configuration lives by default; its `[resolver]` is used when present.
pub const DEFAULT_CONFIG: &str = "/etc/authmilter/dkim-milter.toml";

/// The exit statuses, for `--help` and the man page.
macro_rules! exit_status {
    () => {
        "testkey and audit: 0 all OK, 1 worst finding WARN, 2 worst finding FAIL; genkey: 0 \
         done; reports: 0 done, 65 inspect: not a readable report, 66 inspect: cannot open \
         FILE, 75 the history store could not be read or written; any command: 64 usage \
         error, 73 cannot write the key, 78 configuration error."
    };
}
const EXIT_STATUS: &str = exit_status!();

/// The command line. Options of the whole program (`-c`, `--nameserver`, `--timeout`, `--json`)
/// go anywhere on the line; each command is one variant of [`Command`] with its own arguments.
#[derive(Debug, Parser)]
#[command(
    name = "authmilter",
    version,
    about = "Operator tools for dkim-milter and dmarc-milter: DKIM keys, a mail DNS audit, DMARC reports",
    long_about = "authmilter makes DKIM keys (genkey), checks published key records against the \
        private keys (testkey), and audits a domain's mail DNS (audit). Every lookup goes through \
        the resolver settings of the daemons' configuration, so the tools see what the milters see. \
        reports makes and sends the DMARC reports from dmarc-milter's history (run) and reads \
        received ones (inspect).",
    after_long_help = concat!("Exit status: ", exit_status!()),
    disable_help_subcommand = true,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// dkim-milter (or dmarc-milter) configuration: its [resolver] settings are used, and
    /// testkey checks its keys [default: /etc/authmilter/dkim-milter.toml]; for reports, the
    /// report configuration [default: /etc/authmilter/dmarc-reports.toml]
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Ask this name server instead (repeatable; overrides the configuration)
    #[arg(long = "nameserver", value_name = "IP[:PORT]", global = true)]
    pub nameservers: Vec<String>,
    /// Per-query timeout in seconds
    #[arg(long, value_name = "SECONDS", global = true)]
    pub timeout: Option<f64>,
    /// Machine-readable output (one JSON object)
    #[arg(long, global = true)]
    pub json: bool,
}

/// The commands. A new one is a variant here and an arm in [`dispatch`].
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a DKIM key and print its DNS record and KeyTable/SigningTable lines
    #[command(
        long_about = "Make a DKIM key (default RSA 2048) in FILE (default SELECTOR.private, \
            mode 0600, never overwritten) and print its DNS record and KeyTable/SigningTable lines."
    )]
    Genkey(GenkeyArgs),
    /// Check that the published key record matches the private key
    #[command(
        long_about = "Check that the published key record matches the private key: the one \
            given with --domain, --selector and --key, or every KeyTable entry of the \
            configuration (-c)."
    )]
    Testkey(TestkeyArgs),
    /// Check a domain's mail DNS: MX, addresses, PTR/FCrDNS, SPF, DKIM, DMARC, MTA-STS, TLS-RPT
    Audit(AuditArgs),
    /// DMARC aggregate and failure reports from dmarc-milter's history (run, inspect)
    Reports(dmarc_reports::cli::ReportsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: cli::Shell,
    },
    /// Write the man pages (roff) into DIR: authmilter.1 and one per command, for packaging
    #[command(hide = true)]
    Manpages {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct GenkeyArgs {
    /// The signing domain (d=)
    #[arg(short = 'd', long, value_name = "DOMAIN")]
    pub domain: String,
    /// The selector (s=)
    #[arg(short = 's', long, value_name = "SELECTOR")]
    pub selector: String,
    /// Key type: rsa or ed25519 [default: rsa]
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    pub key_type: Option<String>,
    /// RSA key size: 2048 (default), 3072 or 4096
    #[arg(short = 'b', long, value_name = "BITS")]
    pub bits: Option<usize>,
    /// The private key file [default: SELECTOR.private]
    #[arg(short = 'o', long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TestkeyArgs {
    /// The signing domain of the key to test (with --selector and --key)
    #[arg(short = 'd', long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Its selector
    #[arg(short = 's', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Its private key file
    #[arg(short = 'k', long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The mail domain to audit
    #[arg(value_name = "DOMAIN")]
    pub domain: String,
    /// DKIM selectors to check (repeatable)
    #[arg(short = 's', long = "selector", value_name = "SELECTOR")]
    pub selectors: Vec<String>,
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
    let argv = std::iter::once("authmilter".to_string()).chain(argv.iter().cloned());
    match cli::parse::<Cli>(Cli::command(), argv, out, err) {
        Ok(parsed) => dispatch(parsed, out, err),
        Err(code) => code,
    }
}

/// Runs one parsed command.
pub fn dispatch(parsed: Cli, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let g = &parsed.global;
    match parsed.command {
        Command::Genkey(a) => run_genkey(g, &a, out, err),
        Command::Testkey(a) => {
            let keys = match testkey_keys(g, &a) {
                Ok(k) => k,
                Err((code, e)) => {
                    let _ = writeln!(err, "authmilter: {e}");
                    return code;
                }
            };
            let (dns, runtime) = match dns_runtime(g, err) {
                Ok(d) => d,
                Err(code) => return code,
            };
            print_report(&runtime.block_on(testkey(&dns, &keys)), g.json, &dns, out)
        }
        Command::Audit(a) => {
            let opts = AuditOptions {
                domain: a.domain,
                selectors: a.selectors,
            };
            let (dns, runtime) = match dns_runtime(g, err) {
                Ok(d) => d,
                Err(code) => return code,
            };
            print_report(&runtime.block_on(audit(&dns, &opts)), g.json, &dns, out)
        }
        Command::Reports(a) => dmarc_reports::cli::execute(a.command, g.config.clone(), out, err),
        Command::Completions { shell } => {
            cli::completions(Cli::command(), shell, out);
            0
        }
        Command::Manpages { dir } => {
            let page = std::fs::File::create(dir.join("authmilter.1"));
            let sections = [
                ("EXIT STATUS", vec![EXIT_STATUS.to_string()]),
                (
                    "FILES",
                    vec![format!(
                        "{DEFAULT_CONFIG}: the configuration whose [resolver] table is used and \
                         whose keys testkey checks, when -c is not given."
                    )],
                ),
                (
                    "SEE ALSO",
                    vec!["dkim-milter(8), dmarc-milter(8), dkim-milter.conf(5)".to_string()],
                ),
            ];
            let cmd = Cli::command().after_long_help(None::<&str>);
            match page.and_then(|mut f| cli::manpage(cmd, "1", &sections, &mut f, Some(&dir))) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = writeln!(err, "authmilter: {}: {e}", dir.display());
                    EX_CANTCREAT
                }
            }
        }
    }
}

/// The resolver from the configuration and the options, and a single-threaded runtime to run
/// a DNS check on; `Err` is the exit status, the reason written to `err`.
fn dns_runtime(g: &GlobalArgs, err: &mut dyn Write) -> Result<(Dns, tokio::runtime::Runtime), u8> {
    let settings = match resolver_settings(g.config.as_deref(), &g.nameservers, g.timeout) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "authmilter: {e}");
            return Err(EX_CONFIG);
        }
    };
    let dns = match Dns::from_settings(&settings) {
        Ok(d) => d,
        Err(e) => {
            let _ = writeln!(err, "authmilter: {e}");
            return Err(EX_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "authmilter: cannot start the runtime: {e}");
            return Err(EX_CONFIG);
        }
    };
    Ok((dns, runtime))
}

fn testkey_keys(g: &GlobalArgs, a: &TestkeyArgs) -> Result<Vec<KeyToTest>, (u8, String)> {
    match (&a.domain, &a.selector, &a.key) {
        (Some(d), Some(s), Some(k)) => Ok(vec![KeyToTest::from_file(d, s, k)]),
        (None, None, None) => {
            let path = g
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

fn run_genkey(g: &GlobalArgs, args: &GenkeyArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let kind = match key_kind(args.key_type.as_deref().unwrap_or("rsa"), args.bits) {
        Ok(k) => k,
        Err(e) => {
            let _ = writeln!(err, "authmilter: {e}");
            return EX_USAGE;
        }
    };
    let opts = GenkeyOptions {
        domain: args.domain.clone(),
        selector: args.selector.clone(),
        kind,
        out: args.out.clone(),
    };
    match genkey(&opts) {
        Ok(generated) => {
            if g.json {
                let v = serde_json::json!({
                    "private_key": generated.private_key,
                    "txt_name": format!("{}._domainkey.{}", opts.selector, opts.domain.trim_end_matches('.')),
                    "txt_value": generated.txt_value,
                    "zone_record": generated.zone_record,
                    "key_table": generated.key_table_line,
                    "signing_table": generated.signing_table_line,
                });
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                );
            } else {
                let _ = write!(out, "{}", generated.render(&opts));
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

    fn parse(v: &[&str]) -> Result<Cli, u8> {
        let argv = std::iter::once("authmilter").chain(v.iter().copied());
        cli::parse::<Cli>(Cli::command(), argv, &mut Vec::new(), &mut Vec::new())
    }

    #[test]
    fn global_options_anywhere() {
        let a = parse(&[
            "audit",
            "example.com",
            "--json",
            "--nameserver=127.0.0.1:53",
            "-s",
            "a",
            "--selector",
            "b",
        ])
        .unwrap();
        assert!(a.global.json);
        assert_eq!(a.global.nameservers, vec!["127.0.0.1:53"]);
        let Command::Audit(audit) = a.command else {
            panic!("{:?}", a.command)
        };
        assert_eq!(audit.domain, "example.com");
        assert_eq!(audit.selectors, vec!["a", "b"]);
        let a = parse(&["--json", "-c", "x.toml", "testkey"]).unwrap();
        assert!(a.global.json);
        assert_eq!(a.global.config, Some(PathBuf::from("x.toml")));
        assert_eq!(parse(&["--bogus"]).err(), Some(EX_USAGE));
        assert_eq!(parse(&["audit", "--nameserver"]).err(), Some(EX_USAGE));
        assert_eq!(
            parse(&["audit", "--timeout", "soon", "x"]).err(),
            Some(EX_USAGE)
        );
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
            run(&s(&["testkey", "--domain", "x.example"]), &mut o, &mut e),
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
        // Every usage error is one line naming the program.
        let text = String::from_utf8(e.clone()).unwrap();
        assert!(
            text.lines().all(|l| l.starts_with("authmilter: ")),
            "{text}"
        );
        assert_eq!(text.lines().count(), 6, "{text}");
        assert_eq!(
            run(
                &s(&["audit", "x.example", "--nameserver", "not-an-ip"]),
                &mut o,
                &mut e
            ),
            EX_CONFIG
        );
        o.clear();
        assert_eq!(run(&s(&["--help"]), &mut o, &mut e), 0);
        assert!(String::from_utf8_lossy(&o).contains("genkey"));
        o.clear();
        assert_eq!(run(&s(&["genkey", "--help"]), &mut o, &mut e), 0);
        assert!(String::from_utf8_lossy(&o).contains("--selector <SELECTOR>"));
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
