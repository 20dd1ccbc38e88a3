//! One face for the real MTAs the end-to-end tests drive ([`crate::postfix`],
//! [`crate::sendmail`], [`crate::opensmtpd`]).
//!
//! Why: an end-to-end scenario ("submitted mail is signed", "a forged A-R is removed", ...) is
//! the same story whichever MTA carries the mail; only a few facts differ (milter socket syntax,
//! how the submission port is told apart, what the MTA logs and where, what its Received field
//! and its tempfail reply look like). Scenarios are written once against [`Mta`] and
//! [`MtaKind`] and run for each MTA, so a check added for one MTA is made for all of them, and a
//! new MTA is one more implementation of the trait instead of another copy of every test.
//!
//! The parts of a throwaway instance that do not depend on the MTA live here too ([`Instance`]):
//! a temporary directory with an `out/` directory filled by a delivery sink script
//! (`<queue id>.eml`, written under a hidden name and renamed), two free loopback ports, the
//! child process with a bounded start-up wait and a bounded stop. Sendmail and OpenSMTPD both
//! need private copies of fixed system paths; the namespace set-up they share
//! ([`Instance::spawn_in_namespaces`], [`Instance::stop_group`]) lives here as well.

use std::fs;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

use crate::judges::run_bounded;
use crate::opensmtpd::{Opensmtpd, OpensmtpdOptions};
use crate::postfix::{Postfix, PostfixOptions};
use crate::sendmail::{Sendmail, SendmailOptions};
use crate::smtp::Reply;

/// How long an instance's start-up may take (measured: Postfix about 2 s, most of it
/// postfix-script's checks; Sendmail and OpenSMTPD well under a second).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The host name every test instance uses (Postfix `myhostname`, Sendmail `$j`), which is also
/// what our milters are told to use as authserv-id.
pub const HOSTNAME: &str = "mx.test.example";

/// Which MTA. The facts a scenario needs before an instance runs (to configure the milters it
/// starts first) are methods here; facts about a running instance are on [`Mta`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtaKind {
    Postfix,
    Sendmail,
    /// Not in [`MtaKind::ALL`] yet: OpenSMTPD speaks no milter, and the scenarios need our
    /// OpenSMTPD filter front end, which does not exist yet. The methods below that only make
    /// sense with that front end panic for it.
    Opensmtpd,
}

impl MtaKind {
    /// Every MTA the scenarios run against.
    pub const ALL: [MtaKind; 2] = [MtaKind::Postfix, MtaKind::Sendmail];

