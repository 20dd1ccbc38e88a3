//! Both daemons as filters of a real OpenSMTPD (Debian 12's smtpd 6.8, [`testkit::opensmtpd`]):
//! smtpd runs the built binaries with `--opensmtpd` through `proc-exec`, the test sends mail
//! over SMTP and judges what smtpd delivers (dkimpy, Mail::DKIM, OpenDKIM for what we sign; by
//! value for our Authentication-Results) and what our filters logged through smtpd's log.
//!
//! The binaries come from the workspace build (`cargo test --workspace` builds them; a lone
//! `cargo test -p authmilter-tests` needs `cargo build -p dkim-milter -p dmarc-milter` first).

#[allow(unused_macros)] // the per-MTA scenario macro is for the milter scenarios
mod mta_common;

use mta_common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::binary::workspace_binary;
use testkit::dns::TestDns;
use testkit::judges::{self, require_judge};
use testkit::keys::TestKey;
use testkit::mta::{header_fields, Mta};
use testkit::opensmtpd::{require_opensmtpd, Opensmtpd, OpensmtpdOptions};

/// The built daemon, or None (loud; a failure under CI) when it has not been built.
fn daemon(name: &str) -> Option<PathBuf> {
    let found = workspace_binary(name);
    if found.is_none() {
        let msg = format!(
            "!!!!! {name} is not built beside this test (run cargo build -p {name}): OpenSMTPD test SKIPPED !!!!!"
        );
        assert!(std::env::var("CI").is_err(), "{msg}");
        eprintln!("{msg}");
    }
    found
}

/// smtpd, its filters' configuration directory, the DNS server and the keys of one test.
struct Rig {
    dir: tempfile::TempDir,
    dns: TestDns,
    smtpd: Opensmtpd,
    keys: Keys,
}

impl Rig {
    fn delivered(&self, n: usize) -> Vec<(String, Vec<u8>)> {
        let got = blocking(|| self.smtpd.wait_for_deliveries(n, DELIVERY));
        assert_eq!(got.len(), n, "{}", self.smtpd.diagnostics());
        got
    }

    /// A message from alice@sender.example signed by the real OpenDKIM (key od).
    fn opendkim_signed(&self, subject: &str) -> Vec<u8> {
        blocking(|| {
            opendkim_signed(
                self.dir.path(),
                &self.keys.od_rsa,
                "od",
                &message("alice@sender.example", subject),
            )
        })
    }

