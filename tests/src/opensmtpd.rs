//! A real, throwaway OpenSMTPD (Debian 12's 6.8.0p2) for end-to-end tests of filters.
//!
//! Why: OpenSMTPD speaks no milter; it runs filters as child processes and talks the
//! line-based smtpd-filters protocol with them on their stdin and stdout. Our OpenSMTPD front
//! end must be tested against the smtpd that will run it, so this module runs a private
//! instance on loopback with filters declared in raw smtpd.conf syntax ([`OpensmtpdOptions`]).
//! What smtpd 6.8 really sends (protocol version 0.6, field orders, its reaction to a filter
//! that dies) is recorded in docs/opensmtpd.md and by tests/judges/smtpd_protocol_logger.py.
//!
//! Getting the binary: Debian's `opensmtpd` conflicts with `postfix` (both provide
//! mail-transport-agent). tests/run.sh downloads it and `opensmtpd-filter-dkimsign` with
//! `apt-get download` and unpacks both with `dpkg-deb -x` into [`OPENSMTPD_ROOT`] (override
//! with `$AUTHMILTER_OPENSMTPD_ROOT`); their libraries (libevent, libdb, libopensmtpd) are
//! installed normally. smtpd also needs, outside the instance: its privilege-separation users
//! `opensmtpd` and `opensmtpq`, the chroot directory `/var/lib/opensmtpd/empty`, and
//! `/usr/libexec/opensmtpd` (compiled in: every `mda` command runs through
//! `/usr/libexec/opensmtpd/mail.mda`), which run.sh makes a symbolic link to the unpacked
//! copy. [`opensmtpd_unavailable`] checks all of them.
//!
//! Isolation: smtpd has a compiled-in spool (`/var/spool/smtpd`, mode 0711) and control
//! socket (`/var/run/smtpd.sock`), so two instances would share them. Each instance runs in
//! new UTS and mount namespaces ([`Instance::spawn_in_namespaces`]) where the instance's
//! `varspool/` is bound over /var/spool and `run/` over /run (/var/run is a link to it), next
//! to the private /etc/hosts and /etc/resolv.conf. The resolv.conf says `lookup file`, which
//! smtpd's resolver (OpenBSD's asr) reads as "/etc/hosts only": smtpd asks no DNS server, and
//! the client's reverse name (the `rdns` of link-connect, the Received field) is [`HOSTNAME`].
//! smtpd takes its server name (the default of `admd`, its Message-ID domain) from
//! /etc/mailname when that exists, else from the host name; a machine's /etc/mailname is
//! therefore hidden behind the instance's own. smtpd runs in the foreground (`-d`) with `-v`,
//! so its log is its stderr (`stderr.log`), which [`Mta::log`] returns.
//!
//! Delivery: every recipient matches `action "out" mda ...` with a virtual catch-all mapping
//! to the user `nobody` (smtpd refuses unknown recipients for mda delivery, and never runs an
//! mda as root). The mda is [`SMTPD_SINK`], which turns smtpd's delivery into the shared
//! `<queue id>.eml` of [`crate::mta`].
//!
//! Listeners: the plain port, and the submission port tagged [`SUBMISSION_TAG`]. smtpd shows
//! filters no tag and no daemon name; a filter tells the submission port apart by the local
//! address:port in the link-connect report ([`Mta::submission_addr`]).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::judges::in_ci;
use crate::mta::{
    files_below, missing_libraries, namespaces_unavailable, poll, start_retrying, Instance, Mta,
    MtaKind, Rejection, Startup, HOSTNAME,
};

/// Where tests/run.sh unpacks Debian's opensmtpd and opensmtpd-filter-dkimsign packages.
pub const OPENSMTPD_ROOT: &str = "/opt/authmilter-tests/opensmtpd";
/// The tag of the submission listener (`listen on ... tag SUBMISSION`), for `match tag` rules.
pub const SUBMISSION_TAG: &str = "SUBMISSION";
/// Where smtpd looks for its helpers (mail.mda); compiled in.
pub const LIBEXEC: &str = "/usr/libexec/opensmtpd";
/// smtpd's chroot directory for its unprivileged processes; compiled in.
pub const EMPTY_DIR: &str = "/var/lib/opensmtpd/empty";
/// The user smtpd delivers as (the virtual catch-all target).
pub const SINK_USER: &str = "nobody";