    /// "Postfix", "Sendmail" or "OpenSMTPD", for messages.
    pub fn name(self) -> &'static str {
        match self {
            MtaKind::Postfix => "Postfix",
            MtaKind::Sendmail => "Sendmail",
            MtaKind::Opensmtpd => "OpenSMTPD",
        }
    }

    /// The panic of the methods that need a milter (or the missing OpenSMTPD front end).
    fn no_milter(self, what: &str) -> ! {
        panic!(
            "{}: {what} needs a milter, and OpenSMTPD has none; declare filters with \
             testkit::opensmtpd::OpensmtpdOptions (our OpenSMTPD front end does not exist yet)",
            self.name()
        )
    }

    /// The skip gate: true when this MTA can run here; otherwise a loud line and false (a panic
    /// in CI), see [`crate::postfix::require_postfix`] and [`crate::sendmail::require_sendmail`].
    pub fn require(self) -> bool {
        match self {
            MtaKind::Postfix => crate::postfix::require_postfix(),
            MtaKind::Sendmail => crate::sendmail::require_sendmail(),
            MtaKind::Opensmtpd => crate::opensmtpd::require_opensmtpd(),
        }
    }

    /// A milter on a TCP socket, in this MTA's syntax.
    pub fn milter_inet(self, addr: SocketAddr) -> String {
        match self {
            MtaKind::Postfix => crate::postfix::milter_inet(addr),
            MtaKind::Sendmail => crate::sendmail::milter_inet(addr),
            MtaKind::Opensmtpd => self.no_milter("milter_inet"),
        }
    }

    /// A milter on a unix socket, in this MTA's syntax. Call [`MtaKind::prepare_unix_socket`]
    /// once the socket exists.
    pub fn milter_unix(self, path: &Path) -> String {
        match self {
            MtaKind::Postfix => crate::postfix::milter_unix(path),
            MtaKind::Sendmail => crate::sendmail::milter_unix(path),
            MtaKind::Opensmtpd => self.no_milter("milter_unix"),
        }
    }

    /// Makes a milter's unix socket reachable for this MTA. Postfix's daemons run as the
    /// unprivileged `postfix` user ([`crate::postfix::open_socket_for_postfix`]); Sendmail talks
    /// to milters as root and needs nothing; OpenSMTPD connects to no sockets (it runs its
    /// filters as child processes).
    pub fn prepare_unix_socket(self, path: &Path) -> io::Result<()> {
        match self {
            MtaKind::Postfix => crate::postfix::open_socket_for_postfix(path),
            MtaKind::Sendmail | MtaKind::Opensmtpd => Ok(()),
        }
    }

    /// The top-level dkim-milter TOML that makes mail on [`Mta::submission_addr`] outgoing
    /// (signed). Postfix's submission smtpd sets `{daemon_name}` to ORIGINATING, which
    /// `macro_list` matches (the usual Postfix set-up in place of SMTP AUTH); Sendmail's
    /// submission daemon is named [`crate::sendmail::SUBMISSION_NAME`], which `mta` trusts
    /// (OpenDKIM's `MTA MSA`).
    pub fn dkim_submission_trust(self) -> String {
        match self {
            MtaKind::Postfix => "macro_list = [\"daemon_name=ORIGINATING\"]".to_owned(),
            MtaKind::Sendmail => format!("mta = [\"{}\"]", crate::sendmail::SUBMISSION_NAME),
            MtaKind::Opensmtpd => self.no_milter("dkim_submission_trust"),
        }
    }

    /// What this MTA passes to milters as the client's name (`{client_name}` / the connect
    /// host name) for the test client on 127.0.0.1: Postfix does no reverse lookups here and
    /// sends the bracketed address; Sendmail's and OpenSMTPD's private /etc/hosts maps
    /// 127.0.0.1 to the instance's host name (OpenSMTPD reports it as the `rdns` field of
    /// link-connect).
    pub fn loopback_client_name(self) -> &'static str {
        match self {
            MtaKind::Postfix => "[127.0.0.1]",
            MtaKind::Sendmail | MtaKind::Opensmtpd => HOSTNAME,
        }
    }

    /// The reply to the end of DATA when a milter is unreachable and the MTA is set to
    /// tempfail then (Postfix `milter_default_action = tempfail`, Sendmail `F=T`).
    pub fn milter_unavailable_reply(self) -> Reply {
        let text = match self {
            MtaKind::Postfix => "4.7.1 Service unavailable - try again later",
            MtaKind::Sendmail => "4.3.2 Please try again later",
            // Measured with smtpd 6.8.0p2: when a filter exits or writes a malformed line, the
            // whole smtpd exits and the client's connection closes without a reply.
            MtaKind::Opensmtpd => panic!(
                "OpenSMTPD has no reply for an unavailable filter: smtpd exits when a filter dies"
            ),
        };
        Reply {
            code: 451,
            text: text.into(),
        }
    }
}

/// How to set up an instance, beyond its milters. Settings one MTA has no use for are ignored
/// by it.
#[derive(Clone, Debug, Default)]
pub struct MtaOptions {
    /// Postfix only: give the submission service its own cleanup(8) with
    /// `milter_macro_daemon_name = ORIGINATING` (see
    /// [`crate::postfix::PostfixOptions::originating_cleanup`]). Sendmail names the daemon the
    /// same way at every milter stage, so it has nothing to choose here.
    pub originating_cleanup: bool,
}

/// Starts an instance of `kind` with `milters` (specs from [`MtaKind::milter_inet`] /
/// [`MtaKind::milter_unix`], in order). Blocking: call it from `block_in_place` in async tests.
/// OpenSMTPD has no milters: `milters` must be empty for it (filters are set with
/// [`OpensmtpdOptions`] and [`Opensmtpd::start`]).
pub fn start(kind: MtaKind, milters: Vec<String>, opts: &MtaOptions) -> io::Result<Box<dyn Mta>> {
    Ok(match kind {
        MtaKind::Postfix => {
            let mut o = PostfixOptions::with_milters(milters);
            o.originating_cleanup = opts.originating_cleanup;
            Box::new(Postfix::start(o)?)
        }
        MtaKind::Sendmail => Box::new(Sendmail::start(SendmailOptions::with_milters(milters))?),
        MtaKind::Opensmtpd => {
            if !milters.is_empty() {
                kind.no_milter("start with milters");
            }
            Box::new(Opensmtpd::start(OpensmtpdOptions::default())?)
        }
    })
}

