//! The dkim-milter binary as smtpd runs it (`--opensmtpd`, the filter protocol on stdin and
//! stdout): a message signed, SIGHUP reload applied to the next message, a protocol version we
//! do not speak refused with exit code 76 (EX_PROTOCOL) and a clear line on stderr, and end of
//! stdin ending the filter with status 0.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dkim-milter");
const SID: &str = "61fd6f2c739db568";
const TOKEN: &str = "7cd517355ebb2bf4";

struct Filter {
    child: Child,
    stdin: Option<ChildStdin>,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
}

impl Filter {
    fn start(config: &std::path::Path) -> Filter {
        let mut child = Command::new(BIN)
            .arg("--opensmtpd")
            .arg("-c")
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dkim-milter --opensmtpd");
        let lines = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
            rx
        };
        let out = lines(Box::new(child.stdout.take().unwrap()));
        let err = lines(Box::new(child.stderr.take().unwrap()));
        Filter {
            stdin: child.stdin.take(),
            child,
            out,
            err,
        }
    }

    fn send(&mut self, line: &str) {
        let w = self.stdin.as_mut().unwrap();
        w.write_all(line.as_bytes()).unwrap();
        w.write_all(b"\n").unwrap();
        w.flush().unwrap();
    }

    fn read(&self) -> String {
        self.out
            .recv_timeout(Duration::from_secs(20))
            .expect("a line from the filter")
    }

    fn wait_stderr(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self
                .err
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no stderr line with {needle:?}"));
            eprintln!("[filter] {l}");
            if l.contains(needle) {
                return l;
            }
        }
    }

    fn handshake(&mut self) {
        for l in [
            "config|smtpd-version|6.8.0p2",
            "config|smtp-session-timeout|300",
            "config|subsystem|smtp-in",
            "config|admd|mx.test.example",
            "config|ready",
        ] {
            self.send(l);
        }
        while self.read() != "register|ready" {}
    }

    /// One message on the submission listener; returns the selector of our DKIM-Signature.
    fn message(&mut self, qid: &str) -> Option<String> {
        let r = |e: &str, p: &str| format!("report|0.6|1796280956.757832|smtp-in|{e}|{SID}|{p}");
        for l in [
            r(
                "link-connect",
                "localhost|pass|127.0.0.1:40182|127.0.0.1:587",
            ),
            r("link-greeting", "mx.test.example"),
            r("link-identify", "EHLO|client.test"),
            r("tx-begin", qid),
            r("tx-mail", &format!("{qid}|ok|a@example.com")),
            r("tx-rcpt", &format!("{qid}|ok|b@example.org")),
        ] {
            self.send(&l);
        }
        for line in [
            "From: a@example.com",
            "To: b@example.org",
            "Subject: s",
            "",
            "body",
            ".",
        ] {
            self.send(&format!(
                "filter|0.6|1.0|smtp-in|data-line|{SID}|{TOKEN}|{line}"
            ));
        }
        let mut selector = None;
        loop {
            let l = self.read();
            let rest = l
                .strip_prefix(&format!("filter-dataline|{SID}|{TOKEN}|"))
                .unwrap_or_else(|| panic!("unexpected line {l}"));
            if rest == "." {
                break;
            }
            if rest.starts_with("DKIM-Signature:") {
                selector = rest
                    .split(';')
                    .find_map(|t| t.trim().strip_prefix("s=").map(str::to_string));
            }
        }
        self.send(&format!("filter|0.6|1.0|smtp-in|commit|{SID}|0011"));
        assert_eq!(self.read(), format!("filter-result|{SID}|0011|proceed"));
        self.send(r("link-disconnect", "").trim_end_matches('|'));
        selector
    }

    fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < deadline, "the filter did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keys one and two, tables signing with one, and a config trusting the submission listener.
fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = testkit::binary::two_key_dir();
    let cfg = dir.path().join("dkim-milter.toml");
    std::fs::write(
        &cfg,
        "key_table = \"file:KeyTable\"\nsigning_table = \"refile:SigningTable\"\n\
         internal_hosts = [\"192.0.2.1\"]\nmta = [\"127.0.0.1:587\"]\n\
         [resolver]\nnameservers = [\"127.0.0.1:9\"]\ntimeout = 0.5\nattempts = 1\n",
    )
    .unwrap();
    (dir, cfg)
}

#[test]
fn signs_and_reloads_on_sighup() {
    let (dir, cfg) = setup();
    let mut f = Filter::start(&cfg);
    f.wait_stderr("starting as an OpenSMTPD filter");
    f.handshake();
    assert_eq!(f.message("0ff60d3c").as_deref(), Some("one"));
    std::fs::write(dir.path().join("SigningTable"), "*@example.com two\n").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(f.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    f.wait_stderr("configuration reloaded from");
    assert_eq!(f.message("0ff60d3d").as_deref(), Some("two"));
    // End of stdin (smtpd stopped): the filter exits at once, with success.
    drop(f.stdin.take());
    assert_eq!(f.exit_code(), Some(0));
}

#[test]
fn unknown_protocol_version_is_refused_with_ex_protocol() {
    let (_dir, cfg) = setup();
    let mut f = Filter::start(&cfg);
    f.handshake();
    f.send(&format!(
        "report|0.5|1.0|smtp-in|link-connect|{SID}|x|pass|192.0.2.1:1|127.0.0.1:25"
    ));
    let line = f.wait_stderr("is not supported");
    assert!(
        line.contains(
            "filter protocol version '0.5' is not supported (this filter speaks 0.6 and 0.7)"
        ),
        "{line}"
    );
    assert_eq!(f.exit_code(), Some(76));
}
