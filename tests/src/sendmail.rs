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
//! (`unshare -u -m`, root only) where the host name is `mx.test.example`, and `/etc/hosts` and
//! `/etc/resolv.conf` are bind-mounted from the instance directory: the host name resolves
//! from the file, and the only name server is 127.0.0.1:53, where nothing listens. The network
//! namespace is the host's, so the test connects to it normally.
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
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

use crate::judges::{in_ci, run_bounded};

/// Where tests/run.sh unpacks Debian's sendmail-bin package.
pub const SENDMAIL_ROOT: &str = "/opt/authmilter-tests/sendmail-bin";
/// Debian's m4 configuration kit (package sendmail-cf).
pub const CF_M4: &str = "/usr/share/sendmail/cf/m4/cf.m4";
/// How long start-up may take (measured: well under a second).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The instance's host name, `$j`, and what our milters are told to use as authserv-id.
pub const HOSTNAME: &str = "mx.test.example";
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
    let ok = |program: &str, args: &[&str]| {
        let mut cmd = Command::new(program);
        cmd.args(args);
        run_bounded(cmd, b"", Duration::from_secs(20)).is_ok_and(|o| o.status.success())
    };
    if !ok("m4", &["--version"]) {
        return Some("m4 is missing (apt-get install m4)".into());
    }
    if !ok("unshare", &["-u", "-m", "true"]) {
        return Some(
            "`unshare -u -m` does not work here (Sendmail needs root and new UTS and mount namespaces)"
                .into(),
        );
    }
    let mut ldd = Command::new("ldd");
    ldd.arg(&bin);
    match run_bounded(ldd, b"", Duration::from_secs(20)) {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("not found") => Some(format!(
            "{} lacks libraries (apt-get install libwrap0): {}",
            bin.display(),
            String::from_utf8_lossy(&o.stdout)
        )),
        _ => None,
    }
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
    dir: TempDir,
    child: Option<Child>,
    smtp: SocketAddr,
    submission: SocketAddr,
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

const SINK: &str = "#!/bin/sh\n\
umask 022\n\
cat > \"$1/.$2.tmp\" && exec mv \"$1/.$2.tmp\" \"$1/$2.eml\"\n";

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

/// The script run as root inside `unshare -u -m`: private host name, hosts and resolv.conf,
/// then Sendmail in the foreground (-bD), as this same process (exec), so killing the child
/// we started stops the daemon.
fn run_script(d: &Path, bin: &Path) -> String {
    let dir = d.display();
    format!(
        "#!/bin/sh\n\
         set -e\n\
         mount --make-rprivate / 2>/dev/null || true\n\
         hostname {HOSTNAME}\n\
         mount --bind {dir}/hosts /etc/hosts\n\
         mount --bind {dir}/resolv.conf /etc/resolv.conf\n\
         exec {bin} -C {dir}/sendmail.cf -bD\n",
        bin = bin.display()
    )
}

