//! The command line every program of the project shares: clap parses it, and this module gives
//! every program the same answers — help and version on stdout with exit 0, a usage error as one
//! line on stderr with exit 64 (EX_USAGE, sysexits(3), as OpenDKIM's), shell completions and a
//! man page rendered from the same definitions, so `--help`, the completions and the man page
//! cannot disagree. The daemons' own command line ([`DaemonArgs`]) lives here too: both daemons
//! and both front ends read it.

use clap::{Arg, Command, FromArgMatches, Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

/// sysexits(3): the command line was wrong.
pub const EX_USAGE: u8 = 64;
/// sysexits(3): a file could not be written (a man page or completion directory).
pub const EX_CANTCREAT: u8 = 73;

pub use clap_complete::Shell;

/// Parses `argv` (program name first) with `cmd` into `T`. Help and version go to `out` (then
/// `Err(0)`); any other error is one line on `err`, naming the program and pointing at `--help`
/// (then `Err(EX_USAGE)`).
pub fn parse<T: FromArgMatches>(
    cmd: Command,
    argv: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<T, u8> {
    let name = cmd.get_name().to_string();
    let parsed = cmd
        .try_get_matches_from(argv)
        .and_then(|m| T::from_arg_matches(&m));
    match parsed {
        Ok(t) => Ok(t),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                let _ = write!(out, "{}", e.render());
                Err(0)
            }
            clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = writeln!(err, "{name}: a command is required; try '{name} --help'");
                Err(EX_USAGE)
            }
            _ => {
                let _ = writeln!(err, "{name}: {}; try '{name} --help'", one_line(&e));
                Err(EX_USAGE)
            }
        },
    }
}

/// clap's error without its "error: " prefix, tips and usage block: the first line only.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    first.trim().trim_start_matches("error: ").to_string()
}

/// Writes `shell`'s completion script for `cmd` to `out`.
pub fn completions(mut cmd: Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// The page of subcommand `sub` of `parent` (`PARENT-SUB.SECTION` in `dir`), and those of its
/// own visible subcommands, recursively (`authmilter-reports-run.1`).
fn sub_pages(
    sub: &Command,
    parent: &str,
    parent_bin: &str,
    top: &str,
    section: &'static str,
    dir: &std::path::Path,
) -> std::io::Result<()> {
    let sub_name = format!("{parent}-{}", sub.get_name());
    let page = sub
        .clone()
        .name(sub_name.clone())
        .bin_name(format!("{parent_bin} {}", sub.get_name()));
    let mut f = std::fs::File::create(dir.join(format!("{sub_name}.{section}")))?;
    let sub_man = clap_mangen::Man::new(page)
        .section(section)
        .manual("System Manager's Manual");
    sub_man.render_title(&mut f)?;
    sub_man.render_name_section(&mut f)?;
    sub_man.render_synopsis_section(&mut f)?;
    sub_man.render_description_section(&mut f)?;
    sub_man.render_options_section(&mut f)?;
    let nested: Vec<&Command> = sub
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect();
    if !nested.is_empty() {
        sub_man.render_subcommands_section(&mut f)?;
    }
    write_sections(&mut f, &[("SEE ALSO", vec![format!("{top}({section})")])])?;
    for n in nested {
        sub_pages(
            n,
            &sub_name,
            &format!("{parent_bin} {}", sub.get_name()),
            top,
            section,
            dir,
        )?;
    }
    Ok(())
}

/// A man page section of plain text: its title and paragraphs.
pub type ManSection<'a> = (&'a str, Vec<String>);

/// Writes the man page of `cmd` in `section` (roff) to `out`: NAME, SYNOPSIS, DESCRIPTION and
/// OPTIONS from clap, then `extra` sections (plain text, escaped here). Subcommands: with `pages`
/// (a directory) each visible subcommand gets a page of its own there (`NAME-SUB.SECTION`) and
/// the main page lists them by that name; without, the main page describes them itself.
pub fn manpage(
    cmd: Command,
    section: &'static str,
    extra: &[ManSection<'_>],
    out: &mut dyn Write,
    pages: Option<&std::path::Path>,
) -> std::io::Result<()> {
    let cmd = cmd.disable_help_subcommand(true);
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .manual("System Manager's Manual");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let subs: Vec<&Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    let name = cmd.get_name().to_string();
    match pages {
        Some(dir) => {
            if !subs.is_empty() {
                man.render_subcommands_section(out)?;
            }
            for sub in &subs {
                sub_pages(sub, &name, &name, &name, section, dir)?;
            }
        }
        None if !subs.is_empty() => {
            let mut text = String::from(".SH COMMANDS\n");
            for sub in &subs {
                let args: Vec<String> = sub
                    .get_positionals()
                    .map(|a| {
                        a.get_value_names()
                            .and_then(|v| v.first())
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| a.get_id().to_string().to_uppercase())
                    })
                    .collect();
                let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
                text.push_str(&format!(
                    ".TP\n.B {}\n{}\n",
                    escape(format!("{name} {} {}", sub.get_name(), args.join(" ")).trim()),
                    escape(&about)
                ));
            }
            out.write_all(text.as_bytes())?;
        }
        None => {}
    }
    write_sections(out, extra)?;
    man.render_version_section(out)
}

