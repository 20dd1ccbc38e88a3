//! A real, throwaway Postfix (Debian's `postfix` 3.7) driving our milters in tests.
//!
//! Why: a milter that only our own milter client has talked to proves little about the MTA that
//! will really use it. Postfix has its own ideas about macros, header indexes (its own Received
//! header is hidden from milters but counts for insertions), line endings and error handling.
//! This module runs a private Postfix instance on loopback, so tests can send mail over SMTP and
//! read what Postfix actually delivers.
//!
//! The instance (recipe in /work/shared/research/postfix-milter.md, section 5b) lives entirely in
//! a temporary directory: `etc/` (main.cf, master.cf), `spool/` (queue_directory), `data/`,
//! `maillog` (Postfix's log, written by postlogd) and `out/`, where a `pipe(8)` transport writes
//! every delivered message as `<queue id>.eml`. Every address is routed to that transport, so
//! Postfix never relays anywhere, and it does no DNS lookups (no peer name lookup, no DNS in the
//! SMTP client). It listens on two loopback ports: "smtp" (a plain smtpd) and "submission"
//! (an smtpd with `milter_macro_daemon_name = ORIGINATING`, the usual Postfix way to tell a milter
//! "this is outgoing mail").
//!
//! Postfix must run as root (its `postfix` and `master` commands refuse anything else); the
//! daemons drop privileges to the `postfix` user, so milter unix sockets must be reachable by
//! that user (see [`open_socket_for_postfix`]).

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::judges::{in_ci, run_bounded};
use crate::mta::{
    files_below, read_lossy, start_retrying, Instance, Mta, MtaKind, Rejection, Startup,
};

/// The `postfix` command.
pub const POSTFIX: &str = "/usr/sbin/postfix";
/// The `postconf` command.
pub const POSTCONF: &str = "/usr/sbin/postconf";
/// The default `myhostname`, which is also what our milters are told to use as authserv-id.
pub const DEFAULT_HOSTNAME: &str = crate::mta::HOSTNAME;

/// How to set up an instance.
#[derive(Clone, Debug)]
pub struct PostfixOptions {
    /// `smtpd_milters`, in Postfix syntax: `inet:127.0.0.1:PORT` or `unix:/path`
    /// (see [`milter_inet`] and [`milter_unix`]). Applied to both smtpd services.
    pub milters: Vec<String>,
    /// `myhostname` (default [`DEFAULT_HOSTNAME`]).
    pub myhostname: String,
    /// Extra main.cf settings, appended last (so they override the defaults).
    pub main_cf: Vec<(String, String)>,
    /// Also give the submission service its own cleanup(8) service with
    /// `milter_macro_daemon_name = ORIGINATING`.
    ///
    /// Why this exists: with the usual set-up (the `-o milter_macro_daemon_name=ORIGINATING` on
    /// the submission smtpd only) smtpd sends `{daemon_name}=ORIGINATING` at CONNECT, but the
    /// header, body and end-of-message stages are sent by cleanup(8), which evaluates
    /// `{daemon_name}` from *its own* settings, i.e. `$myhostname`. A milter that asks for
    /// `{daemon_name}` at those stages (SMFIF_SETSYMLIST) and lets the later value win sees the
    /// wrong name. Seen with Postfix 3.7.11 and `cleanup -v`:
    /// `event: SMFIC_EOH; macros: i=... {daemon_name}=mx.test.example`.
    pub originating_cleanup: bool,
}

impl Default for PostfixOptions {
    fn default() -> Self {
        PostfixOptions {
            milters: Vec::new(),
            myhostname: DEFAULT_HOSTNAME.to_owned(),
            main_cf: Vec::new(),
            originating_cleanup: false,
        }
    }
}

