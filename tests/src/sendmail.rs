//! A real, throwaway Sendmail (Debian's 8.17) driving our milters in tests.
//!
//! Why: Sendmail is the MTA the milter protocol was made for, and it differs from Postfix in
//! macros, header handling and replies. This module runs a private instance on loopback.
//!
//! Getting the binary: Debian's `sendmail-bin` conflicts with `postfix` (both provide
//! mail-transport-agent), so it cannot be installed next to Postfix. tests/run.sh instead
//! downloads the package with `apt-get download` and unpacks it with `dpkg-deb -x` into
//! [`SENDMAIL_ROOT`] (override with `$AUTHMILTER_SENDMAIL_ROOT`); the binary's only library not
//! already present, libwrap0, and the m4 configuration kit `sendmail-cf` (no conflict) are
//! installed normally.
//!
//! Isolation: at start-up Sendmail looks up its own host name and, when it is not fully
//! qualified, retries every 60 seconds ("unable to qualify my own domain name"), asking the
//! system's DNS servers. The instance therefore runs in new UTS and mount namespaces
//! ([`Instance::spawn_in_namespaces`]) where the host name is `mx.test.example`, and
//! `/etc/hosts` and `/etc/resolv.conf` are bind-mounted from the instance directory: the host
//! name resolves from the file, and the only name server is 127.0.0.1:53, where nothing
//! listens. The network namespace is the host's, so the test connects to it normally.
//!
//! Configuration: a `.mc` file turned into `sendmail.cf` with m4 and Debian's cf.m4: two SMTP
//! daemons on loopback (Name=MTA, and Name=MSA, which our milter's `mta = ["MSA"]` trusts), the
//! milters as `INPUT_MAIL_FILTER(..., F=T)` (tempfail when unreachable), no DNS (nocanonify, a
//! service switch with files only), every recipient routed through a `filesink` mailer that
//! writes `<queue id>.eml` into `out/`, synchronous delivery, and
//! `DontBlameSendmail=TrustStickyBit` so milter sockets may live under /tmp (else:
//! "local socket name /tmp/.../dkim.sock unsafe: World writable directory", exit 71).
//! Sendmail logs only through syslog, which has no reader here; tests rely on SMTP replies,
//! delivered bytes and our own log lines.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::judges::{in_ci, run_bounded};
use crate::mta::{
    files_below, missing_libraries, namespaces_unavailable, start_retrying, Instance, Mta, MtaKind,
    Rejection, Startup,
};

/// Where tests/run.sh unpacks Debian's sendmail-bin package.
pub const SENDMAIL_ROOT: &str = "/opt/authmilter-tests/sendmail-bin";
/// Debian's m4 configuration kit (package sendmail-cf).
pub const CF_M4: &str = "/usr/share/sendmail/cf/m4/cf.m4";
/// The instance's host name, `$j`, and what our milters are told to use as authserv-id.
pub const HOSTNAME: &str = crate::mta::HOSTNAME;
/// The daemon name (`{daemon_name}`) of the submission port.
pub const SUBMISSION_NAME: &str = "MSA";