    /// smtpd's log lines (our filters' stderr among them) that contain `needle`.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        self.smtpd
            .log()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

const DKIM_ID: &str = "dkim.test.example";

/// Which filters smtpd runs on both listeners.
#[derive(Clone, Copy, PartialEq)]
enum Filters {
    Dkim,
    Dmarc,
    /// `filter "auth" chain { "dkim", "dmarc" }`, dmarc trusting dkim's results.
    Chain,
}

fn dkim_config(dir: &Path, dns: &TestDns, keys: &Keys, authserv: &str, extra: &str) -> PathBuf {
    keys.rsa.write_pem(dir, "rsa.pem", true);
    keys.ed.write_pem(dir, "ed.pem", false);
    std::fs::write(
        dir.join("KeyTable"),
        "rsa example.com:rsa:rsa.pem\ned example.com:ed:ed.pem\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("SigningTable"),
        "dual@example.com ed\n*@example.com rsa\n",
    )
    .unwrap();
    let path = dir.join("dkim-milter.toml.in");
    std::fs::write(
        &path,
        format!(
            "authserv_id = \"{authserv}\"\nkey_table = \"file:KeyTable\"\nsigning_table = \"refile:SigningTable\"\n\
             internal_hosts = [\"192.0.2.1\"]\nmta = [\"127.0.0.1:@SUBMISSION_PORT@\"]\n{extra}\n\
             [resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
            dns.addr()
        ),
    )
    .unwrap();
    path
}

fn dmarc_config(dir: &Path, dns: &TestDns, trusted: &str, extra: &str) -> PathBuf {
    let path = dir.join("dmarc-milter.toml.in");
    std::fs::write(
        &path,
        format!(
            "authserv_id = \"{}\"\n{trusted}\nignore_hosts = [\"192.0.2.99\"]\n{extra}\n\
             [resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
            testkit::mta::HOSTNAME,
            dns.addr()
        ),
    )
    .unwrap();
    path
}

/// Starts DNS, writes the filters' configuration and starts smtpd with them; None (after a
/// loud message) when OpenSMTPD or the binaries are not available.
async fn rig(filters: Filters, dkim_extra: &str, dmarc_extra: &str) -> Option<Rig> {
    if !require_opensmtpd() {
        return None;
    }
    let dkim_bin = daemon("dkim-milter")?;
    let dmarc_bin = daemon("dmarc-milter")?;
    let keys = Keys {
        rsa: TestKey::rsa(2048),
        ed: TestKey::ed25519(),
        od_rsa: TestKey::rsa(2048),
        od_ed: TestKey::ed25519(),
    };
    let zone = zone_for(&keys)
        .txt("example.com", "v=spf1 ip4:127.0.0.1 -all")
        .txt("_dmarc.example.com", "v=DMARC1; p=reject")
        .txt("other.example", "v=spf1 -all")
        .txt("_dmarc.other.example", "v=DMARC1; p=reject")
        .txt("_dmarc.sender.example", "v=DMARC1; p=reject");
    let dns = TestDns::start(&zone).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dkim_id = if filters == Filters::Chain {
        DKIM_ID
    } else {
        testkit::mta::HOSTNAME
    };
    let dkim_in = dkim_config(d, &dns, &keys, dkim_id, dkim_extra);
    let trusted = if filters == Filters::Chain {
        format!("trusted_authserv_ids = [\"{DKIM_ID}\"]")
    } else {
        String::new()
    };
    let dmarc_in = dmarc_config(d, &dns, &trusted, dmarc_extra);
    // The filters run as root here: the test's files are private to root.
    let exec = |name: &str, bin: &Path, cfg: &Path| {
        format!(
            "filter \"{name}\" proc-exec \"{} --opensmtpd -c {}\" user root group root",
            bin.display(),
            cfg.with_extension("").display()
        )
    };
    let mut opts = OpensmtpdOptions {
        port_templates: vec![dkim_in.clone(), dmarc_in.clone()],
        ..Default::default()
    };
    let applied = match filters {
        Filters::Dkim => {
            opts.filters.push(exec("dkim", &dkim_bin, &dkim_in));
            "dkim"
        }
        Filters::Dmarc => {
            opts.filters.push(exec("dmarc", &dmarc_bin, &dmarc_in));
            "dmarc"
        }
        Filters::Chain => {
            opts.filters.push(exec("dkim", &dkim_bin, &dkim_in));
            opts.filters.push(exec("dmarc", &dmarc_bin, &dmarc_in));
            opts.filters
                .push("filter \"auth\" chain { \"dkim\", \"dmarc\" }".into());
            "auth"
        }
    };
    opts.smtp_filter = Some(applied.into());
    opts.submission_filter = Some(applied.into());
    let smtpd = blocking(|| Opensmtpd::start(opts)).expect("smtpd starts with our filters");
    Some(Rig {
        dir,
        dns,
        smtpd,
        keys,
    })
}

/// Scenario 1: mail on the submission listener (named in `mta` by its local address) is signed
/// RSA, and RSA + Ed25519 for the address with two SigningTable rows; dkimpy, Mail::DKIM and
/// OpenDKIM accept the delivered bytes. The same mail on the plain port is not signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_is_signed_and_judges_accept_it() {
    if !require_judge("dkimpy") || !require_judge("mail-dkim") || !require_judge("miltertest") {
        return;
    }
    let Some(r) = rig(Filters::Dkim, "", "").await else {
        return;
    };
    for (from, subject) in [
        ("user@example.com", "os-rsa"),
        ("dual@example.com", "os-dual"),
    ] {
        let reply = send(r.smtpd.submission_addr(), from, &message(from, subject));
        assert_eq!(reply.code, 250, "{reply}");
    }
    let reply = send(
        r.smtpd.smtp_addr(),
        "user@example.com",
        &message("user@example.com", "os-outside"),
    );
    assert_eq!(reply.code, 250, "{reply}");
    let got = r.delivered(3);
    let verifier = blocking(|| testkit::opendkim::Opendkim::start_verifier(r.dns.addr()))
        .expect("opendkim verifier");