impl PostfixOptions {
    /// Options with these milters and everything else default.
    pub fn with_milters<I, S>(milters: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        PostfixOptions {
            milters: milters.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    /// Adds (or overrides) a main.cf setting.
    pub fn set(mut self, name: &str, value: &str) -> Self {
        self.main_cf.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A milter on a TCP socket in Postfix's syntax (`inet:host:port`).
pub fn milter_inet(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("inet:{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("inet:[{}]:{}", a.ip(), a.port()),
    }
}

/// A milter on a unix socket in Postfix's syntax (`unix:/path`). The path must be absolute:
/// the instance runs without chroot, so it is used as is. See [`open_socket_for_postfix`].
pub fn milter_unix(path: &Path) -> String {
    format!("unix:{}", path.display())
}

/// Makes the unix socket at `path` usable by Postfix's unprivileged daemons: mode 0666 on the
/// socket, and search permission (o+x) on each parent directory that lacks it, up to the root.
/// Tests create sockets in 0700 temporary directories with mode 0660 as root, which the
/// `postfix` user cannot reach (Postfix would log "connect to Milter service unix:...:
/// Permission denied" and, with `milter_default_action = tempfail`, answer 451).
pub fn open_socket_for_postfix(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))?;
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d.as_os_str().is_empty() {
            break;
        }
        let mode = fs::metadata(d)?.permissions().mode();
        if mode & 0o001 == 0 {
            fs::set_permissions(d, fs::Permissions::from_mode((mode & 0o7777) | 0o011))?;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Whether a Postfix instance can be started here: Postfix installed and we are root.
pub fn postfix_available() -> bool {
    Path::new(POSTFIX).is_file() && Path::new(POSTCONF).is_file() && is_root()
}

fn is_root() -> bool {
    // `id -u` instead of libc: this crate has no libc dependency.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Gate for tests that need Postfix. Returns true when it can run. Otherwise prints a loud line
/// and returns false so the caller skips; in CI (`CI=true`) it panics instead, because a
/// silently skipped Postfix test would make the suite pass without testing anything.
pub fn require_postfix() -> bool {
    if postfix_available() {
        return true;
    }
    let why = if Path::new(POSTFIX).is_file() {
        "Postfix must run as root"
    } else {
        "postfix is not installed (tests/run.sh installs it)"
    };
    let msg = format!("!!!!! POSTFIX MISSING: {why}; this test did NOT run !!!!!");
    if in_ci() {
        panic!("{msg}");
    }
    eprintln!("{msg}");
    false
}

/// A running Postfix instance; stopped (`postfix stop`, then killed if need be) on drop.
pub struct Postfix {
    inst: Instance,
}

fn main_cf(d: &Path, opts: &PostfixOptions) -> String {
    let dir = d.display();
    let mut settings: Vec<(String, String)> = [
        ("compatibility_level", "3.6".to_owned()),
        ("queue_directory", format!("{dir}/spool")),
        ("data_directory", format!("{dir}/data")),
        ("mail_owner", "postfix".to_owned()),
        ("setgid_group", "postdrop".to_owned()),
        ("syslog_name", "postfix-test".to_owned()),
        ("maillog_file", format!("{dir}/maillog")),
        ("maillog_file_prefixes", dir.to_string()),
        ("myhostname", opts.myhostname.clone()),
        ("mydomain", "test.example".to_owned()),
        ("myorigin", "$myhostname".to_owned()),
        // Nothing is local: every address goes to the file sink below.
        ("mydestination", String::new()),
        ("local_recipient_maps", String::new()),
        ("alias_maps", String::new()),
        ("alias_database", String::new()),
        ("relay_domains", String::new()),
        ("transport_maps", "static:filesink".to_owned()),
        ("default_transport", "filesink".to_owned()),
        ("relay_transport", "filesink".to_owned()),
        ("local_transport", "filesink".to_owned()),
        ("virtual_transport", "filesink".to_owned()),
        ("notify_classes", String::new()),
        ("inet_interfaces", "127.0.0.1".to_owned()),
        ("inet_protocols", "ipv4".to_owned()),
        ("mynetworks", "127.0.0.0/8".to_owned()),
        (
            "smtpd_relay_restrictions",
            "permit_mynetworks, reject".to_owned(),
        ),
        // No DNS at all: no reverse lookup of clients, no DNS in the SMTP/LMTP clients.
        ("smtpd_peername_lookup", "no".to_owned()),
        ("smtp_dns_support_level", "disabled".to_owned()),
        ("lmtp_dns_support_level", "disabled".to_owned()),
        // Postfix adds Date:/Message-Id: to mail from local clients before milters see it; keep
        // the test's message as sent.
        ("local_header_rewrite_clients", String::new()),
        ("biff", "no".to_owned()),
        ("smtputf8_enable", "no".to_owned()),
        ("smtpd_milters", opts.milters.join(", ")),
        ("milter_protocol", "6".to_owned()),
        ("milter_default_action", "tempfail".to_owned()),
        // Bounded waits: a hung milter must fail the test well before the SMTP client gives up.
        ("milter_connect_timeout", "10s".to_owned()),
        ("milter_command_timeout", "20s".to_owned()),
        ("milter_content_timeout", "30s".to_owned()),
        // Deliver at once; never wait long for a retry.
        ("queue_run_delay", "1s".to_owned()),
        ("minimal_backoff_time", "1s".to_owned()),
        ("maximal_backoff_time", "2s".to_owned()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect();
    for (name, value) in &opts.main_cf {
        settings.retain(|(n, _)| n != name);
        settings.push((name.clone(), value.clone()));
    }
    settings
        .iter()
        .map(|(n, v)| format!("{n} = {v}\n"))
        .collect()
}

fn master_cf(d: &Path, smtp_port: u16, submission_port: u16, opts: &PostfixOptions) -> String {
    let (submission_cleanup, originating_cleanup) = if opts.originating_cleanup {
        (
            "\x20 -o cleanup_service_name=cleanup-orig\n",
            "cleanup-orig unix n - n - 0 cleanup\n\x20 -o milter_macro_daemon_name=ORIGINATING\n",
        )
    } else {
        ("", "")
    };
    // Every service with chroot = n: the private queue directory has no chroot jail.
    format!(
        "127.0.0.1:{smtp_port} inet n - n - - smtpd\n\
         127.0.0.1:{submission_port} inet n - n - - smtpd\n\
         \x20 -o syslog_name=postfix-test/submission\n\
         \x20 -o milter_macro_daemon_name=ORIGINATING\n\
         {submission_cleanup}\
         pickup    unix  n - n 60 1 pickup\n\
         cleanup   unix  n - n - 0 cleanup\n\
         {originating_cleanup}\
         qmgr      unix  n - n 300 1 qmgr\n\
         rewrite   unix  - - n - - trivial-rewrite\n\
         bounce    unix  - - n - 0 bounce\n\
         defer     unix  - - n - 0 bounce\n\
         trace     unix  - - n - 0 bounce\n\
         verify    unix  - - n - 1 verify\n\
         flush     unix  n - n 1000? 0 flush\n\
         proxymap  unix  - - n - - proxymap\n\
         showq     unix  n - n - - showq\n\
         error     unix  - - n - - error\n\
         retry     unix  - - n - - error\n\
         discard   unix  - - n - - discard\n\
         anvil     unix  - - n - 1 anvil\n\
         scache    unix  - - n - 1 scache\n\
         postlog   unix-dgram n - n - 1 postlogd\n\
         filesink  unix  - n n - - pipe\n\
         \x20 flags= user=nobody argv={dir}/sink.sh {dir}/out ${{queue_id}}\n",
        dir = d.display()
    )
}

impl Postfix {
    /// Starts an instance with `opts` and waits (at most [`crate::mta::START_TIMEOUT`]) until
    /// its master reports "daemon started", which it logs after binding its listeners. Fails
    /// with the instance's log when Postfix stops or logs a fatal error during start-up. A lost
    /// race for one of the two free ports is retried with other ports.
    pub fn start(opts: PostfixOptions) -> io::Result<Postfix> {
        start_retrying("postfix-test", |inst| Self::start_once(inst, &opts))
    }

    fn start_once(mut inst: Instance, opts: &PostfixOptions) -> io::Result<Postfix> {
        let d = inst.dir().to_path_buf();
        for sub in ["etc", "spool"] {
            fs::create_dir(d.join(sub))?;
        }
        // pipe(8) runs the sink as nobody, which must be able to write the out directory.
        let chown = Command::new("chown")
            .arg("nobody:nogroup")
            .arg(inst.out_dir())
            .output()?;
        if !chown.status.success() {
            return Err(io::Error::other(format!(
                "chown nobody:nogroup {}/out: {}",
                d.display(),
                String::from_utf8_lossy(&chown.stderr)
            )));
        }
        fs::write(d.join("etc/main.cf"), main_cf(&d, opts))?;
        fs::write(
            d.join("etc/master.cf"),
            master_cf(&d, inst.smtp_port(), inst.submission_port(), opts),
        )?;

        // start-fg: the master stays a child of postfix-script, which stays our child, so drop
        // can reap it.
        let mut cmd = Command::new(POSTFIX);
        cmd.arg("-c").arg(d.join("etc")).arg("start-fg");
        inst.spawn(cmd)?;
        let mut me = Postfix { inst };
        me.inst.wait_started(
            "postfix",
            |i| {
                let log = i.read("maillog");
                if log.contains("fatal:") {
                    Startup::Failed
                } else if log.contains("daemon started") {
                    Startup::Ready
                } else {
                    Startup::Waiting
                }
            },
            |i| format!("{}\n{}", i.output(), i.read("maillog")),
        )?;
        Ok(me)
    }

    /// The instance's directory (etc/, spool/, out/, maillog).
    pub fn dir(&self) -> &Path {
        self.inst.dir()
    }

    /// The configuration directory (for `postfix -c` / `postconf -c`).
    pub fn config_dir(&self) -> PathBuf {
        self.inst.dir().join("etc")
    }

    /// Postfix's log so far (its `maillog_file`).
    pub fn maillog(&self) -> String {
        self.inst.read("maillog")
    }

    /// What `postfix start-fg` wrote to stderr and stdout.
    pub fn stderr_log(&self) -> String {
        self.inst.output()
    }

    /// Stops the instance: `postfix stop` (bounded), then kills what is left, and reaps the
    /// start-fg process. Called by drop; calling it twice is harmless.
    pub fn stop(&mut self) {
        let config = self.config_dir();
        let master_pid = self.inst.dir().join("spool/pid/master.pid");
        self.inst.stop(
            |_| {
                let mut cmd = Command::new(POSTFIX);
                cmd.arg("-c").arg(&config).arg("stop");
                let _ = run_bounded(cmd, b"", Duration::from_secs(15));
            },
            Duration::from_secs(10),
            |_, exited| {
                // Still running: kill the master (our grandchild, pid from its pid file); the
                // postfix-script process we started is killed by the caller.
                if let (false, Ok(pid)) = (exited, read_lossy(&master_pid).trim().parse::<u32>()) {
                    let _ = Command::new("kill")
                        .arg("-KILL")
                        .arg(pid.to_string())
                        .status();
                }
            },
        );
    }
}

impl Mta for Postfix {
    fn kind(&self) -> MtaKind {
        MtaKind::Postfix
    }

    fn instance(&self) -> &Instance {
        &self.inst
    }

    fn diagnostics(&self) -> String {
        format!("Postfix log:\n{}", self.maillog())
    }

    fn log(&self) -> Option<String> {
        Some(self.maillog())
    }

    /// The queue files in every queue Postfix keeps messages in (hashed subdirectories
    /// included).
    fn queue_files(&self) -> Vec<String> {
        [
            "maildrop", "incoming", "active", "deferred", "hold", "corrupt",
        ]
        .iter()
        .flat_map(|q| files_below(&self.inst.dir().join("spool").join(q)))
        .collect()
    }

    /// Postfix logs `QID: milter-reject: END-OF-MESSAGE from ...: 5.7.0 ...; from=<...>
    /// to=<...> ...` with the queue id it had assigned.
    fn rejection(&self, timeout: Duration) -> Option<Rejection> {
        let line = self
            .wait_for_log_line("milter-reject: END-OF-MESSAGE", timeout)
            .unwrap_or_else(|| panic!("no milter-reject in the Postfix log:\n{}", self.maillog()));
        let qid = line
            .split(": milter-reject")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .unwrap()
            .to_owned();
        Some(Rejection { qid, line })
    }

    /// `from HELO (unknown [127.0.0.1]) by HOSTNAME (Postfix) with ESMTP id QID`: no reverse
    /// lookup here (`smtpd_peername_lookup = no`), so the client is "unknown".
    fn received_start(&self, helo: &str, qid: &str) -> String {
        format!(
            "from {helo} (unknown [127.0.0.1]) by {} (Postfix) with ESMTP id {qid}",
            crate::mta::HOSTNAME
        )
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What only Postfix shows (the shared start/deliver/stop check is in crate::mta): mail from
    /// a local client keeps its header as sent (no Date: added, `local_header_rewrite_clients`
    /// is empty), the submission service logs under its own syslog name, and nothing warns.
    #[test]
    fn submission_logs_apart_and_adds_no_date() {
        if !require_postfix() {
            return;
        }
        let pf = Postfix::start(PostfixOptions::default()).expect("postfix starts");
        let msg = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: plain\r\n\r\nhi\r\n";
        let r = crate::mta::tests::send_plain(pf.submission_addr(), msg);
        assert_eq!(r.code, 250, "{r}\n{}", pf.maillog());
        let got = pf.wait_for_deliveries(1, Duration::from_secs(10));
        assert_eq!(got.len(), 1, "{}", pf.maillog());
        let text = String::from_utf8_lossy(&got[0].1);
        assert!(!text.contains("Date:"), "no Date added: {text}");
        let log = pf.maillog();
        assert!(log.contains("postfix-test/submission/smtpd"), "{log}");
        assert!(!log.contains("warning:"), "{log}");
    }
}