/// A message a milter rejected, as the MTA logged it.
#[derive(Clone, Debug)]
pub struct Rejection {
    /// The queue id the MTA had assigned (the `i` macro our milters log with).
    pub qid: String,
    /// The whole log line.
    pub line: String,
}

/// A running MTA instance; stopped when dropped. Every address routes to the instance's sink,
/// so nothing leaves the machine.
pub trait Mta: Send + Sync {
    /// Which MTA this is.
    fn kind(&self) -> MtaKind;

    /// The shared parts of the instance (directory, ports, deliveries).
    fn instance(&self) -> &Instance;

    /// What to show when an assertion fails: the MTA's log, queue, stderr, whatever it has.
    fn diagnostics(&self) -> String;

    /// The MTA's own log so far, or None when the harness cannot read one (Sendmail logs only
    /// through syslog, which has no reader in the test instance).
    fn log(&self) -> Option<String>;

    /// The names of the files left in the MTA's queue (messages not delivered or not yet
    /// removed after delivery).
    fn queue_files(&self) -> Vec<String>;

    /// The milter rejection at end of message the MTA logged (the first one), waiting up to
    /// `timeout` for it; None when this MTA has no readable log ([`Mta::log`]). Panics with the
    /// log when the MTA has a log but no such line appears.
    fn rejection(&self, timeout: Duration) -> Option<Rejection>;

    /// How the Received field this MTA adds to mail from the test client starts, up to and
    /// including its queue id, unfolded with white space collapsed (`helo` is the client's
    /// EHLO name).
    fn received_start(&self, helo: &str, qid: &str) -> String;

    /// The plain inbound SMTP port (mail from here is inbound: verified).
    fn smtp_addr(&self) -> SocketAddr {
        self.instance().smtp
    }

    /// The submission port (mail from here is outgoing when the milter is configured with
    /// [`MtaKind::dkim_submission_trust`]).
    fn submission_addr(&self) -> SocketAddr {
        self.instance().submission
    }

    /// The messages delivered so far, oldest first, as (queue id, message in CRLF form).
    fn deliveries(&self) -> Vec<(String, Vec<u8>)> {
        self.instance().deliveries()
    }

    /// Waits until at least `n` messages were delivered or `timeout` passed, and returns what
    /// was delivered by then (fewer than `n` means the wait timed out).
    fn wait_for_deliveries(&self, n: usize, timeout: Duration) -> Vec<(String, Vec<u8>)> {
        let got = poll(timeout, || {
            let got = self.deliveries();
            (got.len() >= n).then_some(got)
        });
        got.unwrap_or_else(|| self.deliveries())
    }

    /// Removes the delivered message `qid`, so a test can wait for the next delivery alone.
    fn remove_delivery(&self, qid: &str) -> io::Result<()> {
        fs::remove_file(self.instance().out_dir().join(format!("{qid}.eml")))
    }

    /// The first line of [`Mta::log`] containing `needle`, waiting up to `timeout`: Postfix
    /// writes its log through postlogd, so a line can land after the SMTP reply the client
    /// already has. None when it does not appear or the MTA has no readable log.
    fn wait_for_log_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        poll(timeout, || {
            self.log()?
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_owned)
        })
    }
}

/// Calls `f` every 20 ms until it returns Some or `timeout` passed (one last call at the end).
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The delivery sink the MTA runs for every message, as `sink.sh OUTDIR QUEUEID`: write to a
/// hidden temporary name, then rename, so a reader never sees half a message.
const SINK: &str = "#!/bin/sh\n\
umask 022\n\
cat > \"$1/.$2.tmp\" && exec mv \"$1/.$2.tmp\" \"$1/$2.eml\"\n";

/// What an instance's start-up check reports (see [`Instance::wait_started`]).
pub(crate) enum Startup {
    /// Listening: the instance can take mail.
    Ready,
    /// Not yet.
    Waiting,
    /// It reported a fatal error.
    Failed,
}

/// The MTA-independent state of a running instance: its directory, ports and child process.
pub struct Instance {
    dir: TempDir,
    pub(crate) child: Option<Child>,
    smtp: SocketAddr,
    submission: SocketAddr,
}