/// Plain text for roff: backslashes and hyphens escaped, no line starting as a request.
fn escape(text: &str) -> String {
    let t = text.replace('\\', "\\\\").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

fn write_sections(out: &mut dyn Write, sections: &[ManSection<'_>]) -> std::io::Result<()> {
    for (title, paragraphs) in sections {
        writeln!(out, ".SH \"{title}\"")?;
        for (i, p) in paragraphs.iter().enumerate() {
            if i > 0 {
                writeln!(out, ".PP")?;
            }
            writeln!(out, "{}", escape(p))?;
        }
    }
    Ok(())
}

/// What a daemon is called and where it looks by default; the clap command is built from it.
pub struct DaemonInfo {
    pub name: &'static str,
    pub default_config: &'static str,
    /// One line for `--help` and the man page's NAME section.
    pub about: &'static str,
    /// The man page's DESCRIPTION (and `--help`'s long form).
    pub long_about: &'static str,
    pub version: &'static str,
}

/// A daemon's command line (dkim-milter, dmarc-milter). The spellings are OpenDKIM's and
/// OpenDMARC's where they have one: `-c FILE` (OpenDMARC; OpenDKIM's `-x FILE` is accepted too),
/// `-n` to check the configuration, `-f` (stay in the foreground: we always do).
#[derive(Debug, Parser)]
pub struct DaemonArgs {
    /// Configuration file: TOML, or the original opendkim.conf/opendmarc.conf format
    #[arg(
        short = 'c',
        long = "config",
        short_alias = 'x',
        value_name = "FILE",
        global = true
    )]
    pub config: Option<PathBuf>,
    /// Load the configuration, keys and tables, report problems, and exit 0 (good) or 78
    #[arg(short = 'n', long = "check-config")]
    pub check_config: bool,
    /// Serve as an OpenSMTPD filter on stdin/stdout (smtpd's proc-exec) instead of a milter
    /// socket; the configuration's socket and user settings do not apply
    #[arg(long)]
    pub opensmtpd: bool,
    /// Accepted for OpenDKIM/OpenDMARC command lines; the daemon always stays in the foreground
    #[arg(short = 'f', long = "foreground")]
    pub foreground: bool,
    #[command(subcommand)]
    pub command: Option<DaemonCommand>,
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Print the TOML equivalent of an opendkim.conf/opendmarc.conf file
    Convert {
        /// The legacy configuration file
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Same as -n
    #[command(name = "check-config", hide = true)]
    CheckConfig,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff), for packaging
    #[command(hide = true)]
    Manpage,
}

/// What the daemon was asked to do, once help, version, completions and the man page are done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonTask {
    Serve { config: PathBuf, opensmtpd: bool },
    Check { config: PathBuf },
    Convert { file: PathBuf },
}

const DAEMON_EXIT_STATUS: &str = "0 stopped cleanly or configuration OK; 64 usage error; 71 \
cannot listen, start or write the pid file; 76 an OpenSMTPD filter protocol we do not speak; 77 \
cannot switch user; 78 configuration error (file, line and key named on stderr). As sysexits(3) \
and OpenDKIM.";

const DAEMON_SIGNALS: &str = "SIGHUP (or SIGUSR1) reloads the configuration, keys and tables (a \
bad reload keeps the old configuration); SIGTERM or SIGINT stops taking connections and lets open \
sessions finish within the configured grace period.";

impl DaemonInfo {
    /// The daemon's clap command: [`DaemonArgs`] named, versioned and documented for it.
    pub fn command(&self) -> Command {
        use clap::CommandFactory;
        DaemonArgs::command()
            .name(self.name)
            .bin_name(self.name)
            .version(self.version)
            .about(self.about)
            .long_about(self.long_about)
            .after_long_help(format!(
                "Exit status: {DAEMON_EXIT_STATUS}\n\nSignals: {DAEMON_SIGNALS}\n\nFiles: {} \
                 (default configuration). See {}.conf(5).",
                self.default_config, self.name
            ))
            .disable_help_subcommand(true)
            .mut_arg("config", |a: Arg| {
                a.help(format!(
                    "Configuration file: TOML, or the original {} format [default: {}]",
                    if self.name.starts_with("dmarc") {
                        "opendmarc.conf"
                    } else {
                        "opendkim.conf"
                    },
                    self.default_config
                ))
            })
    }

    /// The daemon's man page, section 8.
    pub fn manpage(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let conf = format!("{}.conf(5)", self.name);
        let sections = [
            ("EXIT STATUS", vec![DAEMON_EXIT_STATUS.to_string()]),
            ("SIGNALS", vec![DAEMON_SIGNALS.to_string()]),
            (
                "FILES",
                vec![format!(
                    "{}: the configuration read by default and by the packaged systemd unit \
                     ({}.service); its keys are described in {conf}.",
                    self.default_config, self.name
                )],
            ),
            (
                "SEE ALSO",
                vec![format!("{conf}, authmilter(1), postconf(5)")],
            ),
        ];
        manpage(
            self.command().after_long_help(None::<&str>),
            "8",
            &sections,
            out,
            None,
        )
    }