    let (qid, msg) = by_subject(&got, "os-rsa");
    let sigs = fields(msg, "DKIM-Signature");
    assert_eq!(sigs.len(), 1, "{}", text(msg));
    assert_eq!(
        (
            tag(&sigs[0], "a"),
            tag(&sigs[0], "d"),
            tag(&sigs[0], "s"),
            tag(&sigs[0], "c")
        ),
        (
            "rsa-sha256".into(),
            "example.com".into(),
            "rsa".into(),
            "relaxed/relaxed".into()
        )
    );
    // Our field comes first, above smtpd's Received.
    let names: Vec<String> = header_fields(msg).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names[..2], ["DKIM-Signature", "Received"], "{}", text(msg));
    let v = blocking(|| judges::dkimpy_verify(msg, r.dns.addr())).unwrap();
    assert_eq!(v.results, ["pass"], "dkimpy: {}", v.raw_output);
    let v = blocking(|| judges::mail_dkim_verify(msg, r.dns.addr())).unwrap();
    assert_eq!(v.results, ["pass"], "Mail::DKIM: {}", v.raw_output);
    let od = blocking(|| testkit::opendkim::miltertest_message(&verifier.socket, msg, "192.0.2.9"))
        .unwrap();
    assert!(
        od.header("Authentication-Results")
            .iter()
            .any(|a| collapse(a).contains("dkim=pass")),
        "OpenDKIM: {}",
        od.raw_output
    );
    assert_eq!(
        r.log_lines(&format!("{qid}: DKIM-Signature field added"))
            .len(),
        1,
        "{}",
        r.smtpd.log().unwrap_or_default()
    );
    // The filter reads that id from smtpd's Received field (it does not register for
    // tx-begin): it is the message id smtpd itself logs.
    assert!(
        !r.log_lines(&format!("msgid={qid} ")).is_empty(),
        "{}",
        r.smtpd.log().unwrap_or_default()
    );

    let (_, msg) = by_subject(&got, "os-dual");
    let sigs = fields(msg, "DKIM-Signature");
    let mut kinds: Vec<String> = sigs.iter().map(|s| tag(s, "a")).collect();
    kinds.sort();
    assert_eq!(kinds, ["ed25519-sha256", "rsa-sha256"], "{}", text(msg));
    let v = blocking(|| judges::dkimpy_verify(msg, r.dns.addr())).unwrap();
    assert_eq!(v.results, ["pass", "pass"], "dkimpy: {}", v.raw_output);

    let (_, msg) = by_subject(&got, "os-outside");
    assert!(fields(msg, "DKIM-Signature").is_empty(), "{}", text(msg));
    assert_eq!(
        fields(msg, "Authentication-Results"),
        [format!("{AUTHSERV}; dkim=none")]
    );
}