impl Instance {
    /// A new temporary directory named `prefix...` (mode 0755, so the MTA's unprivileged users
    /// can traverse it) with `out/` and the sink script `sink.sh`, and two distinct free
    /// loopback ports for the plain and submission services. The child is set with
    /// [`Instance::spawn`] once the configuration is written.
    fn prepare(prefix: &str) -> io::Result<Instance> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let d = dir.path();
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
        fs::create_dir(d.join("out"))?;
        fs::write(d.join("sink.sh"), SINK)?;
        fs::set_permissions(d.join("sink.sh"), fs::Permissions::from_mode(0o755))?;
        let smtp = free_port()?;
        let mut submission = free_port()?;
        while submission == smtp {
            submission = free_port()?;
        }
        Ok(Instance {
            dir,
            child: None,
            smtp: SocketAddr::from((Ipv4Addr::LOCALHOST, smtp)),
            submission: SocketAddr::from((Ipv4Addr::LOCALHOST, submission)),
        })
    }

    /// The instance's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the sink writes delivered messages.
    pub fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// The file `name` in the instance directory, lossily as text ("" when absent).
    pub fn read(&self, name: &str) -> String {
        read_lossy(&self.dir.path().join(name))
    }

    /// The port of the plain SMTP service, for the MTA's configuration.
    pub(crate) fn smtp_port(&self) -> u16 {
        self.smtp.port()
    }

    /// The port of the submission service, for the MTA's configuration.
    pub(crate) fn submission_port(&self) -> u16 {
        self.submission.port()
    }

    /// Starts the MTA process `cmd` (stdin from /dev/null, stdout and stderr to `stdout.log`
    /// and `stderr.log` in the instance directory, read back by [`Instance::output`]) and
    /// keeps it as the instance's child, which [`Instance::stop`] reaps.
    pub(crate) fn spawn(&mut self, mut cmd: Command) -> io::Result<()> {
        let stdout = fs::File::create(self.dir().join("stdout.log"))?;
        let stderr = fs::File::create(self.dir().join("stderr.log"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Writes the instance's private `hosts` (127.0.0.1 is [`HOSTNAME`]) and `resolv.conf`
    /// for [`Instance::spawn_in_namespaces`]. The only name server is 127.0.0.1:53, where
    /// nothing listens, so a lookup the MTA does on its own fails at once instead of asking the
    /// machine's DNS; `lookup file` is for OpenSMTPD's own resolver (OpenBSD's asr: /etc/hosts
    /// only, no DNS at all), and glibc ignores the keyword.
    pub(crate) fn write_private_etc(&self) -> io::Result<()> {
        let d = self.dir();
        fs::write(
            d.join("hosts"),
            format!("127.0.0.1 {HOSTNAME} localhost\n::1 localhost\n"),
        )?;
        fs::write(
            d.join("resolv.conf"),
            "nameserver 127.0.0.1\nlookup file\noptions timeout:1 attempts:1\n",
        )
    }

    /// Starts the MTA inside new UTS and mount namespaces (`unshare -u -m`, root only), in its
    /// own process group (see [`Instance::stop_group`]), with the instance's stdio files
    /// ([`Instance::spawn`]).
    ///
    /// Why: Sendmail and OpenSMTPD read fixed system paths (host name, /etc/hosts,
    /// /etc/resolv.conf, OpenSMTPD also its spool and control socket) that several instances
    /// running at once must not share, and must not find the machine's DNS. The script
    /// `run.sh` written here makes mounts private, sets the host name to [`HOSTNAME`], binds
    /// the files of [`Instance::write_private_etc`] over /etc/hosts and /etc/resolv.conf, then
    /// runs `body` (MTA-specific mounts and finally `exec` of the daemon in the foreground, so
    /// the child we started is the daemon). The network namespace is the host's, so tests
    /// connect to the instance normally.
    pub(crate) fn spawn_in_namespaces(&mut self, body: &str) -> io::Result<()> {
        let dir = self.dir().display().to_string();
        let script = self.dir().join("run.sh");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 set -e\n\
                 mount --make-rprivate / 2>/dev/null || true\n\
                 hostname {HOSTNAME}\n\
                 mount --bind {dir}/hosts /etc/hosts\n\
                 mount --bind {dir}/resolv.conf /etc/resolv.conf\n\
                 {body}"
            ),
        )?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
        let mut cmd = Command::new("unshare");
        cmd.arg("-u").arg("-m").arg(&script);
        cmd.process_group(0);
        self.spawn(cmd)
    }

    /// Stops a child started with [`Instance::spawn_in_namespaces`]: SIGTERM to its process
    /// group, up to `grace` for the daemon to exit, then SIGKILL to the group (processes it
    /// forked may outlive it), and reaps.
    pub(crate) fn stop_group(&mut self, grace: Duration) {
        let signal_group = |signal: &str, child: &Child| {
            let _ = Command::new("kill")
                .args([signal, "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
        };
        self.stop(
            |child| signal_group("-TERM", child),
            grace,
            |child, _| signal_group("-KILL", child),
        );
    }

    /// What the MTA process wrote to stderr, then stdout.
    pub fn output(&self) -> String {
        format!("{}{}", self.read("stderr.log"), self.read("stdout.log"))
    }

    /// Waits (at most [`START_TIMEOUT`]) until `check` says Ready. Fails when the child exits
    /// or `check` says Failed, with `report` (the MTA's stderr and log) in the error; the error
    /// kind is AddrInUse when the report says a port was taken, so [`start_retrying`] can try
    /// other ports.
    pub(crate) fn wait_started(
        &mut self,
        name: &str,
        check: impl Fn(&Instance) -> Startup,
        report: impl Fn(&Instance) -> String,
    ) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = match self.child.as_mut() {
                Some(c) => c.try_wait()?,
                None => None,
            };
            let state = check(self);
            if exited.is_some() || matches!(state, Startup::Failed) {
                let report = report(self);
                let kind = if report.contains("Address already in use") {
                    io::ErrorKind::AddrInUse
                } else {
                    io::ErrorKind::Other
                };
                let why = exited.map_or("fatal error logged".to_owned(), |s| s.to_string());
                return Err(io::Error::new(
                    kind,
                    format!("{name} failed to start ({why}):\n{report}"),
                ));
            }
            if matches!(state, Startup::Ready) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{name} did not start within {START_TIMEOUT:?}:\n{}",
                        report(self)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stops the child: `ask` (a polite stop), up to `grace` for the child to exit, then
    /// `finish` (told whether it exited; e.g. kill what is left), then kill and reap the child.
    /// Calling it again does nothing.
    pub(crate) fn stop(
        &mut self,
        ask: impl FnOnce(&Child),
        grace: Duration,
        finish: impl FnOnce(&Child, bool),
    ) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        ask(&child);
        let exited = poll(grace, || child.try_wait().ok().flatten()).is_some();
        finish(&child, exited);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The delivered messages, oldest first (by mtime), as (queue id, message): the sink writes
    /// LF line endings, which are turned back into CRLF (both MTAs store lines without their
    /// ending, so this is exactly what a next hop would get).
    pub fn deliveries(&self) -> Vec<(String, Vec<u8>)> {
        let mut found: Vec<(SystemTime, String, PathBuf)> = Vec::new();
        if let Ok(entries) = fs::read_dir(self.out_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(qid) = name.strip_suffix(".eml").filter(|_| !name.starts_with('.')) {
                    let mtime = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((mtime, qid.to_owned(), e.path()));
                }
            }
        }
        found.sort();
        found
            .into_iter()
            .filter_map(|(_, qid, path)| fs::read(path).ok().map(|b| (qid, to_crlf(&b))))
            .collect()
    }
}

/// Runs `start_once` on a fresh [`Instance::prepare`]d instance (directory `prefix...`), up to
/// three times while it fails with AddrInUse: the free ports an instance picks can be taken by
/// someone else before the MTA binds them.
pub(crate) fn start_retrying<T>(
    prefix: &str,
    mut start_once: impl FnMut(Instance) -> io::Result<T>,
) -> io::Result<T> {
    let mut last = None;
    for _ in 0..3 {
        match start_once(Instance::prepare(prefix)?) {
            Ok(v) => return Ok(v),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other(format!("{prefix} did not start"))))
}

/// Why `unshare -u -m` ([`Instance::spawn_in_namespaces`]) cannot work here (not root, or no
/// namespaces in this container), or None when it can; `mta` names the MTA in the message.
pub(crate) fn namespaces_unavailable(mta: &str) -> Option<String> {
    let mut cmd = Command::new("unshare");
    cmd.args(["-u", "-m", "true"]);
    let ok = run_bounded(cmd, b"", Duration::from_secs(20)).is_ok_and(|o| o.status.success());
    (!ok).then(|| {
        format!("`unshare -u -m` does not work here ({mta} needs root and new UTS and mount namespaces)")
    })
}

/// Which shared libraries `bin` lacks, per ldd (with `hint`, how to install them), or None.
pub(crate) fn missing_libraries(bin: &Path, hint: &str) -> Option<String> {
    let mut ldd = Command::new("ldd");
    ldd.arg(bin);
    match run_bounded(ldd, b"", Duration::from_secs(20)) {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("not found") => Some(format!(
            "{} lacks libraries ({hint}): {}",
            bin.display(),
            String::from_utf8_lossy(&o.stdout)
        )),
        _ => None,
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The file at `path` as text, lossily; "" when it cannot be read.
pub(crate) fn read_lossy(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The names of the files below `dir` (recursively), sorted; empty when it cannot be read.
pub(crate) fn files_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            } else {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Turns every bare LF into CRLF (CRLF stays CRLF).
pub fn to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 20);
    let mut prev = 0u8;
    for &b in bytes {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// The header section of a message (CRLF or LF), unfolded: one (name, value) per field, in
/// order, value without the leading space and with folding line breaks removed.
pub fn header_fields(message: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(message).replace("\r\n", "\n");
    let head = text.split("\n\n").next().unwrap_or("");
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = fields.last_mut() {
                v.push_str(line);
            }
        } else if let Some((n, v)) = line.split_once(':') {
            fields.push((n.to_owned(), v.trim_start().to_owned()));
        }
    }
    fields
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Sends `msg` from a@example.com to b@example.org through `addr`, greeting as
    /// client.test: the plain message the harness self-tests deliver.
    pub(crate) fn send_plain(addr: SocketAddr, msg: &[u8]) -> Reply {
        crate::smtp::send(
            addr,
            "client.test",
            "a@example.com",
            &["b@example.org"],
            msg,
            None,
        )
        .expect("smtp")
    }

    #[test]
    fn crlf_and_headers() {
        assert_eq!(to_crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
        let h = header_fields(b"A: 1\r\nB: x\r\n\ty\r\nC:z\r\n\r\nbody: no\r\n");
        assert_eq!(
            h,
            vec![
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "x\ty".to_owned()),
                ("C".to_owned(), "z".to_owned()),
            ]
        );
    }

    #[test]
    fn milter_syntax_per_kind() {
        let addr: SocketAddr = "127.0.0.1:8891".parse().unwrap();
        assert_eq!(MtaKind::Postfix.milter_inet(addr), "inet:127.0.0.1:8891");
        assert_eq!(MtaKind::Sendmail.milter_inet(addr), "inet:8891@127.0.0.1");
        for kind in MtaKind::ALL {
            assert_eq!(
                kind.milter_unix(Path::new("/run/x.sock")),
                "unix:/run/x.sock"
            );
        }
    }

    /// Each MTA starts, accepts mail on both ports, delivers it to the sink with its own
    /// Received field on top (as [`Mta::received_start`] says it starts), and is gone after
    /// drop. OpenSMTPD too, though the scenarios do not run against it yet.
    #[test]
    fn each_mta_starts_delivers_and_stops() {
        for kind in MtaKind::ALL.into_iter().chain([MtaKind::Opensmtpd]) {
            if !kind.require() {
                continue;
            }
            let mta = start(kind, Vec::new(), &MtaOptions::default()).expect("MTA starts");
            let msg = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: plain\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <x@example.com>\r\n\r\n.dot\r\nhi\r\n";
            for addr in [mta.smtp_addr(), mta.submission_addr()] {
                let r = send_plain(addr, msg);
                assert_eq!(r.code, 250, "{r}\n{}", mta.diagnostics());
                assert!(r.queue_id().is_some(), "{r}");
            }
            let got = mta.wait_for_deliveries(2, Duration::from_secs(10));
            assert_eq!(got.len(), 2, "{}", mta.diagnostics());
            for (qid, m) in &got {
                let text = String::from_utf8_lossy(m);
                let received = header_fields(m).remove(0);
                assert_eq!(received.0, "Received", "{text}");
                let received = received.1.split_whitespace().collect::<Vec<_>>().join(" ");
                let start = mta.received_start("client.test", qid);
                assert!(received.starts_with(&start), "{start}\n{text}");
                assert!(text.ends_with("\r\n.dot\r\nhi\r\n"), "{text}");
            }
            if let Some(log) = mta.log() {
                assert!(!log.contains("warning:"), "{log}");
            }
            let addr = mta.smtp_addr();
            let dir = mta.instance().dir().to_path_buf();
            drop(mta);
            assert!(std::net::TcpStream::connect(addr).is_err());
            assert!(!dir.exists());
        }
    }
}