/// The mda smtpd runs per recipient, as `smtpd-sink.sh OUTDIR`, as [`SINK_USER`]. smtpd passes
/// no queue id to an mda (neither as a format specifier nor in the environment), and prepends
/// `Return-Path:` and `Delivered-To:` to what it delivers. This removes those two lines (they
/// are not part of what smtpd would relay to a next hop) and takes the queue id from smtpd's
/// own Received field, the first field that has ` id HEX` (filters such as filter-dkimsign
/// may put a signature above it), then hands the message to the shared `sink.sh`.
/// With several recipients every copy goes to the same file, the last one winning.
const SMTPD_SINK: &str = "#!/bin/sh\n\
set -e\n\
umask 022\n\
t=\"$1/.smtpd.$$\"\n\
awk 'NR <= 2 && /^(Return-Path|Delivered-To): / { next } { print }' > \"$t\"\n\
qid=$(awk '/^$/ { exit } match($0, / id [0-9a-f]+/) { print substr($0, RSTART + 4, RLENGTH - 4); exit }' \"$t\")\n\
\"$(dirname \"$0\")/sink.sh\" \"$1\" \"${qid:-noqid}\" < \"$t\"\n\
rm -f \"$t\"\n";

fn root() -> PathBuf {
    std::env::var_os("AUTHMILTER_OPENSMTPD_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(OPENSMTPD_ROOT))
}

/// The unpacked smtpd binary.
pub fn smtpd_binary() -> PathBuf {
    root().join("usr/sbin/smtpd")
}

/// The unpacked filter-dkimsign (Debian's opensmtpd-filter-dkimsign), a third-party signing
/// filter to check the harness's filter plumbing with.
pub fn filter_dkimsign() -> PathBuf {
    root().join("usr/libexec/opensmtpd/filter-dkimsign")
}

/// Why OpenSMTPD cannot run here, or None when it can.
pub fn opensmtpd_unavailable() -> Option<String> {
    let bin = smtpd_binary();
    if !bin.is_file() {
        return Some(format!(
            "{} is missing (tests/run.sh unpacks opensmtpd there)",
            bin.display()
        ));
    }
    for user in ["opensmtpd", "opensmtpq", SINK_USER] {
        let known = Command::new("id")
            .arg(user)
            .output()
            .is_ok_and(|o| o.status.success());
        if !known {
            return Some(format!(
                "the system user {user} is missing (tests/run.sh creates it)"
            ));
        }
    }
    if !Path::new(EMPTY_DIR).is_dir() {
        return Some(format!("{EMPTY_DIR} is missing (tests/run.sh creates it)"));
    }
    if !Path::new(LIBEXEC).join("mail.mda").is_file() {
        return Some(format!(
            "{LIBEXEC}/mail.mda is missing (tests/run.sh links {LIBEXEC} to the unpacked package)"
        ));
    }
    namespaces_unavailable("OpenSMTPD").or_else(|| {
        missing_libraries(&bin, "apt-get install libevent-2.1-7 libdb5.3")
            .or_else(|| missing_libraries(&filter_dkimsign(), "apt-get install libopensmtpd0"))
    })
}

/// Gate for tests that need OpenSMTPD: true when it can run; otherwise a loud message and
/// false, or a panic in CI (`CI=true`).
pub fn require_opensmtpd() -> bool {
    let Some(why) = opensmtpd_unavailable() else {
        return true;
    };
    let msg = format!("!!!!! OPENSMTPD MISSING: {why}; this test did NOT run !!!!!");
    if in_ci() {
        panic!("{msg}");
    }
    eprintln!("{msg}");
    false
}

/// How to set up an instance: filters as raw smtpd.conf declarations, and which listener uses
/// which. Default: no filter at all.
#[derive(Clone, Debug, Default)]
pub struct OpensmtpdOptions {
    /// `filter` (and `proc`) lines, written as given before the listeners, e.g.
    /// `filter "dkim" proc-exec "/path/to/bin --opensmtpd -c cfg"` or
    /// `filter "auth" chain { "a", "b" }`. A proc-exec filter runs as the `opensmtpd` user
    /// unless the line says `user ...`: files it reads must be readable by that user.
    pub filters: Vec<String>,
    /// The filter (or chain) name the plain listener applies, if any.
    pub smtp_filter: Option<String>,
    /// The filter (or chain) name the submission listener applies, if any.
    pub submission_filter: Option<String>,
    /// Further smtpd.conf lines, written before the listeners (e.g. `admd "..."`).
    pub extra: Vec<String>,
    /// Templates `NAME.in` (a filter's configuration) written out as `NAME` with `@SMTP_PORT@`
    /// and `@SUBMISSION_PORT@` replaced by the instance's ports before smtpd starts its filters:
    /// a filter told which listener is the submission one can only learn the port once the
    /// instance has chosen it (again on a retry with other ports).
    pub port_templates: Vec<PathBuf>,
}

impl OpensmtpdOptions {
    /// Declares filter `name` as `proc-exec "command"`.
    pub fn proc_exec(mut self, name: &str, command: &str) -> Self {
        self.filters
            .push(format!("filter \"{name}\" proc-exec \"{command}\""));
        self
    }
}

fn smtpd_conf(d: &Path, smtp_port: u16, submission_port: u16, opts: &OpensmtpdOptions) -> String {
    let dir = d.display();
    let filter = |name: &Option<String>| {
        name.as_ref()
            .map(|n| format!(" filter \"{n}\""))
            .unwrap_or_default()
    };
    let mut conf = format!("table sinkusers {{ \"@\" = \"{SINK_USER}\" }}\n");
    for line in opts.filters.iter().chain(&opts.extra) {
        conf.push_str(line);
        conf.push('\n');
    }
    conf.push_str(&format!(
        "listen on 127.0.0.1 port {smtp_port} hostname {HOSTNAME}{}\n\
         listen on 127.0.0.1 port {submission_port} hostname {HOSTNAME} tag {SUBMISSION_TAG}{}\n\
         action \"out\" mda \"{dir}/smtpd-sink.sh {dir}/out\" virtual <sinkusers>\n\
         match from any for any action \"out\"\n\
         match from local for any action \"out\"\n",
        filter(&opts.smtp_filter),
        filter(&opts.submission_filter),
    ));
    conf
}

/// A running smtpd; its process group is stopped and reaped on drop.
pub struct Opensmtpd {
    inst: Instance,
}

impl Opensmtpd {
    /// Starts an instance and waits (at most [`crate::mta::START_TIMEOUT`]) until it accepts
    /// connections: smtpd logs "smtp: will accept at most N clients" once its SMTP process has
    /// its listeners, after every filter has registered (a filter that fails before
    /// `register|ready` makes smtpd exit, which fails the start with its log).
    pub fn start(opts: OpensmtpdOptions) -> io::Result<Opensmtpd> {
        start_retrying("opensmtpd-test", |inst| Self::start_once(inst, &opts))
    }

    fn start_once(mut inst: Instance, opts: &OpensmtpdOptions) -> io::Result<Opensmtpd> {
        let d = inst.dir().to_path_buf();
        // smtpd checks the spool's mode (0711) and creates its subdirectories itself.
        fs::create_dir(d.join("varspool"))?;
        fs::DirBuilder::new()
            .mode(0o711)
            .create(d.join("varspool/smtpd"))?;
        fs::set_permissions(d.join("varspool/smtpd"), fs::Permissions::from_mode(0o711))?;
        fs::create_dir(d.join("run"))?;
        // The sink runs as nobody.
        fs::set_permissions(inst.out_dir(), fs::Permissions::from_mode(0o777))?;
        fs::write(d.join("smtpd-sink.sh"), SMTPD_SINK)?;
        fs::set_permissions(d.join("smtpd-sink.sh"), fs::Permissions::from_mode(0o755))?;
        fs::write(d.join("mailname"), format!("{HOSTNAME}\n"))?;
        inst.write_private_etc()?;
        for t in &opts.port_templates {
            let out = t.with_extension("");
            if out == *t {
                return Err(io::Error::other(format!(
                    "{}: a template must end in .in",
                    t.display()
                )));
            }
            let text = fs::read_to_string(t)?
                .replace("@SMTP_PORT@", &inst.smtp_port().to_string())
                .replace("@SUBMISSION_PORT@", &inst.submission_port().to_string());
            fs::write(out, text)?;
        }
        let conf = d.join("smtpd.conf");
        fs::write(
            &conf,
            smtpd_conf(&d, inst.smtp_port(), inst.submission_port(), opts),
        )?;
        let dir = d.display();
        inst.spawn_in_namespaces(&format!(
            "mount --bind {dir}/varspool /var/spool\n\
             mount --bind {dir}/run /run\n\
             if [ -e /etc/mailname ]; then mount --bind {dir}/mailname /etc/mailname; fi\n\
             exec {bin} -d -v -f {conf}\n",
            bin = smtpd_binary().display(),
            conf = conf.display(),
        ))?;
        let mut me = Opensmtpd { inst };
        me.inst.wait_started(
            "smtpd",
            |i| {
                let log = i.read("stderr.log");
                if log.contains("smtp: will accept at most") {
                    Startup::Ready
                } else if log
                    .lines()
                    .any(|l| l == "Exiting" || l.starts_with("fatal"))
                {
                    Startup::Failed
                } else {
                    Startup::Waiting
                }
            },
            |i| i.output(),
        )?;
        Ok(me)
    }

    /// The instance's directory (smtpd.conf, varspool/smtpd, out/, stderr.log).
    pub fn dir(&self) -> &Path {
        self.inst.dir()
    }

    /// Stops the instance ([`Instance::stop_group`]; smtpd exits at once on SIGTERM).
    pub fn stop(&mut self) {
        self.inst.stop_group(Duration::from_secs(5));
    }
}

impl Mta for Opensmtpd {
    fn kind(&self) -> MtaKind {
        MtaKind::Opensmtpd
    }

    fn instance(&self) -> &Instance {
        &self.inst
    }

    fn diagnostics(&self) -> String {
        format!(
            "smtpd spool: {:?}; smtpd stderr (its log): {}",
            self.queue_files(),
            self.inst.output()
        )
    }

    /// smtpd's `-d -v` log, which goes to stderr.
    fn log(&self) -> Option<String> {
        Some(self.inst.read("stderr.log"))
    }

    fn queue_files(&self) -> Vec<String> {
        files_below(&self.inst.dir().join("varspool/smtpd"))
    }

    /// smtpd logs a refused end of message as `SESSION smtp failed-command command="data"
    /// result="5xx ..."`, naming the session, not the message: `qid` is that session id.
    fn rejection(&self, timeout: Duration) -> Option<Rejection> {
        let found = poll(timeout, || {
            self.log()?
                .lines()
                .find(|l| l.contains("failed-command command=\"data\" result=\"5"))
                .map(str::to_owned)
        });
        let line = found.unwrap_or_else(|| {
            panic!(
                "no rejection logged within {timeout:?}:\n{}",
                self.diagnostics()
            )
        });
        Some(Rejection {
            qid: line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned(),
            line,
        })
    }

    /// smtpd's Received field: `from HELO (RDNS [ADDR]) by HOSTNAME (OpenSMTPD) with ESMTP id
    /// QID`; the reverse name comes from the instance's /etc/hosts.
    fn received_start(&self, helo: &str, qid: &str) -> String {
        format!(
            "from {helo} ({HOSTNAME} [127.0.0.1]) by {HOSTNAME} (OpenSMTPD) with ESMTP id {qid}"
        )
    }
}

impl Drop for Opensmtpd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{TestDns, Zone};
    use crate::judges::{dkimpy_verify, judges_dir, require_judge};
    use crate::keys::TestKey;
    use crate::mta::header_fields;
    use crate::mta::tests::send_plain;

    const MSG: &[u8] = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: plain\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <x@example.com>\r\n\r\n.dot\r\nhi\r\n";

    /// The delivered message minus the fields smtpd and filters put above the original
    /// header, which must then be byte for byte what the client sent.
    fn after_received(m: &[u8]) -> &[u8] {
        let text = m;
        let at = text
            .windows(6)
            .position(|w| w == b"From: ")
            .expect("From: field delivered");
        &text[at..]
    }

    /// Without filters smtpd delivers what it got, with only its Received field on top
    /// (Date: and Message-ID: are present, so smtpd adds neither).
    #[test]
    fn delivers_bytes_unchanged_below_its_received_field() {
        if !require_opensmtpd() {
            return;
        }
        let mta = Opensmtpd::start(OpensmtpdOptions::default()).expect("smtpd starts");
        let r = send_plain(mta.smtp_addr(), MSG);
        assert_eq!(r.code, 250, "{r}\n{}", mta.diagnostics());
        let qid = r.queue_id().expect("queue id").to_owned();
        let got = mta.wait_for_deliveries(1, Duration::from_secs(10));
        assert_eq!(got.len(), 1, "{}", mta.diagnostics());
        assert_eq!(got[0].0, qid);
        let m = &got[0].1;
        let fields = header_fields(m);
        assert_eq!(fields[0].0, "Received", "{}", String::from_utf8_lossy(m));
        assert_eq!(fields[1].0, "From", "{}", String::from_utf8_lossy(m));
        assert_eq!(after_received(m), MSG);
        // smtpd removes a delivered message from its spool shortly after the mda is done.
        let emptied = poll(Duration::from_secs(10), || {
            mta.queue_files().is_empty().then_some(())
        });
        assert!(emptied.is_some(), "{:?}", mta.queue_files());
    }

    /// Debian's filter-dkimsign on the submission listener: mail submitted there is signed
    /// (dkimpy verifies it against the key in a test DNS), mail on the plain port is not.
    #[test]
    fn filter_dkimsign_signs_submission_only() {
        if !require_opensmtpd() || !require_judge("dkimpy") {
            return;
        }
        let key = TestKey::rsa_openssl(2048);
        let keydir = tempfile::tempdir().expect("tempdir");
        // The filter runs as the opensmtpd user.
        fs::set_permissions(keydir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let keyfile = key.write_pem(keydir.path(), "sel.pem", false);
        fs::set_permissions(&keyfile, fs::Permissions::from_mode(0o644)).unwrap();
        let dns = TestDns::start_blocking(
            &Zone::new().txt("sel._domainkey.example.com", &key.dns_record()),
        )
        .expect("dns");
        let opts = OpensmtpdOptions {
            submission_filter: Some("dkimsign".into()),
            ..Default::default()
        }
        .proc_exec(
            "dkimsign",
            &format!(
                "{} -d example.com -s sel -k {}",
                filter_dkimsign().display(),
                keyfile.display()
            ),
        );
        let mta = Opensmtpd::start(opts).expect("smtpd starts");
        for addr in [mta.submission_addr(), mta.smtp_addr()] {
            let r = send_plain(addr, MSG);
            assert_eq!(r.code, 250, "{r}\n{}", mta.diagnostics());
            let got = mta.wait_for_deliveries(1, Duration::from_secs(10));
            assert_eq!(got.len(), 1, "{}", mta.diagnostics());
            let (qid, m) = &got[0];
            let text = String::from_utf8_lossy(m);
            assert_eq!(Some(qid.as_str()), r.queue_id(), "{text}");
            let signed = header_fields(m).iter().any(|(n, _)| n == "DKIM-Signature");
            if addr == mta.submission_addr() {
                assert!(signed, "{text}");
                let v = dkimpy_verify(m, dns.addr()).expect("dkimpy");
                assert!(v.all_pass(), "{v:?}\n{text}");
                assert_eq!(after_received(m), MSG);
            } else {
                assert!(!signed, "{text}");
            }
            mta.remove_delivery(qid).unwrap();
        }
        dns.stop_blocking();
    }

    /// tests/judges/smtpd_protocol_logger.py behind a chain on the plain port: smtpd speaks
    /// protocol 0.6, tells filters its admd, passes data lines dot-stuffed, and returns a
    /// filter's reject at commit to the client as given.
    #[test]
    fn protocol_logger_in_a_chain_sees_smtpd_and_rejects_at_commit() {
        if !require_opensmtpd() {
            return;
        }
        let logdir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(logdir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let log = logdir.path().join("filter.log");
        let logger = judges_dir().join("smtpd_protocol_logger.py");
        let opts = OpensmtpdOptions {
            filters: vec![
                format!(
                    "filter \"log\" proc-exec \"{} {}\"",
                    logger.display(),
                    log.display()
                ),
                format!(
                    "filter \"log2\" proc-exec \"{} {}.2\"",
                    logger.display(),
                    log.display()
                ),
                "filter \"both\" chain { \"log\", \"log2\" }".into(),
            ],
            smtp_filter: Some("both".into()),
            ..Default::default()
        };
        let mta = Opensmtpd::start(opts).expect("smtpd starts");
        let r = send_plain(mta.smtp_addr(), MSG);
        assert_eq!(r.code, 250, "{r}\n{}", mta.diagnostics());
        let rejected = b"From: a@example.com\r\nX-Logger-Reject: yes\r\n\r\nno\r\n";
        let r = send_plain(mta.smtp_addr(), rejected);
        assert_eq!((r.code, r.text.as_str()), (550, "5.7.1 test"), "{r}");
        assert_eq!(mta.wait_for_deliveries(1, Duration::from_secs(10)).len(), 1);
        let seen = crate::mta::read_lossy(&log);
        for want in [
            "config|smtpd-version|6.8.0p2",
            &format!("config|admd|{HOSTNAME}"),
            "|smtp-in|link-connect|",
            &format!("|{HOSTNAME}|pass|127.0.0.1:"),
            &format!("|127.0.0.1:{}\n", mta.smtp_addr().port()),
            "|tx-mail|",
            "|ok|a@example.com\n",
            "|data-line|",
            "|..dot\n",
            "|commit|",
            "|filter-response|",
        ] {
            assert!(seen.contains(want), "{want:?} missing:\n{seen}");
        }
        assert!(
            seen.lines()
                .all(|l| !l.starts_with("report|") || l.starts_with("report|0.6|")),
            "{seen}"
        );
        // The second filter of the chain saw the same message, as the first passed it on.
        let seen2 = crate::mta::read_lossy(&logdir.path().join("filter.log.2"));
        assert!(seen2.contains("|..dot\n"), "{seen2}");
    }
}