/// Scenario 2 and 3: inbound mail signed by the real OpenDKIM gets our dkim=pass as the first
/// header; a tampered copy gets dkim=fail; forged own-id Authentication-Results (several,
/// interleaved) are removed and the others kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_verification_and_forged_results() {
    if !require_judge("opendkim") || !require_judge("miltertest") {
        return;
    }
    let Some(r) = rig(Filters::Dkim, "", "").await else {
        return;
    };
    let signed = r.opendkim_signed("os-in");
    let tampered = text(&signed).replace("Hello Bob", "Hello Eve").into_bytes();
    let forged = format!(
        "Authentication-Results: {AUTHSERV}; dkim=pass header.d=forged1.example\r\n\
         Authentication-Results: other.example; spf=pass smtp.mailfrom=keep.example\r\n\
         Authentication-Results: {AUTHSERV};\r\n\tdkim=pass header.d=forged2.example\r\n{}",
        text(&message("alice@sender.example", "os-forged"))
    );
    for m in [&signed, &tampered, &forged.clone().into_bytes()] {
        let reply = send(r.smtpd.smtp_addr(), "alice@sender.example", m);
        assert_eq!(reply.code, 250, "{reply}");
    }
    let got = r.delivered(3);
    let delivered_pass = got
        .iter()
        .find(|(_, m)| text(m).contains("Hello Bob") && fields(m, "Subject") == ["os-in"])
        .expect("the signed copy");
    let b8 = header_b(&fields(&delivered_pass.1, "DKIM-Signature")[0]);
    let first = &header_fields(&delivered_pass.1)[0];
    assert_eq!(
        (first.0.as_str(), collapse(&first.1)),
        (
            "Authentication-Results",
            format!(
                "{AUTHSERV}; dkim=pass (2048-bit key) header.d=sender.example \
                 header.i=@sender.example header.a=rsa-sha256 header.s=od header.b={b8}"
            )
        )
    );
    assert_eq!(
        r.log_lines(&format!(
            "{}: DKIM verification successful",
            delivered_pass.0
        ))
        .len(),
        1
    );
    let delivered_fail = got
        .iter()
        .find(|(_, m)| text(m).contains("Hello Eve"))
        .expect("the tampered copy");
    assert!(
        fields(&delivered_fail.1, "Authentication-Results")[0].starts_with(&format!(
            "{AUTHSERV}; dkim=fail reason=\"body hash did not verify\""
        )),
        "{}",
        text(&delivered_fail.1)
    );
    let (_, msg) = by_subject(&got, "os-forged");
    assert_eq!(
        fields(msg, "Authentication-Results"),
        [
            format!("{AUTHSERV}; dkim=none"),
            "other.example; spf=pass smtp.mailfrom=keep.example".to_string()
        ],
        "{}",
        text(msg)
    );
}

/// Scenario 2 (reject): with `bad_signature = "reject"` the SMTP client sees our 550 and
/// nothing is delivered or left in smtpd's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_action_reaches_the_client() {
    if !require_judge("opendkim") || !require_judge("miltertest") {
        return;
    }
    let Some(r) = rig(Filters::Dkim, "[actions]\nbad_signature = \"reject\"", "").await else {
        return;
    };
    let signed = r.opendkim_signed("os-reject");
    let tampered = text(&signed).replace("Hello Bob", "Hello Eve").into_bytes();
    let reply = send(r.smtpd.smtp_addr(), "alice@sender.example", &tampered);
    assert_eq!(
        (reply.code, reply.text.as_str()),
        (550, "5.7.0 bad DKIM signature data")
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(r.smtpd.deliveries().is_empty(), "{}", r.smtpd.diagnostics());
}

/// Scenario 4: dmarc-milter as a filter computes SPF from the session's real client address
/// and MAIL FROM: aligned → dmarc=pass; unaligned p=reject with reject_failures → 550 at the
/// end of DATA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmarc_filter_passes_aligned_and_rejects_unaligned() {
    let Some(r) = rig(Filters::Dmarc, "", "reject_failures = true").await else {
        return;
    };
    let reply = send(
        r.smtpd.smtp_addr(),
        "alice@example.com",
        &message("alice@example.com", "os-dmarc-pass"),
    );
    assert_eq!(reply.code, 250, "{reply}");
    let reply = send(
        r.smtpd.smtp_addr(),
        "alice@other.example",
        &message("alice@example.com", "os-dmarc-reject"),
    );
    assert_eq!(
        (reply.code, reply.text.as_str()),
        (550, "5.7.1 rejected by DMARC policy for example.com")
    );
    let got = r.delivered(1);
    let (qid, msg) = &got[0];
    assert_eq!(
        fields(msg, "Authentication-Results"),
        [format!(
            "{AUTHSERV}; spf=pass smtp.mailfrom=example.com; dmarc=pass (p=reject dis=none) header.from=example.com"
        )]
    );
    assert_eq!(
        r.log_lines(&format!("{qid}: SPF(mailfrom): example.com pass"))
            .len(),
        1,
        "{}",
        r.smtpd.log().unwrap_or_default()
    );
}