/// The unpacked sendmail binary.
pub fn sendmail_binary() -> PathBuf {
    let root = std::env::var_os("AUTHMILTER_SENDMAIL_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SENDMAIL_ROOT));
    root.join("usr/libexec/sendmail/sendmail")
}

/// A milter on a TCP socket in Sendmail's syntax (`inet:PORT@HOST`).
pub fn milter_inet(addr: SocketAddr) -> String {
    format!("inet:{}@{}", addr.port(), addr.ip())
}

/// A milter on a unix socket in Sendmail's syntax (`unix:/path`).
pub fn milter_unix(path: &Path) -> String {
    format!("unix:{}", path.display())
}

/// Why Sendmail cannot run here, or None when it can.
pub fn sendmail_unavailable() -> Option<String> {
    let bin = sendmail_binary();
    if !bin.is_file() {
        return Some(format!(
            "{} is missing (tests/run.sh unpacks sendmail-bin there)",
            bin.display()
        ));
    }
    if !Path::new(CF_M4).is_file() {
        return Some(format!(
            "{CF_M4} is missing (apt-get install sendmail-cf m4)"
        ));
    }
    let mut m4 = Command::new("m4");
    m4.arg("--version");
    if !run_bounded(m4, b"", Duration::from_secs(20)).is_ok_and(|o| o.status.success()) {
        return Some("m4 is missing (apt-get install m4)".into());
    }
    namespaces_unavailable("Sendmail")
        .or_else(|| missing_libraries(&bin, "apt-get install libwrap0"))
}

/// Gate for tests that need Sendmail: true when it can run; otherwise a loud message and false,
/// or a panic in CI (`CI=true`).
pub fn require_sendmail() -> bool {
    let Some(why) = sendmail_unavailable() else {
        return true;
    };
    let msg = format!("!!!!! SENDMAIL MISSING: {why}; this test did NOT run !!!!!");
    if in_ci() {
        panic!("{msg}");
    }
    eprintln!("{msg}");
    false
}

/// How to set up an instance.
#[derive(Clone, Debug, Default)]
pub struct SendmailOptions {
    /// Milters in Sendmail syntax (see [`milter_inet`], [`milter_unix`]), in order.
    pub milters: Vec<String>,
}

impl SendmailOptions {
    pub fn with_milters<I, S>(milters: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SendmailOptions {
            milters: milters.into_iter().map(Into::into).collect(),
        }
    }
}

/// A running Sendmail; killed (with its process group) and reaped on drop.
pub struct Sendmail {
    inst: Instance,
}

fn mc(d: &Path, smtp_port: u16, submission_port: u16, opts: &SendmailOptions) -> String {
    let dir = d.display();
    let mut filters = String::new();
    let mut names = Vec::new();
    for (i, spec) in opts.milters.iter().enumerate() {
        let name = format!("milter{i}");
        filters.push_str(&format!(
            "INPUT_MAIL_FILTER(`{name}', `S={spec}, F=T, T=C:10s;S:20s;R:20s;E:30s')dnl\n"
        ));
        names.push(name);
    }
    format!(
        "divert(-1)\n\
         divert(0)dnl\n\
         include(`{CF_M4}')dnl\n\
         VERSIONID(`authmilter test instance')dnl\n\
         OSTYPE(`linux')dnl\n\
         define(`confDOMAIN_NAME', `{HOSTNAME}')dnl\n\
         define(`confDONT_PROBE_INTERFACES', `True')dnl\n\
         define(`QUEUE_DIR', `{dir}/queue')dnl\n\
         define(`STATUS_FILE', `{dir}/statistics')dnl\n\
         define(`confPID_FILE', `{dir}/sendmail.pid')dnl\n\
         define(`confSERVICE_SWITCH_FILE', `{dir}/service.switch')dnl\n\
         define(`confHOSTS_FILE', `{dir}/hosts')dnl\n\
         define(`ALIAS_FILE', `{dir}/aliases')dnl\n\
         define(`confHELP_FILE', `{dir}/helpfile')dnl\n\
         define(`confCW_FILE', `-o {dir}/local-host-names')dnl\n\
         define(`confLOG_LEVEL', `14')dnl\n\
         define(`confDELIVERY_MODE', `interactive')dnl\n\
         define(`confTO_IDENT', `0')dnl\n\
         define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl\n\
         define(`confPRIVACY_FLAGS', `goaway')dnl\n\
         define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl\n\
         define(`confREFUSE_LA', `1000')dnl\n\
         define(`confQUEUE_LA', `1000')dnl\n\
         define(`confDELAY_LA', `0')dnl\n\
         define(`confMAX_DAEMON_CHILDREN', `0')dnl\n\
         define(`confCONNECTION_RATE_THROTTLE', `0')dnl\n\
         FEATURE(`nocanonify')dnl\n\
         FEATURE(`promiscuous_relay')dnl\n\
         FEATURE(`accept_unresolvable_domains')dnl\n\
         FEATURE(`accept_unqualified_senders')dnl\n\
         FEATURE(`no_default_msa')dnl\n\
         define(`SMART_HOST', `filesink:sink')dnl\n\
         DAEMON_OPTIONS(`Port={smtp_port}, Addr=127.0.0.1, Name=MTA')dnl\n\
         DAEMON_OPTIONS(`Port={submission_port}, Addr=127.0.0.1, Name={SUBMISSION_NAME}')dnl\n\
         {filters}\
         define(`confINPUT_MAIL_FILTERS', `{names}')dnl\n\
         MAILER(`smtp')dnl\n\
         MAILER_DEFINITIONS\n\
         Mfilesink,\tP={dir}/sink.sh, F=lsDFMhnu9S, S=EnvFromSMTP/HdrFromSMTP, R=EnvToSMTP, T=DNS/RFC822/SMTP,\n\
         \t\tA=sink.sh {dir}/out $i $u\n",
        names = names.join(","),
    )
}

impl Sendmail {
    /// Starts an instance and waits (at most [`crate::mta::START_TIMEOUT`]) until it listens,
    /// as shown by its pid file (written after the daemon sockets are open).
    pub fn start(opts: SendmailOptions) -> io::Result<Sendmail> {
        start_retrying("sendmail-test", |inst| Self::start_once(inst, &opts))
    }

    fn start_once(mut inst: Instance, opts: &SendmailOptions) -> io::Result<Sendmail> {
        let d = inst.dir().to_path_buf();
        // Mode 0700 from the start, like a real /var/spool/mqueue.
        fs::DirBuilder::new().mode(0o700).create(d.join("queue"))?;
        fs::write(d.join("service.switch"), "hosts files\naliases files\n")?;
        inst.write_private_etc()?;
        fs::write(d.join("aliases"), "")?;
        fs::write(d.join("helpfile"), "")?;
        fs::write(d.join("local-host-names"), "")?;

        fs::write(
            d.join("sendmail.mc"),
            mc(&d, inst.smtp_port(), inst.submission_port(), opts),
        )?;
        let m4 = Command::new("m4")
            .arg(d.join("sendmail.mc"))
            .stdin(Stdio::null())
            .output()?;
        if !m4.status.success() || m4.stdout.is_empty() {
            return Err(io::Error::other(format!(
                "m4 sendmail.mc failed: {}",
                String::from_utf8_lossy(&m4.stderr)
            )));
        }
        fs::write(d.join("sendmail.cf"), &m4.stdout)?;
        // Sendmail in the foreground (-bD), as the process we started (see
        // Instance::spawn_in_namespaces).
        inst.spawn_in_namespaces(&format!(
            "exec {} -C {}/sendmail.cf -bD\n",
            sendmail_binary().display(),
            d.display()
        ))?;
        let mut me = Sendmail { inst };
        me.inst.wait_started(
            "sendmail",
            |i| {
                if i.read("sendmail.pid").trim().is_empty() {
                    Startup::Waiting
                } else {
                    Startup::Ready
                }
            },
            |i| i.output(),
        )?;
        Ok(me)
    }

    /// The instance's directory (sendmail.mc/.cf, queue/, out/).
    pub fn dir(&self) -> &Path {
        self.inst.dir()
    }

    /// What the daemon (and the namespace set-up) wrote to stderr and stdout.
    pub fn stderr_log(&self) -> String {
        self.inst.output()
    }

    /// The configuration's version (`$Z`, the `DZ` line cf.m4 writes into sendmail.cf).
    fn cf_version(&self) -> String {
        self.inst
            .read("sendmail.cf")
            .lines()
            .find_map(|l| l.strip_prefix("DZ"))
            .unwrap_or_default()
            .to_owned()
    }

    /// Stops the instance ([`Instance::stop_group`], 5 s grace).
    pub fn stop(&mut self) {
        self.inst.stop_group(Duration::from_secs(5));
    }
}

impl Mta for Sendmail {
    fn kind(&self) -> MtaKind {
        MtaKind::Sendmail
    }

    fn instance(&self) -> &Instance {
        &self.inst
    }

    fn diagnostics(&self) -> String {
        format!(
            "Sendmail queue: {:?}; Sendmail stderr: {}",
            self.queue_files(),
            self.stderr_log()
        )
    }

    /// Sendmail logs only through syslog, which nothing reads in the test instance.
    fn log(&self) -> Option<String> {
        None
    }

    fn queue_files(&self) -> Vec<String> {
        files_below(&self.inst.dir().join("queue"))
    }

    /// No log to read (see [`Mta::log`]), and the 5xx reply to a rejected message names no
    /// queue id.
    fn rejection(&self, _timeout: Duration) -> Option<Rejection> {
        None
    }

    /// Debian's cf.m4 `_REC_HDR_` and `_REC_BY_`: `from HELO (CLIENT [ADDR]) by $j ($v/$Z) with
    /// ESMTP id $i`. The client's name comes from the instance's /etc/hosts (127.0.0.1 is
    /// [`HOSTNAME`]); `$v` (the binary's version) is taken to be the configuration's `$Z`, as
    /// sendmail-bin and sendmail-cf are built from one source package.
    fn received_start(&self, helo: &str, qid: &str) -> String {
        let v = self.cf_version();
        format!("from {helo} ({HOSTNAME} [127.0.0.1]) by {HOSTNAME} ({v}/{v}) with ESMTP id {qid}")
    }
}

impl Drop for Sendmail {
    fn drop(&mut self) {
        self.stop();
    }
}
