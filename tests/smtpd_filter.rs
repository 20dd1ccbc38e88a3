//! The OpenSMTPD front end driven line by line, as smtpd 6.8 drives it (protocol 0.6), over
//! in-memory pipes: the registration, sessions from report events, the message rewritten in the
//! data-line phase (our fields on top, forged Authentication-Results gone, dot-escaping and
//! 8-bit bytes kept), the disposition at commit, and bad input. The real policies run behind it
//! with the test DNS server; dkimpy judges what we sign.

use std::time::Duration;
use testkit::daemons::policy;
use testkit::dns::{TestDns, Zone};
use testkit::judges;
use testkit::keys::TestKey;
use testkit::logcapture::lines_with;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines};

const AUTHSERV: &str = "mx.test.example";
const SID: &str = "1a2b3c4d5e6f7a8b";
const TOKEN: &str = "0f0e0d0c0b0a0908";

/// smtpd's side of a filter: what we write to its stdin, what it writes to its stdout.
struct Smtpd {
    to_filter: DuplexStream,
    from_filter: Lines<BufReader<DuplexStream>>,
    served: tokio::task::JoinHandle<Result<(), smtpdfront::filter::Stopped>>,
}

impl Smtpd {
    fn start<P: chassis::policy::Policy>(
        policy: std::sync::Arc<chassis::policy::Snapshots<P>>,
    ) -> Smtpd {
        let (to_filter, filter_in) = tokio::io::duplex(1 << 16);
        let (filter_out, from_filter) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(smtpdfront::filter::serve(policy, filter_in, filter_out));
        Smtpd {
            to_filter,
            from_filter: BufReader::new(from_filter).lines(),
            served,
        }
    }

    async fn send(&mut self, line: &[u8]) {
        self.to_filter.write_all(line).await.unwrap();
        self.to_filter.write_all(b"\n").await.unwrap();
    }

    async fn read(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(20), self.from_filter.next_line())
            .await
            .expect("the filter answers in time")
            .unwrap()
            .expect("the filter keeps its stdout open")
    }

    /// The handshake of smtpd 6.8: config lines, then the filter's registration.
    async fn handshake(&mut self) -> Vec<String> {
        for l in [
            "config|smtpd-version|6.8.0p2",
            "config|smtp-session-timeout|300",
            "config|subsystem|smtp-in",
            "config|ready",
        ] {
            self.send(l.as_bytes()).await;
        }
        let mut got = Vec::new();
        loop {
            let l = self.read().await;
            let done = l == "register|ready";
            got.push(l);
            if done {
                return got;
            }
        }
    }

    async fn report(&mut self, event: &str, params: &str) {
        let line = format!("report|0.6|1700000000.000001|smtp-in|{event}|{SID}|{params}");
        self.send(line.trim_end_matches('|').as_bytes()).await;
    }

    /// A session from `src` on the local address `dest`, one transaction with `mail_from`.
    async fn session(&mut self, src: &str, dest: &str, mail_from: &str, qid: &str) {
        self.report(
            "link-connect",
            &format!("client.example.net|pass|{src}|{dest}"),
        )
        .await;
        self.report("link-greeting", AUTHSERV).await;
        self.report("link-identify", "EHLO|client.example.net")
            .await;
        self.report("tx-begin", qid).await;
        self.report("tx-mail", &format!("{qid}|ok|{mail_from}"))
            .await;
        self.report("tx-rcpt", &format!("{qid}|ok|bob@example.org"))
            .await;
    }

    /// Sends `message` (CRLF or LF lines) in the data-line phase, dot-escaped as smtpd does,
    /// and returns the message the filter hands back (unescaped, CRLF lines).
    async fn data(&mut self, message: &[u8]) -> Vec<u8> {
        let text = message.strip_suffix(b"\r\n").unwrap_or(message);
        for line in text.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let mut out = format!("filter|0.6|1700000000.000002|smtp-in|data-line|{SID}|{TOKEN}|")
                .into_bytes();
            if line.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(line);
            self.send(&out).await;
        }
        self.send(format!("filter|0.6|1.0|smtp-in|data-line|{SID}|{TOKEN}|.").as_bytes())
            .await;
        let prefix = format!("filter-dataline|{SID}|{TOKEN}|");
        let mut back = Vec::new();
        loop {
            let l = self.read().await;
            let rest = l
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("not a data line for this session: {l}"));
            if rest == "." {
                return back;
            }
            back.extend_from_slice(rest.strip_prefix('.').unwrap_or(rest).as_bytes());
            back.extend_from_slice(b"\r\n");
        }
    }

    async fn commit(&mut self) -> String {
        self.send(format!("filter|0.6|1.0|smtp-in|commit|{SID}|{TOKEN}").as_bytes())
            .await;
        self.read().await
    }
}

fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <{from}>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n\
         Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@example.com>\r\n\r\n\
         Hello Bob,\r\n.a line that starts with a dot\r\n..two dots\r\n.\r\n8-bit: caf\u{e9}\r\n"
    )
    .into_bytes()
}

/// The message text with header folds (CRLF + tab) joined, for comparing fields by value.
fn unfolded(msg: &[u8]) -> String {
    String::from_utf8_lossy(msg).replace("\r\n\t", " ")
}

fn header_names(msg: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(msg)
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .split("\r\n")
        .filter(|l| !l.starts_with([' ', '\t']) && !l.is_empty())
        .map(|l| l.split(':').next().unwrap_or("").to_string())
        .collect()
}

async fn dkim_setup(extra: &str) -> (tempfile::TempDir, TestDns, TestKey, Smtpd) {
    let key = TestKey::ed25519();
    let dns = TestDns::start(&Zone::new().txt("ed._domainkey.example.com", &key.dns_record()))
        .await
        .expect("dns");
    let dir = tempfile::tempdir().unwrap();
    key.write_pem(dir.path(), "ed.pem", false);
    std::fs::write(dir.path().join("KeyTable"), "ed example.com:ed:ed.pem\n").unwrap();
    std::fs::write(dir.path().join("SigningTable"), "*@example.com ed\n").unwrap();
    let cfg = format!(
        "authserv_id = \"{AUTHSERV}\"\nkey_table = \"file:KeyTable\"\nsigning_table = \"refile:SigningTable\"\n\
         internal_hosts = [\"192.0.2.1\"]\nmta = [\"127.0.0.1:587\"]\n{extra}\n\
         [resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
        dns.addr()
    );
    let smtpd = Smtpd::start(policy::<dkim_policy::runtime::Runtime>(dir.path(), &cfg));
    (dir, dns, key, smtpd)
}

/// smtpd 6.8's handshake gets our registration: every report event and phase we use, then
/// `register|ready`, nothing before `config|ready`; with an authserv-id configured, not smtpd's
/// greeting (its host name would never be used); without ARC sealing, not MAIL FROM's reports
/// (dkim-milter's signing and verifying never read MAIL FROM), with it, those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_after_config_ready() {
    let (_d, _dns, _k, mut smtpd) = dkim_setup("").await;
    let got = smtpd.handshake().await;
    assert!(!got.iter().any(|l| l.ends_with("link-greeting")), "{got:?}");
    for absent in ["tx-begin", "tx-mail", "tx-rcpt", "link-identify"] {
        assert!(
            !got.iter().any(|l| l.ends_with(absent)),
            "{absent} in {got:?}"
        );
    }
    for expected in [
        "register|report|smtp-in|link-connect",
        "register|report|smtp-in|link-disconnect",
        "register|report|smtp-in|tx-rollback",
        "register|report|smtp-in|link-auth",
        "register|filter|smtp-in|data-line",
        "register|filter|smtp-in|commit",
    ] {
        assert!(got.iter().any(|l| l == expected), "{expected} in {got:?}");
    }
    assert_eq!(got.last().map(String::as_str), Some("register|ready"));

    let (_d, _dns, _k, mut smtpd) = dkim_setup(
        "[[arc.seal]]\ndomain = \"example.com\"\nselector = \"ed\"\nkey_file = \"ed.pem\"\n",
    )
    .await;
    let got = smtpd.handshake().await;
    for expected in [
        "register|report|smtp-in|tx-begin",
        "register|report|smtp-in|tx-mail",
    ] {
        assert!(got.iter().any(|l| l == expected), "{expected} in {got:?}");
    }
    assert!(!got.iter().any(|l| l.ends_with("tx-rollback")), "{got:?}");
}