/// Scenario 5: both filters chained in one smtpd. dkim-milter (authserv-id dkim.test.example)
/// verifies mail signed by the real OpenDKIM and writes its result; dmarc-milter, trusting that
/// id, takes the DKIM result from the header and passes DMARC on it although SPF fails (MAIL
/// FROM in another domain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_filters_dmarc_uses_dkims_result() {
    if !require_judge("opendkim") || !require_judge("miltertest") {
        return;
    }
    let Some(r) = rig(Filters::Chain, "", "").await else {
        return;
    };
    let signed = r.opendkim_signed("os-chain");
    let reply = send(r.smtpd.smtp_addr(), "bounce@other.example", &signed);
    assert_eq!(reply.code, 250, "{reply}");
    let got = r.delivered(1);
    let msg = &got[0].1;
    let ars = fields(msg, "Authentication-Results");
    assert_eq!(ars.len(), 2, "{}", text(msg));
    assert!(
        ars[0].starts_with(&format!(
            "{AUTHSERV}; spf=fail smtp.mailfrom=other.example; dmarc=pass"
        )),
        "dmarc-milter's result, on top: {}",
        text(msg)
    );
    assert!(ars[0].ends_with("header.from=sender.example"), "{}", ars[0]);
    assert!(
        ars[1].starts_with(&format!("{DKIM_ID}; dkim=pass")),
        "dkim-milter's result below it: {}",
        text(msg)
    );
}

/// Scenario 6: dot-stuffed lines, a 998-octet line, 8-bit bytes and a 20 MB body arrive
/// byte-identical below our field; the filter's memory stays within 8 MB of its size before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_and_large_messages_pass_byte_identical_in_bounded_memory() {
    let Some(r) = rig(Filters::Dkim, "", "").await else {
        return;
    };
    let long = "x".repeat(998);
    let body =
        format!("..starts with two dots\r\n.one dot\r\n{long}\r\n8-bit: caf\u{e9} na\u{ef}ve\r\n");
    let small = format!(
        "From: a@sender.example\r\nSubject: os-odd\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\n\
         Message-ID: <os-odd@test.example>\r\n\r\n{body}"
    );
    let reply = send(r.smtpd.smtp_addr(), "a@sender.example", small.as_bytes());
    assert_eq!(reply.code, 250, "{reply}");
    let got = r.delivered(1);
    assert!(
        got[0].1.ends_with(body.as_bytes()),
        "body changed:\n{}",
        text(&got[0].1)
    );
    std::fs::remove_file(r.smtpd.dir().join("out").join(format!("{}.eml", got[0].0))).unwrap();

    let pid = filter_pid(&r.dir.path().join("dkim-milter.toml")).expect("filter process");
    let before = vm_kib(pid, "VmRSS:");
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n";
    let big_body: String = line.repeat(20 * 1024 * 1024 / line.len());
    let big = format!(
        "From: a@sender.example\r\nSubject: os-big\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\n\
         Message-ID: <os-big@test.example>\r\n\r\n{big_body}"
    );
    let reply = send(r.smtpd.smtp_addr(), "a@sender.example", big.as_bytes());
    assert_eq!(reply.code, 250, "{reply}");
    let got = r.delivered(1);
    assert!(
        got[0].1.ends_with(big_body.as_bytes()),
        "20 MB body changed"
    );
    let peak = vm_kib(pid, "VmHWM:");
    assert!(
        peak.saturating_sub(before) <= 8 * 1024,
        "filter memory grew from {before} KiB to a peak of {peak} KiB"
    );
}