impl Sendmail {
    /// Starts an instance and waits (at most [`START_TIMEOUT`]) until it listens, as shown by
    /// its pid file (written after the daemon sockets are open).
    pub fn start(opts: SendmailOptions) -> io::Result<Sendmail> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(&opts) {
                Ok(s) => return Ok(s),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("sendmail did not start")))
    }

    fn start_once(opts: &SendmailOptions) -> io::Result<Sendmail> {
        let dir = tempfile::Builder::new().prefix("sendmail-test").tempdir()?;
        let d = dir.path();
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
        fs::create_dir(d.join("queue"))?;
        fs::set_permissions(d.join("queue"), fs::Permissions::from_mode(0o700))?;
        fs::create_dir(d.join("out"))?;
        fs::write(d.join("sink.sh"), SINK)?;
        fs::set_permissions(d.join("sink.sh"), fs::Permissions::from_mode(0o755))?;
        fs::write(d.join("service.switch"), "hosts files\naliases files\n")?;
        fs::write(
            d.join("hosts"),
            format!("127.0.0.1 {HOSTNAME} localhost\n::1 localhost\n"),
        )?;
        fs::write(
            d.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )?;
        fs::write(d.join("aliases"), "")?;
        fs::write(d.join("helpfile"), "")?;
        fs::write(d.join("local-host-names"), "")?;

        let smtp_port = free_port()?;
        let mut submission_port = free_port()?;
        while submission_port == smtp_port {
            submission_port = free_port()?;
        }
        fs::write(
            d.join("sendmail.mc"),
            mc(d, smtp_port, submission_port, opts),
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
        let script = d.join("run.sh");
        fs::write(&script, run_script(d, &sendmail_binary()))?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;

        let stdout = fs::File::create(d.join("stdout.log"))?;
        let stderr = fs::File::create(d.join("stderr.log"))?;
        let child = Command::new("unshare")
            .arg("-u")
            .arg("-m")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group, so drop can stop every process of the instance.
            .process_group(0)
            .spawn()?;
        let mut me = Sendmail {
            dir,
            child: Some(child),
            smtp: SocketAddr::from((Ipv4Addr::LOCALHOST, smtp_port)),
            submission: SocketAddr::from((Ipv4Addr::LOCALHOST, submission_port)),
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = match self.child.as_mut() {
                Some(c) => c.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                let err = self.stderr_log();
                let kind = if err.contains("Address already in use") {
                    io::ErrorKind::AddrInUse
                } else {
                    io::ErrorKind::Other
                };
                return Err(io::Error::new(
                    kind,
                    format!("sendmail exited during start-up ({status}): {err}"),
                ));
            }
            if !read_lossy(&self.dir.path().join("sendmail.pid"))
                .trim()
                .is_empty()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "sendmail did not start within {START_TIMEOUT:?}: {}",
                        self.stderr_log()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The plain SMTP daemon (`{daemon_name}` = MTA).
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp
    }

    /// The submission daemon (`{daemon_name}` = [`SUBMISSION_NAME`]).
    pub fn submission_addr(&self) -> SocketAddr {
        self.submission
    }

    /// The instance's directory (sendmail.mc/.cf, queue/, out/).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the daemon (and the namespace set-up) wrote to stderr and stdout.
    pub fn stderr_log(&self) -> String {
        format!(
            "{}{}",
            read_lossy(&self.dir.path().join("stderr.log")),
            read_lossy(&self.dir.path().join("stdout.log"))
        )
    }

    /// The names of the files left in the queue directory (messages not delivered).
    pub fn queue_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.dir.path().join("queue"))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Delivered messages so far, oldest first, as (queue id, message in CRLF form).
    pub fn deliveries(&self) -> Vec<(String, Vec<u8>)> {
        let mut found: Vec<(SystemTime, String, PathBuf)> = Vec::new();
        if let Ok(entries) = fs::read_dir(self.dir.path().join("out")) {
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
            .filter_map(|(_, qid, path)| {
                fs::read(path)
                    .ok()
                    .map(|b| (qid, crate::postfix::to_crlf(&b)))
            })
            .collect()
    }

    /// Waits until at least `n` messages were delivered or `timeout` passed; returns what was
    /// delivered by then.
    pub fn wait_for_deliveries(&self, n: usize, timeout: Duration) -> Vec<(String, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.deliveries();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stops the instance: SIGTERM to its process group, SIGKILL after 5 s, then reaps.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = format!("-{}", child.id());
        let _ = Command::new("kill")
            .args(["-TERM", "--", &group])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Sendmail {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_lossy(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milter_syntax() {
        assert_eq!(
            milter_inet("127.0.0.1:8891".parse().unwrap()),
            "inet:8891@127.0.0.1"
        );
        assert_eq!(milter_unix(Path::new("/run/x.sock")), "unix:/run/x.sock");
    }

    /// An instance starts, accepts mail on both ports, delivers it with its own Received on
    /// top, and is gone after drop.
    #[test]
    fn starts_delivers_and_stops() {
        if !require_sendmail() {
            return;
        }
        let sm = Sendmail::start(SendmailOptions::default()).expect("sendmail starts");
        let msg = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: plain\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <x@example.com>\r\n\r\n.dot\r\nhi\r\n";
        for addr in [sm.smtp_addr(), sm.submission_addr()] {
            let r = crate::smtp::send(
                addr,
                "client.test",
                "a@example.com",
                &["b@example.org"],
                msg,
                None,
            )
            .expect("smtp");
            assert_eq!(r.code, 250, "{r}\n{}", sm.stderr_log());
        }
        let got = sm.wait_for_deliveries(2, Duration::from_secs(10));
        assert_eq!(got.len(), 2, "{}", sm.stderr_log());
        for (qid, m) in &got {
            let text = String::from_utf8_lossy(m);
            assert!(text.starts_with("Received: from "), "{text}");
            assert!(text.contains(&format!("with ESMTP id {qid}")), "{text}");
            assert!(text.ends_with("\r\n.dot\r\nhi\r\n"), "{text}");
        }
        let addr = sm.smtp_addr();
        let dir = sm.dir().to_path_buf();
        drop(sm);
        assert!(std::net::TcpStream::connect(addr).is_err());
        assert!(!dir.exists());
    }
}