/// As smtpd sends a session to a filter that did not register for MAIL FROM: no tx-begin, the
/// message's first line smtpd's own Received field with the message id, which our log lines
/// then carry; a second transaction in the same session gets its own id, and one rolled back
/// before its final `.` (tx-rollback) leaves nothing behind for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_id_comes_from_smtpds_received_field() {
    let (_d, _dns, _k, mut smtpd) = dkim_setup("").await;
    smtpd.handshake().await;
    smtpd
        .report(
            "link-connect",
            "client.example.net|pass|127.0.0.1:40000|127.0.0.1:587",
        )
        .await;
    let received = |id: &str| {
        format!(
            "Received: from client.example.net (client.example.net [127.0.0.1])\r\n\t\
             by {AUTHSERV} (OpenSMTPD) with ESMTP id {id};\r\n\tFri, 4 Dec 2026 02:51:02 +0000 (UTC)\r\n"
        )
    };
    for (id, subject) in [("5eed0001", "first"), ("5eed0002", "second")] {
        let mut raw = received(id).into_bytes();
        raw.extend(message("alice@example.com", subject));
        let back = smtpd.data(&raw).await;
        assert_eq!(
            smtpd.commit().await,
            format!("filter-result|{SID}|{TOKEN}|proceed")
        );
        assert_eq!(header_names(&back)[..2], ["DKIM-Signature", "Received"]);
        assert_eq!(
            lines_with(id),
            [format!(
                "{id}: DKIM-Signature field added (s=ed, d=example.com)"
            )]
        );
    }
    // Half a message, then smtpd rolls the transaction back: the next message is whole.
    let partial = format!(
        "filter|0.6|1.0|smtp-in|data-line|{SID}|{TOKEN}|{}",
        received("5eed0003").split("\r\n").next().unwrap()
    );
    smtpd.send(partial.as_bytes()).await;
    smtpd.report("tx-rollback", "5eed0003").await;
    let mut raw = received("5eed0004").into_bytes();
    raw.extend(message("alice@example.com", "after-rollback"));
    let back = smtpd.data(&raw).await;
    smtpd.commit().await;
    assert_eq!(header_names(&back)[..2], ["DKIM-Signature", "Received"]);
    assert_eq!(
        back.windows(8).filter(|w| w == b"5eed0003").count(),
        0,
        "{}",
        String::from_utf8_lossy(&back)
    );
    assert_eq!(lines_with("5eed0003"), Vec::<String>::new());
    assert_eq!(lines_with("5eed0004").len(), 1);
}

/// Mail on the submission listener (the `mta` setting names the local address:port smtpd
/// reports in link-connect) is signed: the DKIM-Signature comes back as the first line, the
/// message is otherwise byte-identical (dot-stuffed lines, a lone-dot line, 8-bit bytes), and
/// dkimpy verifies it. The same mail on port 25 from an outside client is verified, not signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_is_signed_and_comes_back_byte_identical() {
    let (_d, dns, _k, mut smtpd) = dkim_setup("").await;
    smtpd.handshake().await;
    smtpd
        .session(
            "127.0.0.1:40000",
            "127.0.0.1:587",
            "alice@example.com",
            "0badc0de",
        )
        .await;
    let raw = message("alice@example.com", "osmtpd-sign");
    let back = smtpd.data(&raw).await;
    assert_eq!(
        smtpd.commit().await,
        format!("filter-result|{SID}|{TOKEN}|proceed")
    );
    assert_eq!(
        header_names(&back)[0],
        "DKIM-Signature",
        "{}",
        String::from_utf8_lossy(&back)
    );
    let body_at = back.windows(raw.len()).position(|w| w == raw.as_slice());
    assert!(
        body_at.is_some(),
        "the original message follows our field unchanged:\n{}",
        String::from_utf8_lossy(&back)
    );
    let v = judges::dkimpy_verify(&back, dns.addr()).unwrap();
    assert_eq!(v.results, ["pass"], "dkimpy: {}", v.raw_output);
    assert_eq!(
        lines_with("0badc0de"),
        ["0badc0de: DKIM-Signature field added (s=ed, d=example.com)"]
    );

    smtpd.report("link-disconnect", "").await;
    smtpd
        .session(
            "198.51.100.7:40001",
            "127.0.0.1:25",
            "alice@example.com",
            "0badc0df",
        )
        .await;
    let back = smtpd.data(&raw).await;
    assert_eq!(
        smtpd.commit().await,
        format!("filter-result|{SID}|{TOKEN}|proceed")
    );
    let text = unfolded(&back);
    assert!(
        text.starts_with(&format!(
            "Authentication-Results: {AUTHSERV}; dkim=none\r\n"
        )),
        "{text}"
    );
    assert!(text.ends_with(&String::from_utf8_lossy(&raw).into_owned()));
}