    /// Parses the process's command line. Help, version, completions and the man page are
    /// printed here; `Err` carries the exit status for those and for usage errors.
    pub fn parse_env(&self) -> Result<DaemonTask, u8> {
        self.parse_from(std::env::args_os())
    }

    /// [`DaemonInfo::parse_env`] over `argv` (program name first).
    pub fn parse_from(
        &self,
        argv: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    ) -> Result<DaemonTask, u8> {
        let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
        let args: DaemonArgs = parse(self.command(), argv, &mut out, &mut err)?;
        let config = args
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(self.default_config));
        match args.command {
            Some(DaemonCommand::Convert { file }) => Ok(DaemonTask::Convert { file }),
            Some(DaemonCommand::CheckConfig) => Ok(DaemonTask::Check { config }),
            Some(DaemonCommand::Completions { shell }) => {
                completions(self.command(), shell, &mut out);
                Err(0)
            }
            Some(DaemonCommand::Manpage) => match self.manpage(&mut out) {
                Ok(()) => Err(0),
                Err(e) => {
                    let _ = writeln!(err, "{}: {e}", self.name);
                    Err(EX_CANTCREAT)
                }
            },
            None if args.check_config => Ok(DaemonTask::Check { config }),
            None => Ok(DaemonTask::Serve {
                config,
                opensmtpd: args.opensmtpd,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: DaemonInfo = DaemonInfo {
        name: "dkim-milter",
        default_config: "/etc/authmilter/dkim-milter.toml",
        about: "about",
        long_about: "long about",
        version: "9.9.9",
    };

    fn task(argv: &[&str]) -> Result<DaemonTask, u8> {
        INFO.parse_from(std::iter::once("dkim-milter").chain(argv.iter().copied()))
    }

    #[test]
    fn old_spellings_still_parse() {
        let cfg = |p: &str| PathBuf::from(p);
        assert_eq!(
            task(&[]),
            Ok(DaemonTask::Serve {
                config: cfg("/etc/authmilter/dkim-milter.toml"),
                opensmtpd: false
            })
        );
        for argv in [
            &["-n", "-c", "a.toml"][..],
            &["-c", "a.toml", "-n"],
            &["--check-config", "--config", "a.toml"],
            &["-c", "a.toml", "check-config"],
            &["-x", "a.toml", "-n"],
            &["-f", "-n", "-c", "a.toml"],
        ] {
            assert_eq!(
                task(argv),
                Ok(DaemonTask::Check {
                    config: cfg("a.toml")
                }),
                "{argv:?}"
            );
        }
        assert_eq!(
            task(&["--opensmtpd", "-c", "a.toml"]),
            Ok(DaemonTask::Serve {
                config: cfg("a.toml"),
                opensmtpd: true
            })
        );
        assert_eq!(
            task(&["convert", "x.conf"]),
            Ok(DaemonTask::Convert {
                file: cfg("x.conf")
            })
        );
        assert_eq!(task(&["--version"]), Err(0));
        assert_eq!(task(&["-h"]), Err(0));
    }

    #[test]
    fn usage_errors_are_one_line_and_64() {
        let mut out = Vec::new();
        let mut err = Vec::new();
        for argv in [&["--bogus"][..], &["-c"], &["convert"], &["frobnicate"]] {
            err.clear();
            let r: Result<DaemonArgs, u8> = parse(
                INFO.command(),
                std::iter::once("dkim-milter").chain(argv.iter().copied()),
                &mut out,
                &mut err,
            );
            assert_eq!(r.err(), Some(EX_USAGE), "{argv:?}");
            let text = String::from_utf8(err.clone()).unwrap();
            assert_eq!(text.lines().count(), 1, "{text}");
            assert!(text.starts_with("dkim-milter: "), "{text}");
            assert!(text.ends_with("try 'dkim-milter --help'\n"), "{text}");
        }
        let text = String::from_utf8(err).unwrap();
        assert!(text.contains("'frobnicate'"), "{text}");
    }

    #[test]
    fn manpage_and_completions_render() {
        let mut page = Vec::new();
        INFO.manpage(&mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.contains(".TH dkim-milter 8"), "{page}");
        assert!(page.contains("check\\-config"), "{page}");
        assert!(
            page.contains(".SH \"EXIT STATUS\"\n0 stopped cleanly"),
            "{page}"
        );
        assert!(page.contains(".B dkim\\-milter convert FILE\n"), "{page}");
        assert!(!page.contains("manpage"), "{page}");
        let mut bash = Vec::new();
        completions(INFO.command(), Shell::Bash, &mut bash);
        let bash = String::from_utf8(bash).unwrap();
        assert!(bash.contains("--opensmtpd"), "{bash}");
    }
}