/// The pid of our filter started with `config` (found in /proc by its command line). smtpd
/// forks the filter at start, but on a loaded machine its exec may not have happened yet when
/// smtpd already accepts connections: look again for a few seconds.
fn filter_pid(config: &Path) -> Option<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found =
            testkit::binary::pid_with_cmdline(&["--opensmtpd", &config.display().to_string()]);
        if found.is_some() || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn vm_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Scenario 7: the filter killed mid-session. smtpd cannot go on without a filter it was told
/// to use: it exits (its log says "lost processor"), the client's session ends without a 250,
/// and nothing is delivered, so no message passes unsigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_killed_mid_session_delivers_nothing() {
    let Some(r) = rig(Filters::Dkim, "", "").await else {
        return;
    };
    let pid = filter_pid(&r.dir.path().join("dkim-milter.toml")).expect("filter process");
    let addr = r.smtpd.submission_addr();
    let session = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        use std::io::{BufRead, BufReader, Write};
        let mut rd = BufReader::new(c.try_clone().unwrap());
        let mut line = String::new();
        let mut replies = Vec::new();
        let mut step = |c: &mut std::net::TcpStream, cmd: &str| {
            if !cmd.is_empty() {
                let _ = c.write_all(cmd.as_bytes());
            }
            line.clear();
            let n = rd.read_line(&mut line).unwrap_or(0);
            replies.push(if n == 0 {
                "(closed)".to_string()
            } else {
                line.trim().to_string()
            });
        };
        step(&mut c, "");
        step(&mut c, "HELO client.test.example\r\n");
        step(&mut c, "MAIL FROM:<user@example.com>\r\n");
        step(&mut c, "RCPT TO:<bob@test.example>\r\n");
        step(&mut c, "DATA\r\n");
        // The filter dies while the message is being sent.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        step(
            &mut c,
            "From: user@example.com\r\nSubject: os-killed\r\n\r\nbody\r\n.\r\n",
        );
        replies
    });
    let replies = session.join().unwrap();
    assert!(
        !replies.last().unwrap().starts_with("250"),
        "the message must not be accepted: {replies:?}"
    );
    let lost = blocking(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if !r.log_lines("lost processor").is_empty() {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(lost, "{}", r.smtpd.diagnostics());
    std::thread::sleep(Duration::from_millis(500));
    assert!(r.smtpd.deliveries().is_empty(), "{}", r.smtpd.diagnostics());
}

/// smtpd 6.8 truncates filter output lines at about 2,000 bytes: a DKIM-Signature over many
/// signed fields (an `h=` of over 2 KB) plus an Ed25519 one must still arrive intact, folded
/// by us into lines smtpd takes whole; dkimpy verifies both signatures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_signature_fields_survive_smtpd() {
    if !require_judge("dkimpy") {
        return;
    }
    let names: Vec<String> = (0..100)
        .map(|i| format!("X-Long-Signed-Field-{i:03}"))
        .collect();
    let list = names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let extra = format!("sign_headers = [\"From\", \"Subject\", {list}]");
    let Some(r) = rig(Filters::Dkim, &extra, "").await else {
        return;
    };
    let mut raw = String::from("From: dual@example.com\r\nSubject: os-long\r\n");
    for n in &names {
        raw.push_str(&format!("{n}: value\r\n"));
    }
    raw.push_str("Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <os-long@test.example>\r\n\r\nbody\r\n");
    let reply = send(
        r.smtpd.submission_addr(),
        "dual@example.com",
        raw.as_bytes(),
    );
    assert_eq!(reply.code, 250, "{reply}");
    let got = r.delivered(1);
    let msg = &got[0].1;
    let sigs = fields(msg, "DKIM-Signature");
    assert_eq!(sigs.len(), 2, "{}", text(msg));
    assert!(
        sigs.iter().all(|s| tag(s, "h").len() > 2000),
        "h= covers every field: {sigs:?}"
    );
    let longest = text(msg).lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1000, "a delivered line of {longest} bytes");
    let v = blocking(|| judges::dkimpy_verify(msg, r.dns.addr())).unwrap();
    assert_eq!(v.results, ["pass", "pass"], "dkimpy: {}", v.raw_output);
}