/// ARC sealing through the OpenSMTPD filter (the same policy as over milter): submitted mail
/// is DKIM-signed and sealed, and dkimpy's ARC verifier accepts the chain in the message the
/// filter hands back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_is_arc_sealed() {
    assert!(
        judges::judge_available("dkimpy-arc"),
        "dkimpy's ARC judge is required (python3-dkim, python3-authres)"
    );
    let (_d, dns, _k, mut smtpd) = dkim_setup(
        "[[arc.seal]]\ndomain = \"example.com\"\nselector = \"ed\"\nkey_file = \"ed.pem\"\n",
    )
    .await;
    smtpd.handshake().await;
    smtpd
        .session(
            "127.0.0.1:40000",
            "127.0.0.1:587",
            "alice@example.com",
            "0badarc1",
        )
        .await;
    let raw = message("alice@example.com", "osmtpd-seal");
    let back = smtpd.data(&raw).await;
    assert_eq!(
        smtpd.commit().await,
        format!("filter-result|{SID}|{TOKEN}|proceed")
    );
    let names = header_names(&back);
    assert_eq!(
        &names[..4],
        [
            "ARC-Seal",
            "ARC-Message-Signature",
            "ARC-Authentication-Results",
            "DKIM-Signature"
        ],
        "{}",
        String::from_utf8_lossy(&back)
    );
    let text = unfolded(&back);
    assert!(
        text.contains(&format!(
            "ARC-Authentication-Results: i=1; {AUTHSERV}; arc=none\r\n"
        )),
        "{text}"
    );
    let (cv, reason) = judges::dkimpy_arc_verify(&back, dns.addr()).unwrap();
    assert_eq!(cv, "pass", "{reason}");
    assert!(lines_with("0badarc1")
        .iter()
        .any(|l| l == "0badarc1: ARC-Seal field added (s=ed, d=example.com, i=1, cv=none)"));
}

/// Forged Authentication-Results with our authserv-id (several, folded, interleaved with
/// others) are left out of the message handed back; the others stay in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_authentication_results_are_left_out() {
    let (_d, _dns, _k, mut smtpd) = dkim_setup("").await;
    smtpd.handshake().await;
    smtpd
        .session(
            "198.51.100.7:40001",
            "127.0.0.1:25",
            "a@sender.example",
            "0badc0e0",
        )
        .await;
    let raw = format!(
        "Authentication-Results: {AUTHSERV}; dkim=pass header.d=forged1.example\r\n\
         Authentication-Results: other.example; spf=pass smtp.mailfrom=keep.example\r\n\
         Authentication-Results: {AUTHSERV};\r\n\tdkim=pass header.d=forged2.example\r\n\
         X-Filler: one\r\n\
         Authentication-Results: {}; dkim=pass header.d=forged3.example\r\n\
         From: a@sender.example\r\nSubject: forged\r\n\r\nbody\r\n",
        AUTHSERV.to_uppercase()
    );
    let back = smtpd.data(raw.as_bytes()).await;
    assert_eq!(
        smtpd.commit().await,
        format!("filter-result|{SID}|{TOKEN}|proceed")
    );
    assert_eq!(
        unfolded(&back),
        format!(
            "Authentication-Results: {AUTHSERV}; dkim=none\r\n\
             Authentication-Results: other.example; spf=pass smtp.mailfrom=keep.example\r\n\
             X-Filler: one\r\n\
             From: a@sender.example\r\nSubject: forged\r\n\r\nbody\r\n"
        )
    );
    assert_eq!(
        lines_with("0badc0e0"),
        [format!(
            "0badc0e0: removed 3 Authentication-Results header(s) claiming to be from {AUTHSERV}"
        )]
    );
}

/// The reject action reaches smtpd at commit, with our reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_at_commit() {
    let (_d, _dns, key, mut smtpd) = dkim_setup("[actions]\nbad_signature = \"reject\"").await;
    smtpd.handshake().await;
    smtpd
        .session(
            "198.51.100.7:40001",
            "127.0.0.1:25",
            "a@example.com",
            "0badc0e1",
        )
        .await;
    let signed = key.sign_ed25519(&message("a@example.com", "tamper"), "example.com", "ed");
    let tampered = String::from_utf8(signed)
        .unwrap()
        .replace("Hello Bob", "Hello Eve");
    smtpd.data(tampered.as_bytes()).await;
    assert_eq!(
        smtpd.commit().await,
        format!("filter-result|{SID}|{TOKEN}|reject|550 5.7.0 bad DKIM signature data")
    );
}

/// dmarc-milter as a filter: SPF from the session's client address and MAIL FROM, DMARC from
/// the From domain; an unaligned p=reject failure with reject_failures is rejected at commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmarc_filter_pass_and_reject() {
    let dns = TestDns::start(
        &Zone::new()
            .txt("example.com", "v=spf1 ip4:192.0.2.10 -all")
            .txt("_dmarc.example.com", "v=DMARC1; p=reject"),
    )
    .await
    .expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "authserv_id = \"{AUTHSERV}\"\nreject_failures = true\n\
         [resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
        dns.addr()
    );
    let mut smtpd = Smtpd::start(policy::<dmarc_policy::runtime::Runtime>(dir.path(), &cfg));
    smtpd.handshake().await;
    smtpd
        .session(
            "192.0.2.10:40000",
            "127.0.0.1:25",
            "alice@example.com",
            "0dad0001",
        )
        .await;
    let back = smtpd
        .data(&message("alice@example.com", "dmarc-pass"))
        .await;
    assert_eq!(
        smtpd.commit().await,
        format!("filter-result|{SID}|{TOKEN}|proceed")
    );
    assert!(
        unfolded(&back).starts_with(&format!(
            "Authentication-Results: {AUTHSERV}; spf=pass smtp.mailfrom=example.com; dmarc=pass (p=reject dis=none) header.from=example.com\r\n"
        )),
        "{}",
        String::from_utf8_lossy(&back)
    );
    assert!(lines_with("0dad0001")
        .iter()
        .any(|l| l == "0dad0001: SPF(mailfrom): example.com pass"));
    smtpd.report("tx-reset", "0dad0001").await;
    smtpd.report("tx-begin", "0dad0002").await;
    smtpd
        .report("tx-mail", "0dad0002|ok|alice@other.example")
        .await;
    smtpd.report("tx-rcpt", "0dad0002|ok|bob@example.org").await;
    smtpd
        .data(&message("alice@example.com", "dmarc-reject"))
        .await;
    assert_eq!(
        smtpd.commit().await,
        format!(
            "filter-result|{SID}|{TOKEN}|reject|550 5.7.1 rejected by DMARC policy for example.com"
        )
    );
}

/// Bad input: an unknown line type, a short line, a line of 1 MB and garbage ids are skipped
/// with a log line and the filter keeps serving; a protocol version we do not speak ends it
/// with an error saying so; end of input ends it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_protocol_input() {
    let (_d, _dns, _k, mut smtpd) = dkim_setup("").await;
    smtpd.handshake().await;
    smtpd.send(b"hello|world").await;
    smtpd.send(b"report|0.6|1.0").await;
    smtpd
        .send(b"filter|0.6|1.0|smtp-in|commit|not-hex|0b")
        .await;
    let mut huge = b"report|0.6|1.0|smtp-in|link-identify|".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 1 << 20));
    smtpd.send(&huge).await;
    // Still serving: a message goes through.
    smtpd
        .session(
            "198.51.100.7:40001",
            "127.0.0.1:25",
            "a@sender.example",
            "0bad0001",
        )
        .await;
    let back = smtpd.data(b"From: a@sender.example\r\n\r\nbody\r\n").await;
    assert!(String::from_utf8_lossy(&back).starts_with("Authentication-Results: "));
    assert_eq!(
        smtpd.commit().await,
        format!("filter-result|{SID}|{TOKEN}|proceed")
    );
    for needle in [
        "not filter protocol: unknown line type 'hello'",
        "not filter protocol: 'report' line with only 3 field(s)",
        "not filter protocol: malformed session id or token 'not-hex'",
        "skipping a line of 1048613 bytes from smtpd (more than 65536)",
    ] {
        assert!(
            !lines_with(needle).is_empty(),
            "no log line with {needle:?}"
        );
    }
    smtpd
        .send(b"report|0.5|1.0|smtp-in|link-connect|0a|x|pass|1.2.3.4:1|127.0.0.1:25")
        .await;
    let stopped = tokio::time::timeout(Duration::from_secs(10), smtpd.served)
        .await
        .expect("the filter stops")
        .unwrap();
    let err = stopped.expect_err("an unknown version stops the filter");
    assert_eq!(
        err.to_string(),
        "filter protocol version '0.5' is not supported (this filter speaks 0.6 and 0.7)"
    );
}

/// End of stdin (smtpd stopped) ends the filter at once, with success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_input_ends_the_filter() {
    let (_d, _dns, _k, mut smtpd) = dkim_setup("").await;
    smtpd.handshake().await;
    smtpd.to_filter.shutdown().await.unwrap();
    drop(smtpd.to_filter);
    let done = tokio::time::timeout(Duration::from_secs(10), smtpd.served)
        .await
        .expect("the filter stops at end of input")
        .unwrap();
    assert!(done.is_ok(), "{done:?}");
}

/// A measurement, not run by default (`cargo test --release -p authmilter-tests --test
/// smtpd_filter -- --ignored --nocapture back_to_back`): 5,000 submissions signed Ed25519 one
/// after the other through the filter on its own thread, over in-memory pipes, so its caches
/// stay warm; prints the filter thread's CPU per message (BENCHMARKS.md, "OpenSMTPD", compares
/// it with the same work inside a real, mostly idle smtpd). Every message must come back signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn back_to_back_messages_cpu_per_message() {
    let (dir, _dns, _key, placeholder) = dkim_setup("[log]\nsuccess = false\n").await;
    drop(placeholder);
    let cfg = std::fs::read_to_string(dir.path().join("dkim-milter.toml")).expect("config");
    let pol = policy::<dkim_policy::runtime::Runtime>(dir.path(), &cfg);
    let (mut to_filter, filter_in) = tokio::io::duplex(1 << 16);
    let (filter_out, from_filter) = tokio::io::duplex(1 << 16);
    let (cpu_tx, cpu_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let cpu_ns = || -> u64 {
            std::fs::read_to_string("/proc/thread-self/schedstat")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let t0 = cpu_ns();
        let _ = rt.block_on(smtpdfront::filter::serve(pol, filter_in, filter_out));
        let _ = cpu_tx.send(cpu_ns() - t0);
    });
    let mut lines = BufReader::new(from_filter).lines();
    for l in [
        "config|smtpd-version|6.8.0p2",
        "config|subsystem|smtp-in",
        "config|ready",
    ] {
        to_filter
            .write_all(format!("{l}\n").as_bytes())
            .await
            .unwrap();
    }
    while lines.next_line().await.unwrap().unwrap() != "register|ready" {}
    let n = 5000u64;
    let text = String::from_utf8(message("alice@example.com", "back-to-back")).unwrap();
    for i in 0..n {
        let sid = format!("{:016x}", 0x1000 + i);
        let data = |l: &str| format!("filter|0.6|1.0|smtp-in|data-line|{sid}|{TOKEN}|{l}\n");
        let mut batch = format!(
            "report|0.6|1.0|smtp-in|link-connect|{sid}|c.example|pass|127.0.0.1:4000|127.0.0.1:587\n"
        );
        batch += &data("Received: from c (c [127.0.0.1])");
        batch += &data(&format!("\tby mx (OpenSMTPD) with ESMTP id {i:08x};"));
        for l in text.trim_end_matches("\r\n").split("\r\n") {
            let escaped = if l.starts_with('.') {
                format!(".{l}")
            } else {
                l.to_string()
            };
            batch += &data(&escaped);
        }
        batch += &data(".");
        to_filter.write_all(batch.as_bytes()).await.unwrap();
        let first = lines.next_line().await.unwrap().unwrap();
        assert!(
            first.starts_with(&format!("filter-dataline|{sid}|{TOKEN}|DKIM-Signature: ")),
            "message {i}: {first}"
        );
        while !lines.next_line().await.unwrap().unwrap().ends_with("|.") {}
        to_filter
            .write_all(
                format!(
                    "filter|0.6|1.0|smtp-in|commit|{sid}|{TOKEN}\nreport|0.6|1.0|smtp-in|link-disconnect|{sid}\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(
            lines.next_line().await.unwrap().unwrap(),
            format!("filter-result|{sid}|{TOKEN}|proceed")
        );
    }
    drop(to_filter);
    let ns = cpu_rx.recv().expect("the filter ends at end of input");
    eprintln!(
        "back to back: the filter thread's CPU per message: {:.4} ms",
        ns as f64 / 1e6 / n as f64
    );
}
