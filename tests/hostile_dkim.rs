//! Hostile input and faults against dkim-milter, end to end: a bad-input corpus driven through the
//! real milter client (and, where the high-level client is too polite, raw protocol packets).
//!
//! Every case asserts a defined outcome by value (the milter's final reply and its
//! Authentication-Results, or the DKIM-Signature it adds), never a panic or a hang, and then
//! runs one more ordinary session on the same milter that must still succeed. Spill files are
//! checked for leaks by looking at the process's open file descriptors (spill files are unlinked
//! at creation, so a directory listing alone would never see a leak).

use milter_client::consts::{
    ALL_ACTIONS, ALL_PROTOCOL, SMFIC_BODY, SMFIC_CONNECT, SMFIC_HEADER, SMFIP_HDR_LEADSPC,
    SMFIP_NR_BODY, SMFIP_NR_CONN, SMFIP_NR_EOH, SMFIP_NR_HDR, SMFIP_NR_HELO, SMFIP_NR_MAIL,
    SMFIP_NR_RCPT,
};
use milter_client::{
    apply_modifications, proto, render, run, EomResult, MilterClient, Modification, Outcome, Reply,
    Transaction,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testkit::daemons::{start_dkim, RunningMilter};
use testkit::dns::{TestDns, Zone};
use testkit::judges;
use testkit::keys::TestKey;
use testkit::logcapture::lines_with;

const AUTHSERV: &str = "mx.test.example";
/// Per-operation timeout for our client: a hang fails the test quickly instead of stalling CI.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

struct Keys {
    rsa: TestKey,
    ed: TestKey,
}

/// DNS, keys and a running milter for one test.
struct Setup {
    dir: tempfile::TempDir,
    dns: TestDns,
    milter: RunningMilter,
    keys: Keys,
}

impl Setup {
    fn spill_dir(&self) -> PathBuf {
        self.dir.path().join("spill")
    }
}

fn zone_for(k: &Keys) -> Zone {
    Zone::new()
        .txt("rsa._domainkey.example.com", &k.rsa.dns_record())
        .txt("ed._domainkey.example.com", &k.ed.dns_record())
}

/// Starts DNS and dkim-milter with `key_table` / `signing_table` (refile:) rows and `extra`
/// top-level TOML (may open `[limits]` / `[actions]` tables). Spill files go to `dir/spill`.
async fn start(key_table: &str, signing_table: &str, extra: &str, write_keys: bool) -> Setup {
    let keys = Keys {
        rsa: TestKey::rsa(2048),
        ed: TestKey::ed25519(),
    };
    let dns = TestDns::start(&zone_for(&keys)).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    if write_keys {
        keys.rsa.write_pem(dir.path(), "rsa.pem", true);
        keys.ed.write_pem(dir.path(), "ed.pem", false);
    }
    std::fs::create_dir(dir.path().join("spill")).unwrap();
    std::fs::write(dir.path().join("KeyTable"), key_table).unwrap();
    std::fs::write(dir.path().join("SigningTable"), signing_table).unwrap();
    let cfg = format!(
        "authserv_id = \"{AUTHSERV}\"\nkey_table = \"file:KeyTable\"\nsigning_table = \"refile:SigningTable\"\n\
         {extra}\n[resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
        dns.addr()
    );
    let milter = start_dkim(dir.path(), &cfg, "inet:0@127.0.0.1").await;
    Setup {
        dir,
        dns,
        milter,
        keys,
    }
}

const KEY_TABLE: &str = "rsa example.com:rsa:rsa.pem\ned example.com:ed:ed.pem\n";

/// Signs mail from example.com with the RSA key; spill threshold 1000 bytes into `dir/spill`.
/// `more_limits` goes into the `[limits]` table, `top` before it.
async fn setup_with(top: &str, more_limits: &str) -> Setup {
    let extra =
        format!("{top}\n[limits]\nspill_threshold = 1000\ntemp_dir = \"spill\"\n{more_limits}\n");
    start(KEY_TABLE, "*@example.com rsa\n", &extra, true).await
}

async fn setup() -> Setup {
    setup_with("", "").await
}

/// A plain message with the given header lines (each without line end) and a small body.
fn message_with(headers: &[&str], body: &str) -> Vec<u8> {
    let mut m = String::new();
    for h in headers {
        m.push_str(h);
        m.push_str("\r\n");
    }
    m.push_str("\r\n");
    m.push_str(body);
    m.into_bytes()
}

fn message(from_line: Option<&str>, subject: &str) -> Vec<u8> {
    let subject = format!("Subject: {subject}");
    let mut h: Vec<&str> = Vec::new();
    if let Some(f) = from_line {
        h.push(f);
    }
    h.extend([
        "To: bob@example.org",
        subject.as_str(),
        "Date: Wed, 25 Nov 2026 12:00:00 +0000",
        "Message-ID: <hostile@example.com>",
    ]);
    message_with(&h, "Hello Bob,\r\n\r\nthis is a test.\r\n")
}

/// A transaction from a trusted (internal) client with queue id `qid`.
fn internal(raw: &[u8], qid: &str) -> Transaction {
    let mut tx = Transaction::from_message(raw)
        .with_client("localhost", Some("127.0.0.1:40000".parse().unwrap()));
    tx.connect_macros.push(("j".into(), AUTHSERV.into()));
    tx.mail_macros.push(("i".into(), qid.into()));
    tx.eom_macros.push(("i".into(), qid.into()));
    tx.mail_from = "alice@example.com".into();
    tx.timeout = CLIENT_TIMEOUT;
    tx
}

/// A transaction from an outside client with queue id `qid`.
fn external(raw: &[u8], qid: &str) -> Transaction {
    let mut tx = internal(raw, qid);
    tx.client_name = "mail.sender.example".into();
    tx.client_addr = Some("192.0.2.55:41000".parse().unwrap());
    tx
}

/// The message as Postfix would deliver it after applying the milter's changes.
fn delivered(tx: &Transaction, out: &Outcome) -> Vec<u8> {
    let received = Some((
        "Received".to_string(),
        " from client by mx.test.example (Postfix)".to_string(),
    ));
    let headers = apply_modifications(received, &tx.headers, &out.modifications, out.leadspc());
    render(&headers, &tx.body)
}

fn inserted_in(mods: &[Modification], name: &str) -> Vec<String> {
    mods.iter()
        .filter_map(|m| match m {
            Modification::InsertHeader { name: n, value, .. } if n.eq_ignore_ascii_case(name) => {
                Some(value.trim_start().to_string())
            }
            _ => None,
        })
        .collect()
}

fn inserted(out: &Outcome, name: &str) -> Vec<String> {
    inserted_in(&out.modifications, name)
}

/// Our A-R on one line, or None when none was added.
fn ar_in(mods: &[Modification]) -> Option<String> {
    let ar = inserted_in(mods, "Authentication-Results");
    assert!(ar.len() <= 1, "at most one A-R expected, got {ar:?}");
    ar.first()
        .map(|v| v.replace("\r\n\t", " ").replace("\n\t", " "))
}

fn ar(out: &Outcome) -> Option<String> {
    ar_in(&out.modifications)
}

/// `d=` and `s=` of a DKIM-Signature value.
fn tag(sig: &str, name: &str) -> String {
    let flat: String = sig.chars().filter(|c| !c.is_whitespace()).collect();
    flat.split(';')
        .find_map(|t| t.strip_prefix(&format!("{name}=")).map(str::to_string))
        .unwrap_or_default()
}

/// `header.b` as our A-R writes it: the first 8 characters of b=, quoted unless a token.
fn header_b(sig: &str) -> String {
    let b: String = tag(sig, "b").chars().take(8).collect();
    if b.contains(['/', '=']) {
        format!("\"{b}\"")
    } else {
        b
    }
}

/// The A-R a passing signature by our RSA key gets.
fn rsa_pass(sig: &str) -> String {
    format!(
        "dkim=pass (2048-bit key) header.d=example.com header.i=@example.com header.a=rsa-sha256 header.s=rsa header.b={}",
        header_b(sig)
    )
}

const TEMPFAIL_SECURITY: &str = "451 4.7.0 resource unavailable";

/// One ordinary session pair on `s`: sign as an internal client, then verify the delivered
/// message as an outside client. Proves the milter still serves after whatever came before.
async fn still_serves(s: &Setup, tag: &str) {
    let raw = message(Some("From: Alice <alice@example.com>"), tag);
    let tx = internal(&raw, &format!("{tag}-ok1"));
    let out = run(&s.milter.endpoint(), &tx)
        .await
        .unwrap_or_else(|e| panic!("{tag}: the next session failed: {e}"));
    assert_eq!(out.reply, Reply::Accept, "{tag}");
    let sigs = inserted(&out, "DKIM-Signature");
    assert_eq!(sigs.len(), 1, "{tag}: {:?}", out.modifications);
    let msg = delivered(&tx, &out);
    let back = run(&s.milter.endpoint(), &external(&msg, &format!("{tag}-ok2")))
        .await
        .unwrap_or_else(|e| panic!("{tag}: the verifying session failed: {e}"));
    assert_eq!(back.reply, Reply::Accept, "{tag}");
    assert_eq!(
        ar(&back),
        Some(format!("{AUTHSERV}; {}", rsa_pass(&sigs[0]))),
        "{tag}"
    );
}

/// Signs `raw` as an internal client and returns (signature value, delivered bytes).
async fn sign_ok(s: &Setup, raw: &[u8], qid: &str) -> (String, Vec<u8>) {
    let tx = internal(raw, qid);
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    assert_eq!(out.reply, Reply::Accept, "{qid}");
    assert_eq!(ar(&out), None, "{qid}: signing adds no A-R");
    let sigs = inserted(&out, "DKIM-Signature");
    assert_eq!(sigs.len(), 1, "{qid}: {:?}", out.modifications);
    (sigs[0].clone(), delivered(&tx, &out))
}

/// Verifies `raw` as an outside client.
async fn verify(s: &Setup, raw: &[u8], qid: &str) -> Outcome {
    run(&s.milter.endpoint(), &external(raw, qid))
        .await
        .unwrap_or_else(|e| panic!("{qid}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Low-level sessions: arbitrary header bytes, raw packets, sessions cut short.

/// What these tests offer: everything except no-reply at HELO, MAIL, RCPT, end of headers and
/// body, so that each of those replies marks the point where the daemon has processed the
/// command (the checks on spill files and sessions depend on it). No-reply as Postfix offers it
/// is covered by `no_reply_stages_are_requested_when_offered` and every other test file.
const OFFERED: u32 =
    ALL_PROTOCOL & !(SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT | SMFIP_NR_EOH | SMFIP_NR_BODY);

/// Opens a session up to (not including) the headers: negotiation with [`OFFERED`], connect,
/// HELO, MAIL, RCPT, DATA, each answered with continue.
async fn open_session(s: &Setup, internal: bool, qid: &str) -> MilterClient {
    let ep = s.milter.endpoint();
    let mut c = MilterClient::connect_with_timeout(&ep, CLIENT_TIMEOUT)
        .await
        .unwrap();
    open_on(&mut c, internal, qid).await;
    c
}

async fn open_on(c: &mut MilterClient, internal: bool, qid: &str) {
    c.negotiate(ALL_ACTIONS, OFFERED).await.unwrap();
    c.macros(SMFIC_CONNECT, &[("j", AUTHSERV)]).await.unwrap();
    let (name, addr): (&str, SocketAddr) = if internal {
        ("localhost", "127.0.0.1:40000".parse().unwrap())
    } else {
        ("mail.sender.example", "192.0.2.55:41000".parse().unwrap())
    };
    assert_eq!(
        c.connect_info(name, Some(addr)).await.unwrap(),
        Reply::Continue
    );
    assert_eq!(c.helo(name).await.unwrap(), Reply::Continue);
    new_message(c, qid).await;
}

/// MAIL, RCPT and DATA of a new message on an open session.
async fn new_message(c: &mut MilterClient, qid: &str) {
    c.macros(b'M', &[("i", qid)]).await.unwrap();
    assert_eq!(
        c.mail(&["<alice@example.com>"]).await.unwrap(),
        Reply::Continue
    );
    assert_eq!(
        c.rcpt(&["<bob@example.org>"]).await.unwrap(),
        Reply::Continue
    );
    let r = c.data().await.unwrap();
    assert!(matches!(r, Reply::Continue | Reply::NoReply), "{r:?}");
}

/// Sends one header packet as raw bytes (`data` = name NUL value NUL, or anything else).
async fn raw_header_packet(c: &mut MilterClient, data: &[u8]) {
    c.send_command(SMFIC_HEADER, data).await.unwrap();
    if !c.negotiated().unwrap().has_protocol(SMFIP_NR_HDR) {
        assert_eq!(c.read_reply(SMFIC_HEADER).await.unwrap(), Reply::Continue);
    }
}

/// Headers as bytes (value as after the colon, leading space included), end of headers, body
/// and end of message.
async fn finish_message(
    c: &mut MilterClient,
    headers: &[(&[u8], &[u8])],
    body: &[u8],
    qid: &str,
) -> EomResult {
    for (n, v) in headers {
        let r = c.header_bytes(n, v).await.unwrap();
        assert!(matches!(r, Reply::Continue | Reply::NoReply), "{r:?}");
    }
    assert_eq!(c.eoh().await.unwrap(), Reply::Continue);
    let r = c.body(body).await.unwrap();
    assert!(matches!(r, Reply::Continue | Reply::NoReply), "{r:?}");
    c.macros(b'E', &[("i", qid)]).await.unwrap();
    c.eom().await.unwrap()
}

/// A whole message with header bytes as given, from an internal or outside client.
async fn bytes_session(
    s: &Setup,
    internal: bool,
    qid: &str,
    headers: &[(&[u8], &[u8])],
    body: &[u8],
) -> EomResult {
    let mut c = open_session(s, internal, qid).await;
    let r = finish_message(&mut c, headers, body, qid).await;
    let _ = c.quit().await;
    r
}

/// A message from header fields as bytes (folds as bare LF become CRLF) and a body.
fn render_bytes(headers: &[(&[u8], &[u8])], body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::new();
    for (n, v) in headers {
        msg.extend_from_slice(n);
        msg.push(b':');
        let mut prev = 0u8;
        for &b in v.iter() {
            if b == b'\n' && prev != b'\r' {
                msg.push(b'\r');
            }
            msg.push(b);
            prev = b;
        }
        msg.extend_from_slice(b"\r\n");
    }
    msg.extend_from_slice(b"\r\n");
    msg.extend_from_slice(body);
    msg
}

/// Open files of this process inside `dir` (spill files are unlinked, so only the fd table
/// shows them; the daemon runs in-process).
fn open_files_in(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|p| p.starts_with(&dir))
                .unwrap_or(false)
        })
        .count()
}

/// Waits (bounded) until no spill file is open and the spill directory is empty.
async fn assert_no_spill_left(dir: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = open_files_in(dir);
        let listed = std::fs::read_dir(dir).unwrap().count();
        if open == 0 && listed == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {open} spill file(s) still open, {listed} in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// From header oddities: who is the sender, and which domain signs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_from_header_is_verified_as_unsigned() {
    let s = setup().await;
    let out = run(
        &s.milter.endpoint(),
        &internal(&message(None, "nofrom"), "QH-NOFROM"),
    )
    .await
    .unwrap();
    assert_eq!(out.reply, Reply::Accept);
    assert!(inserted(&out, "DKIM-Signature").is_empty());
    assert_eq!(ar(&out), Some(format!("{AUTHSERV}; dkim=none")));
    still_serves(&s, "QH-NOFROM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_from_headers_sign_with_the_first_and_cover_both() {
    let s = setup().await;
    let raw = message_with(
        &[
            "From: Alice <alice@example.com>",
            "From: Mallory <mallory@evil.example>",
            "To: bob@example.org",
            "Subject: two from",
        ],
        "body\r\n",
    );
    let (sig, msg) = sign_ok(&s, &raw, "QH-2FROM").await;
    assert_eq!(
        (tag(&sig, "d"), tag(&sig, "s")),
        ("example.com".into(), "rsa".into())
    );
    // Both From fields are signed, and oversigned once more: nobody can add or drop one.
    let h = tag(&sig, "h").to_ascii_lowercase();
    assert_eq!(h.split(':').filter(|x| *x == "from").count(), 3, "h={h}");
    let out = verify(&s, &msg, "QH-2FROM-v").await;
    assert_eq!(out.reply, Reply::Accept);
    assert_eq!(ar(&out), Some(format!("{AUTHSERV}; {}", rsa_pass(&sig))));
    // Dropping the second From breaks the signature.
    let text = String::from_utf8(msg).unwrap();
    let dropped = text.replace("From: Mallory <mallory@evil.example>\r\n", "");
    let out = verify(&s, dropped.as_bytes(), "QH-2FROM-x").await;
    assert!(
        ar(&out)
            .unwrap()
            .contains("dkim=fail reason=\"signature verification failed\""),
        "{:?}",
        ar(&out)
    );
    still_serves(&s, "QH-2FROM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_with_two_domains_signs_only_for_the_first() {
    let s = setup().await;
    // First mailbox is ours: signed for example.com, never for the other domain.
    let raw = message(
        Some("From: alice@example.com, Mallory <mallory@evil.example>"),
        "twodomains",
    );
    let (sig, _) = sign_ok(&s, &raw, "QH-2DOM").await;
    assert_eq!(tag(&sig, "d"), "example.com");
    // First mailbox is someone else's: no signature, the message is verified instead.
    let raw = message(
        Some("From: Mallory <mallory@evil.example>, alice@example.com"),
        "twodomains2",
    );
    let out = run(&s.milter.endpoint(), &internal(&raw, "QH-2DOM-b"))
        .await
        .unwrap();
    assert_eq!(out.reply, Reply::Accept);
    assert!(inserted(&out, "DKIM-Signature").is_empty());
    assert_eq!(ar(&out), Some(format!("{AUTHSERV}; dkim=none")));
    still_serves(&s, "QH-2DOM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_without_domain_is_not_signed() {
    let s = setup().await;
    for (i, from) in [
        "From: alice",
        "From: Alice <alice>",
        "From: alice@",
        "From: <>",
        "From: undisclosed-recipients:;",
        "From: \"alice@example.com\"",
        "From:",
    ]
    .iter()
    .enumerate()
    {
        let qid = format!("QH-NODOM{i}");
        let out = run(
            &s.milter.endpoint(),
            &internal(&message(Some(from), "nodomain"), &qid),
        )
        .await
        .unwrap();
        assert_eq!(out.reply, Reply::Accept, "{from}");
        assert!(inserted(&out, "DKIM-Signature").is_empty(), "{from}");
        assert_eq!(ar(&out), Some(format!("{AUTHSERV}; dkim=none")), "{from}");
    }
    still_serves(&s, "QH-NODOM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_display_name_with_at_sign_does_not_pick_the_domain() {
    let s = setup().await;
    // The display name claims another domain; the real address is ours: signed as example.com.
    let raw = message(
        Some("From: \"ceo@bank.example\" <alice@example.com>"),
        "quoted1",
    );
    let (sig, msg) = sign_ok(&s, &raw, "QH-QUOTE1").await;
    assert_eq!(
        (tag(&sig, "d"), tag(&sig, "s")),
        ("example.com".into(), "rsa".into())
    );
    let py = judges::dkimpy_verify(&msg, s.dns.addr()).unwrap();
    assert_eq!(py.results, vec!["pass"], "{}", py.raw_output);
    // The display name claims our domain, the real address is not ours: not signed.
    let raw = message(
        Some("From: \"alice@example.com\" <mallory@evil.example>"),
        "quoted2",
    );
    let out = run(&s.milter.endpoint(), &internal(&raw, "QH-QUOTE2"))
        .await
        .unwrap();
    assert_eq!(out.reply, Reply::Accept);
    assert!(inserted(&out, "DKIM-Signature").is_empty());
    assert_eq!(ar(&out), Some(format!("{AUTHSERV}; dkim=none")));
    // Same with a comment and an escaped quote in the display name.
    let raw = message(
        Some("From: \"al\\\"ice@example.com\" (alice@example.com) <mallory@evil.example>"),
        "quoted3",
    );
    let out = run(&s.milter.endpoint(), &internal(&raw, "QH-QUOTE3"))
        .await
        .unwrap();
    assert!(inserted(&out, "DKIM-Signature").is_empty());
    assert_eq!(ar(&out), Some(format!("{AUTHSERV}; dkim=none")));
    still_serves(&s, "QH-QUOTE").await;
}

// ---------------------------------------------------------------------------------------------
// Many signatures: the verification cap, and the cost of what lies beyond it.

/// A body of `lines` lines of 64 bytes.
fn big_body(lines: usize) -> String {
    let mut b = String::with_capacity(lines * 66);
    for i in 0..lines {
        b.push_str(&format!(
            "{i:08} the quick brown fox jumps over the lazy dog  again\r\n"
        ));
    }
    b
}

/// A syntactically valid DKIM-Signature whose body hash cannot match, with its own `l=` so that a
/// verifier hashing every signature's body would hash the body once per signature.
fn forged_signature(i: usize, l: usize) -> String {
    let bh = "A".repeat(43) + "=";
    let b = "B".repeat(342) + "==";
    let c = if i.is_multiple_of(2) {
        "relaxed/relaxed"
    } else {
        "simple/simple"
    };
    format!(
        " v=1; a=rsa-sha256; c={c}; d=example.com; s=forged{i}; l={l};\n\th=from:to:subject; bh={bh};\n\tb={b}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_signatures_respect_the_cap_in_bounded_time() {
    // Room for 1,000 signatures in the header limits, so the cap itself is what is tested.
    let s = setup_with("", "max_headers = 2000\nmax_header_bytes = 4194304\n").await;
    let body = big_body(4000); // 256 KiB
    let raw = message_with(
        &[
            "From: Alice <alice@example.com>",
            "To: bob@example.org",
            "Subject: many signatures",
        ],
        &body,
    );
    let (sig, msg) = sign_ok(&s, &raw, "QM-SIGN").await;
    let tx0 = external(&msg, "QM-1000");
    // Our valid signature three times on top, then 997 forged ones, each with its own l=.
    // Our signature goes on top, above the MTA's Received.
    let (ours, rest) = tx0.headers.split_first().unwrap();
    assert!(ours.0.eq_ignore_ascii_case("DKIM-Signature"), "{ours:?}");
    let mut headers = vec![ours.clone(), ours.clone(), ours.clone()];
    for i in 0..997 {
        headers.push((
            "DKIM-Signature".to_string(),
            forged_signature(i, body.len() - i),
        ));
    }
    headers.extend(rest.iter().cloned());
    let tx = Transaction { headers, ..tx0 };
    let started = Instant::now();
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    let took = started.elapsed();
    assert_eq!(out.reply, Reply::Accept);
    let ar = ar(&out).unwrap();
    assert_eq!(ar.matches("dkim=").count(), 10, "{ar}");
    assert_eq!(ar.matches(&rsa_pass(&sig)).count(), 3, "{ar}");
    assert_eq!(
        ar.matches("dkim=fail reason=\"body hash did not verify\"")
            .count(),
        7,
        "{ar}"
    );
    assert!(
        lines_with("QM-1000").contains(&"QM-1000: ignoring 990 signatures".to_string()),
        "{:?}",
        lines_with("QM-1000")
    );
    assert!(
        took < Duration::from_secs(5),
        "1,000 signatures took {took:?}"
    );
    still_serves(&s, "QM-1000").await;
}

// ---------------------------------------------------------------------------------------------
// Header limits: the configured `security` action (default tempfail 451 4.7.0).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_tempfail_with_the_security_action() {
    let s = setup().await;
    // One 1 MB header value (just under the milter protocol's 1 MiB packet limit).
    let raw = message(Some("From: Alice <alice@example.com>"), "bighdr");
    let mut tx = internal(&raw, "QL-BIG");
    tx.headers
        .push(("X-Big".into(), format!(" {}", "a".repeat(1_000_000))));
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    assert_eq!(out.reply, Reply::ReplyCode(TEMPFAIL_SECURITY.into()));
    assert_eq!(ar(&out), None);
    assert!(inserted(&out, "DKIM-Signature").is_empty());
    assert!(
        lines_with("QL-BIG")
            .contains(&"QL-BIG: too much header data (limits: 262144 bytes, 1000 fields)".into()),
        "{:?}",
        lines_with("QL-BIG")
    );
    still_serves(&s, "QL-BIG").await;

    // 10,000 small headers, from outside.
    let mut tx = external(&raw, "QL-MANY");
    for i in 0..10_000 {
        tx.headers.push((format!("X-H{i}"), " v".into()));
    }
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    assert_eq!(out.reply, Reply::ReplyCode(TEMPFAIL_SECURITY.into()));
    assert_eq!(ar(&out), None);
    assert!(
        lines_with("QL-MANY")
            .contains(&"QL-MANY: too much header data (limits: 262144 bytes, 1000 fields)".into()),
        "{:?}",
        lines_with("QL-MANY")
    );
    still_serves(&s, "QL-MANY").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_follow_a_configured_reject_action() {
    let s = setup_with("[actions]\nsecurity = \"reject\"", "").await;
    let raw = message(Some("From: Alice <alice@example.com>"), "bighdr");
    let mut tx = external(&raw, "QL-REJ");
    for i in 0..1001 {
        tx.headers.push((format!("X-H{i}"), " v".into()));
    }
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    assert_eq!(
        out.reply,
        Reply::ReplyCode("550 5.7.0 message header too large".into())
    );
    assert_eq!(ar(&out), None);
    still_serves(&s, "QL-REJ").await;
}

// ---------------------------------------------------------------------------------------------
// Bytes no MTA should send in headers: NUL, 8-bit.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_header_bytes_sign_and_verify() {
    let s = setup().await;
    let from: (&[u8], &[u8]) = (b"From", b" Alice <alice@example.com>");
    let subject: (&[u8], &[u8]) = (b"Subject", b" caf\xe9 \xc3\xa9t\xc3\xa9 \xff\xfe");
    let odd_name: (&[u8], &[u8]) = (b"X-\xe9\xff", b" \x80\x81");
    let to: (&[u8], &[u8]) = (b"To", b" bob@example.org");
    let headers = [from, to, subject, odd_name];
    let body = b"8-bit body \xe9\r\n";
    let r = bytes_session(&s, true, "QB-8BIT", &headers, body).await;
    assert_eq!(r.reply, Reply::Accept);
    assert_eq!(ar_in(&r.modifications), None);
    let sigs = inserted_in(&r.modifications, "DKIM-Signature");
    assert_eq!(sigs.len(), 1, "{:?}", r.modifications);
    // The delivered message, byte-exact: the signature on top, then the fields as sent.
    let mut with_sig: Vec<(&[u8], Vec<u8>)> =
        vec![(b"DKIM-Signature", format!(" {}", sigs[0]).into_bytes())];
    with_sig.extend(headers.iter().map(|(n, v)| (*n, v.to_vec())));
    let pairs: Vec<(&[u8], &[u8])> = with_sig.iter().map(|(n, v)| (*n, v.as_slice())).collect();
    let r = bytes_session(&s, false, "QB-8BIT-v", &pairs, body).await;
    assert_eq!(r.reply, Reply::Accept);
    assert_eq!(
        ar_in(&r.modifications),
        Some(format!("{AUTHSERV}; {}", rsa_pass(&sigs[0])))
    );
    // dkimpy agrees on the delivered bytes (less the field whose name dkimpy refuses to read;
    // it is not signed).
    let msg = render_bytes(&pairs[..pairs.len() - 1], body);
    let py = judges::dkimpy_verify(&msg, s.dns.addr()).unwrap();
    assert_eq!(py.results, vec!["pass"], "{}", py.raw_output);
    still_serves(&s, "QB-8BIT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_in_header_packets_get_a_defined_answer() {
    let s = setup().await;
    // NUL inside a value or name ends that string, as in libmilter: the milter sees
    // "Subject: before" and ignores the rest of the packet.
    let mut c = open_session(&s, true, "QB-NUL").await;
    c.header_bytes(b"From", b" Alice <alice@example.com>")
        .await
        .unwrap();
    raw_header_packet(&mut c, b"Subject\0 before\0after\0").await;
    raw_header_packet(&mut c, b"X-Nul\0na\0me\0 value\0").await;
    raw_header_packet(&mut c, b"To\0 bob@example.org\0\0\0").await;
    let r = finish_message(&mut c, &[], b"NUL \0 in the body\r\n", "QB-NUL").await;
    let _ = c.quit().await;
    assert_eq!(r.reply, Reply::Accept);
    let sigs = inserted_in(&r.modifications, "DKIM-Signature");
    assert_eq!(sigs.len(), 1, "{:?}", r.modifications);
    // Delivered as the milter saw it: value cut at the NUL.
    let sig_value = format!(" {}", sigs[0]);
    let headers: [(&[u8], &[u8]); 5] = [
        (b"DKIM-Signature", sig_value.as_bytes()),
        (b"From", b" Alice <alice@example.com>"),
        (b"Subject", b" before"),
        (b"X-Nul", b"na"),
        (b"To", b" bob@example.org"),
    ];
    let r = bytes_session(&s, false, "QB-NUL-v", &headers, b"NUL \0 in the body\r\n").await;
    assert_eq!(
        ar_in(&r.modifications),
        Some(format!("{AUTHSERV}; {}", rsa_pass(&sigs[0])))
    );

    // Header packets that are not two C strings end the session: the daemon closes the
    // connection (the MTA then applies its milter_default_action) and serves the next one.
    for (i, bad) in [&b"\0empty name\0"[..], b"Subject no NUL at all", b""]
        .iter()
        .enumerate()
    {
        let qid = format!("QB-NUL-bad{i}");
        let mut c = open_session(&s, true, &qid).await;
        c.header_bytes(b"From", b" Alice <alice@example.com>")
            .await
            .unwrap();
        c.send_command(SMFIC_HEADER, bad).await.unwrap();
        let e = c.eoh().await.expect_err("the milter must drop the session");
        assert!(
            matches!(
                e,
                milter_client::Error::Closed | milter_client::Error::Io(_)
            ),
            "{qid}: {e}"
        );
    }
    still_serves(&s, "QB-NUL").await;
}

// ---------------------------------------------------------------------------------------------
// Body oddities.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_cr_and_lf_in_the_body_sign_and_verify() {
    let s = setup().await;
    for (i, body) in [
        &b"line one\nbare LF above\r\nend\r\n"[..],
        b"line one\rbare CR above\r\nend\r\n",
        b"mixed\r\r\n\n\r\n\r\r\n \t \n",
        b"no final line end",
        b"\n\n\n",
        b"\r",
    ]
    .iter()
    .enumerate()
    {
        let qid = format!("QY-BARE{i}");
        let raw = message(Some("From: Alice <alice@example.com>"), &qid);
        let mut tx = internal(&raw, &qid);
        tx.body = body.to_vec();
        let out = run(&s.milter.endpoint(), &tx).await.unwrap();
        assert_eq!(out.reply, Reply::Accept, "{qid}");
        let sigs = inserted(&out, "DKIM-Signature");
        assert_eq!(sigs.len(), 1, "{qid}");
        let msg = delivered(&tx, &out);
        // Re-read by the MTA exactly as delivered: the same body bytes.
        let mut back = external(&msg, &format!("{qid}-v"));
        back.body = body.to_vec();
        let out = run(&s.milter.endpoint(), &back).await.unwrap();
        assert_eq!(out.reply, Reply::Accept, "{qid}");
        assert_eq!(
            ar(&out),
            Some(format!("{AUTHSERV}; {}", rsa_pass(&sigs[0]))),
            "{qid}"
        );
    }
    still_serves(&s, "QY-BARE").await;
}

/// Signs `raw` in the test with mail-auth and our Ed25519 key, `l=` set to the body length.
fn sign_with_length(k: &TestKey, raw: &[u8]) -> String {
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::dkim::DkimSigner;
    let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(&k.pkcs8_der()).unwrap();
    DkimSigner::from_key(key)
        .domain("example.com")
        .selector("ed")
        .headers(["From", "To", "Subject"])
        .body_length(true)
        .sign(raw)
        .unwrap()
        .to_header()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l_tag_larger_than_the_body_fails() {
    let s = setup().await;
    let raw = message(Some("From: Alice <alice@example.com>"), "ltag");
    let sig_header = sign_with_length(&s.keys.ed, &raw);
    assert!(
        sig_header.contains(" l=") || sig_header.contains(";l="),
        "{sig_header}"
    );
    let sig_value = sig_header.split_once(':').unwrap().1.to_string();
    let signed = [sig_header.as_bytes(), &raw].concat();
    let out = verify(&s, &signed, "QY-L0").await;
    assert_eq!(
        ar(&out),
        Some(format!(
            "{AUTHSERV}; dkim=pass (256-bit key) header.d=example.com header.i=@example.com header.a=ed25519-sha256 header.s=ed header.b={}",
            header_b(&sig_value)
        )),
        "l= equal to the body passes"
    );
    // The body shrinks in transit: l= now exceeds it.
    let text = String::from_utf8(signed).unwrap();
    let shorter = text.replace("this is a test.\r\n", "");
    assert_ne!(shorter, text);
    let out = verify(&s, shorter.as_bytes(), "QY-L1").await;
    assert_eq!(
        out.reply,
        Reply::Accept,
        "On-BadSignature defaults to accept"
    );
    assert_eq!(
        ar(&out),
        Some(format!(
            "{AUTHSERV}; dkim=fail reason=\"body hash did not verify\" (256-bit key) header.d=example.com header.i=@example.com header.a=ed25519-sha256 header.s=ed header.b={}",
            header_b(&sig_value)
        ))
    );
    // Emptied completely.
    let cut = &text[..text.find("\r\n\r\n").unwrap() + 4];
    let out = verify(&s, cut.as_bytes(), "QY-L2").await;
    assert!(
        ar(&out)
            .unwrap()
            .contains("dkim=fail reason=\"body hash did not verify\""),
        "{:?}",
        ar(&out)
    );
    still_serves(&s, "QY-L").await;
}

// ---------------------------------------------------------------------------------------------
// Malformed signatures.

/// `sig_value` with tag `name` replaced by `new` (the whole `name=value` text), or appended.
fn with_tag(sig_value: &str, name: &str, new: &str) -> String {
    let mut found = false;
    let mut parts: Vec<String> = sig_value
        .split(';')
        .map(|t| {
            if t.trim_start().starts_with(&format!("{name}=")) {
                found = true;
                format!(" {new}")
            } else {
                t.to_string()
            }
        })
        .collect();
    if !found {
        parts.insert(1, format!(" {new}"));
    }
    parts.join(";")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_z_tag_is_just_a_failed_signature() {
    let s = setup().await;
    let (sig, msg) = sign_ok(
        &s,
        &message(Some("From: Alice <alice@example.com>"), "ztag"),
        "QZ-SIGN",
    )
    .await;
    // z= with 10 KB of "copied headers" (OpenDKIM#433 overflowed a buffer on this).
    let mut z = String::from("z=From:Alice=20<alice@example.com>|To:bob@example.org");
    while z.len() < 10_240 {
        z.push_str("|\n\tX-Copied:=20aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    }
    let text = String::from_utf8(msg).unwrap();
    let folded = sig.replace('\n', "\r\n");
    assert!(text.contains(&folded));
    let with_z = text.replacen(
        &folded,
        &with_tag(&folded, "z", &z.replace('\n', "\r\n")),
        1,
    );
    let out = verify(&s, with_z.as_bytes(), "QZ-10K").await;
    assert_eq!(out.reply, Reply::Accept);
    assert_eq!(
        ar(&out),
        Some(format!(
            "{AUTHSERV}; dkim=fail reason=\"signature verification failed\" (2048-bit key) header.d=example.com header.i=@example.com header.a=rsa-sha256 header.s=rsa header.b={}",
            header_b(&sig)
        ))
    );
    still_serves(&s, "QZ-10K").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_signatures_get_a_defined_result() {
    let s = setup().await;
    let (sig, msg) = sign_ok(
        &s,
        &message(Some("From: Alice <alice@example.com>"), "garbage"),
        "QG-SIGN",
    )
    .await;
    let text = String::from_utf8(msg).unwrap();
    let folded = sig.replace('\n', "\r\n");
    let hb = header_b(&sig);
    let neutral = |why: &str| format!("dkim=neutral reason=\"bad signature data: {why}\"");
    let failed = format!(
        "dkim=fail reason=\"signature verification failed\" (2048-bit key) header.d=example.com header.i=@example.com header.a=rsa-sha256 header.s=rsa header.b={hb}"
    );
    // d= and s= must be domain names: nothing else reaches our A-R (CVE-2020-12272's class).
    let not_a_domain =
        "dkim=permerror reason=\"bad signature data: d= or s= is not a domain name\"".to_string();
    // mail-auth drops a signature that lacks a required tag or has bad base64 without a word;
    // we count such fields and report them (RFC 6376 §6.1.1: a signature that cannot be
    // processed), so the message is never presented as unsigned.
    let unparseable =
        "dkim=neutral reason=\"bad signature data: DKIM-Signature cannot be parsed\"".to_string();
    let variants: Vec<(&str, String, String)> = vec![
        (
            "garbage tags",
            " garbage;;; ===; v=; ;=;".into(),
            neutral("unsupported version"),
        ),
        ("empty", String::new(), unparseable.clone()),
        (
            "non-base64 b=",
            with_tag(&folded, "b", "b=!!!not*base64$$$"),
            unparseable.clone(),
        ),
        (
            "non-base64 bh=",
            with_tag(&folded, "bh", "bh=%%%%"),
            unparseable.clone(),
        ),
        (
            "unknown a=",
            with_tag(&folded, "a", "a=rsa-sha512"),
            neutral("unsupported algorithm"),
        ),
        (
            "unknown c=",
            with_tag(&folded, "c", "c=fancy/relaxed"),
            neutral("unsupported canonicalization"),
        ),
        (
            "v=2",
            with_tag(&folded, "v", "v=2"),
            neutral("unsupported version"),
        ),
        ("empty d=", with_tag(&folded, "d", "d="), unparseable.clone()),
        ("empty h=", with_tag(&folded, "h", "h="), unparseable.clone()),
        // Parsed, but the signed header field changed: the signature fails.
        (
            "huge l=",
            with_tag(&folded, "l", "l=999999999999999999999999999999"),
            failed.clone(),
        ),
        ("negative l=", with_tag(&folded, "l", "l=-1"), failed.clone()),
        (
            "huge x=",
            with_tag(&folded, "x", "x=99999999999999999999999999"),
            failed.clone(),
        ),
        ("h= without from", with_tag(&folded, "h", "h=to:subject"), failed.clone()),
        (
            "20 KB tag",
            with_tag(&folded, "q", &format!("q={}", "dns/txt:".repeat(2500))),
            failed.clone(),
        ),
        (
            "d= with a slash",
            with_tag(&folded, "d", "d=../../etc/passwd"),
            not_a_domain.clone(),
        ),
        (
            "quote in d=",
            with_tag(&folded, "d", "d=ex\"ample.com\" dkim=pass"),
            not_a_domain.clone(),
        ),
        (
            "parenthesis in s=",
            with_tag(&folded, "s", "s=rsa(.example.net"),
            not_a_domain.clone(),
        ),
        (
            "8-bit s=",
            with_tag(&folded, "s", "s=r\u{e9}sa"),
            format!("dkim=permerror reason=\"no key for signature\" header.d=example.com header.i=@example.com header.a=rsa-sha256 header.s=\"r\u{e9}sa\" header.b={hb}"),
        ),
    ];
    for (i, (what, value, expected)) in variants.iter().enumerate() {
        let qid = format!("QG-{i}");
        let raw = text.replacen(
            &format!("DKIM-Signature: {folded}\r\n"),
            &format!("DKIM-Signature:{value}\r\n"),
            1,
        );
        assert_ne!(raw, text, "{what}");
        let out = verify(&s, raw.as_bytes(), &qid).await;
        assert_eq!(
            out.reply,
            Reply::Accept,
            "{what}: On-BadSignature defaults to accept"
        );
        let ar = ar(&out).unwrap_or_default();
        assert!(ar.matches("dkim=").count() <= 1, "{what}: {ar}");
        assert!(!ar.contains("dkim=pass"), "{what}: {ar}");
        assert_eq!(ar, format!("{AUTHSERV}; {expected}"), "{what}");
    }
    still_serves(&s, "QG").await;
}

// ---------------------------------------------------------------------------------------------
// Sessions cut short, idle clients, and the spill file path.

/// Header fields worth more than the 1000-byte spill threshold, so the message spills at end
/// of headers.
fn fat_headers() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut h: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"From".to_vec(), b" Alice <alice@example.com>".to_vec()),
        (b"To".to_vec(), b" bob@example.org".to_vec()),
        (b"Subject".to_vec(), b" cut short".to_vec()),
    ];
    for i in 0..20 {
        h.push((
            format!("X-Pad-{i}").into_bytes(),
            format!(" {}", "p".repeat(80)).into_bytes(),
        ));
    }
    h
}

async fn send_headers(c: &mut MilterClient, headers: &[(Vec<u8>, Vec<u8>)]) {
    for (n, v) in headers {
        c.header_bytes(n, v).await.unwrap();
    }
}

/// A TCP session whose socket we can also write raw bytes to (to cut a packet in half).
async fn split_session(s: &Setup, qid: &str) -> (MilterClient, std::net::TcpStream) {
    let std_stream = std::net::TcpStream::connect(s.milter.addr).unwrap();
    std_stream.set_nodelay(true).unwrap();
    let raw = std_stream.try_clone().unwrap();
    std_stream.set_nonblocking(true).unwrap();
    let mut c = MilterClient::from_stream(tokio::net::TcpStream::from_std(std_stream).unwrap());
    c.set_timeout(CLIENT_TIMEOUT);
    open_on(&mut c, true, qid).await;
    (c, raw)
}

/// Writes all of `data` to a (non-blocking) socket, bounded in time.
async fn write_raw(sock: &mut std::net::TcpStream, mut data: &[u8]) {
    use std::io::Write;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !data.is_empty() {
        match sock.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "socket stays full");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("raw write: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_cut_short_leave_no_spill_files() {
    let s = setup().await;
    let spill = s.spill_dir();
    let headers = fat_headers();
    let chunk = vec![b'x'; 40_000];

    // 1. Dropped right after the headers (already spilled at end of headers).
    let mut c = open_session(&s, true, "QC-HDR").await;
    send_headers(&mut c, &headers).await;
    assert_eq!(c.eoh().await.unwrap(), Reply::Continue);
    assert_eq!(
        open_files_in(&spill),
        1,
        "the message spilled at end of headers"
    );
    drop(c);
    assert_no_spill_left(&spill, "dropped after headers").await;
    still_serves(&s, "QC-HDR").await;

    // 2. Dropped in the middle of a body packet: half of it written, then the socket closes.
    let (mut c, mut raw) = split_session(&s, "QC-HALF").await;
    send_headers(&mut c, &headers).await;
    assert_eq!(c.eoh().await.unwrap(), Reply::Continue);
    assert_eq!(c.body(&chunk).await.unwrap(), Reply::Continue);
    let packet = proto::encode_packet(SMFIC_BODY, &chunk).unwrap();
    write_raw(&mut raw, &packet[..packet.len() / 2]).await;
    assert_eq!(open_files_in(&spill), 1);
    drop(c);
    drop(raw);
    assert_no_spill_left(&spill, "dropped in the middle of a body packet").await;
    still_serves(&s, "QC-HALF").await;

    // 3. Aborted before end of message; the same connection then carries a normal message.
    let mut c = open_session(&s, true, "QC-ABORT").await;
    send_headers(&mut c, &headers).await;
    assert_eq!(c.eoh().await.unwrap(), Reply::Continue);
    assert_eq!(c.body(&chunk).await.unwrap(), Reply::Continue);
    assert_eq!(open_files_in(&spill), 1);
    c.abort().await.unwrap();
    assert_no_spill_left(&spill, "aborted before end of message").await;
    new_message(&mut c, "QC-ABORT2").await;
    let h: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (&n[..], &v[..])).collect();
    let r = finish_message(&mut c, &h, b"after the abort\r\n", "QC-ABORT2").await;
    assert_eq!(r.reply, Reply::Accept);
    assert_eq!(inserted_in(&r.modifications, "DKIM-Signature").len(), 1);
    let _ = c.quit().await;
    assert_no_spill_left(&spill, "message after abort").await;

    // 4. Dropped before end of message, the whole body sent.
    let mut c = open_session(&s, true, "QC-EOM").await;
    send_headers(&mut c, &headers).await;
    assert_eq!(c.eoh().await.unwrap(), Reply::Continue);
    assert_eq!(c.body(&chunk).await.unwrap(), Reply::Continue);
    assert_eq!(c.body(&chunk).await.unwrap(), Reply::Continue);
    drop(c);
    assert_no_spill_left(&spill, "dropped before end of message").await;

    // 5. Dropped with a half-written packet length.
    let (c, mut raw) = split_session(&s, "QC-LEN").await;
    write_raw(&mut raw, &[0, 0]).await;
    drop(c);
    drop(raw);
    still_serves(&s, "QC").await;
    assert_no_spill_left(&spill, "after all cut sessions").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_garbage_connections_do_not_block_service() {
    let s = setup().await;
    // Clients that connect and say nothing, or only part of a packet, or a bogus packet length.
    let mut idle = Vec::new();
    for i in 0..8 {
        let mut t = std::net::TcpStream::connect(s.milter.addr).unwrap();
        use std::io::Write;
        match i % 4 {
            0 => {}
            1 => t.write_all(&[0, 0]).unwrap(),
            // Announces a 1 MiB - 1 byte packet and sends nothing of it.
            2 => t.write_all(&[0, 0x0f, 0xff, 0xff, b'L']).unwrap(),
            _ => t.write_all(b"\0\0\0\x0dOhello").unwrap(),
        }
        idle.push(t);
    }
    // A packet longer than the protocol allows: the daemon drops that connection.
    let mut big = MilterClient::connect_with_timeout(&s.milter.endpoint(), CLIENT_TIMEOUT)
        .await
        .unwrap();
    let mut bogus = Vec::from(0x7fff_ffffu32.to_be_bytes());
    bogus.push(b'L');
    {
        let std_stream = std::net::TcpStream::connect(s.milter.addr).unwrap();
        let mut w = std_stream.try_clone().unwrap();
        use std::io::{Read, Write};
        w.write_all(&bogus).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        let n = w.read(&mut buf).unwrap_or(0);
        assert_eq!(
            n, 0,
            "the daemon closes a connection with an oversized packet"
        );
    }
    big.negotiate(ALL_ACTIONS, ALL_PROTOCOL).await.unwrap();
    let _ = big.quit().await;
    // Meanwhile, normal sessions are served, including two in parallel.
    let started = Instant::now();
    let (a, b) = tokio::join!(still_serves(&s, "QI-A"), still_serves(&s, "QI-B"));
    let ((), ()) = (a, b);
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(idle);
    still_serves(&s, "QI-C").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_above_the_spill_threshold_signs_and_verifies() {
    let s = setup().await;
    let spill = s.spill_dir();
    let body = big_body(3000); // ~190 KB, far above the 1000-byte threshold
    let raw = message_with(
        &[
            "From: Alice <alice@example.com>",
            "To: bob@example.org",
            "Subject: spilled",
        ],
        &body,
    );
    let (sig, msg) = sign_ok(&s, &raw, "QS-SIGN").await;
    assert_no_spill_left(&spill, "after signing").await;
    let out = verify(&s, &msg, "QS-VERIFY").await;
    assert_eq!(out.reply, Reply::Accept);
    assert_eq!(ar(&out), Some(format!("{AUTHSERV}; {}", rsa_pass(&sig))));
    let py = judges::dkimpy_verify(&msg, s.dns.addr()).unwrap();
    assert_eq!(py.results, vec!["pass"], "{}", py.raw_output);
    // One changed byte deep in the spilled part is noticed.
    let tampered = String::from_utf8(msg)
        .unwrap()
        .replace("00002500 the quick", "00002500 the quack");
    let out = verify(&s, tampered.as_bytes(), "QS-TAMPER").await;
    assert!(
        ar(&out)
            .unwrap()
            .contains("dkim=fail reason=\"body hash did not verify\""),
        "{:?}",
        ar(&out)
    );
    assert_no_spill_left(&spill, "after verifying").await;
    still_serves(&s, "QS").await;
}

// ---------------------------------------------------------------------------------------------
// Faults: the key goes away between configuration load and signing.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_templated_key_is_a_signature_error() {
    // `%` in the KeyTable: the key file is only read when a message needs it.
    let s = start("tmpl %:rsa:keys/%.pem\n", "*@example.com tmpl\n", "", false).await;
    let keys = s.dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let key_path = s.keys.rsa.write_pem(&keys, "example.com.pem", true);
    let raw = message(Some("From: Alice <alice@example.com>"), "tmplkey");
    let (sig, _) = sign_ok(&s, &raw, "QK-OK").await;
    assert_eq!(
        (tag(&sig, "d"), tag(&sig, "s")),
        ("example.com".into(), "rsa".into())
    );

    // Gone, then replaced by something unreadable as a file: 550 5.7.0 (On-SignatureError).
    std::fs::remove_file(&key_path).unwrap();
    let out = run(&s.milter.endpoint(), &internal(&raw, "QK-GONE"))
        .await
        .unwrap();
    assert_eq!(
        out.reply,
        Reply::ReplyCode("550 5.7.0 DKIM signing error".into())
    );
    assert!(inserted(&out, "DKIM-Signature").is_empty());
    assert_eq!(ar(&out), None);
    assert!(
        lines_with("QK-GONE")
            .iter()
            .any(|l| l.starts_with("QK-GONE: signature generation error: key 'tmpl'")),
        "{:?}",
        lines_with("QK-GONE")
    );
    std::fs::create_dir(&key_path).unwrap();
    let out = run(&s.milter.endpoint(), &internal(&raw, "QK-DIR"))
        .await
        .unwrap();
    assert_eq!(
        out.reply,
        Reply::ReplyCode("550 5.7.0 DKIM signing error".into())
    );
    std::fs::remove_dir(&key_path).unwrap();
    std::fs::write(
        &key_path,
        b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = run(&s.milter.endpoint(), &internal(&raw, "QK-BAD"))
        .await
        .unwrap();
    assert_eq!(
        out.reply,
        Reply::ReplyCode("550 5.7.0 DKIM signing error".into())
    );
    // Put back: signing works again without a restart.
    s.keys.rsa.write_pem(&keys, "example.com.pem", true);
    let (sig, msg) = sign_ok(&s, &raw, "QK-BACK").await;
    let out = verify(&s, &msg, "QK-BACK-v").await;
    assert_eq!(ar(&out), Some(format!("{AUTHSERV}; {}", rsa_pass(&sig))));
}

// ---------------------------------------------------------------------------------------------
// Sendmail-like MTA: no SMFIP_HDR_LEADSPC.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_leadspc_relaxed_signature_verifies_with_dkimpy() {
    let s = setup().await;
    let raw = b"From: Alice <alice@example.com>\r\nTo:\tbob@example.org\r\nSubject:  two  spaces\r\n\tand a fold\r\n\
                Date:Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID:  <leadspc@example.com>\r\n\r\nBody  text \r\n";
    let mut tx = internal(raw, "QN-SIGN");
    tx.offer_protocol = ALL_PROTOCOL & !SMFIP_HDR_LEADSPC;
    let out = run(&s.milter.endpoint(), &tx).await.unwrap();
    assert!(
        !out.leadspc(),
        "the milter must not get HDR_LEADSPC when not offered"
    );
    assert_eq!(out.reply, Reply::Accept);
    let sigs = inserted(&out, "DKIM-Signature");
    assert_eq!(sigs.len(), 1, "{:?}", out.modifications);
    assert!(sigs[0].contains("c=relaxed/relaxed"), "{}", sigs[0]);
    let msg = delivered(&tx, &out);
    assert!(
        msg.starts_with(b"DKIM-Signature: v=1;"),
        "{}",
        String::from_utf8_lossy(&msg)
    );
    let py = judges::dkimpy_verify(&msg, s.dns.addr()).unwrap();
    assert_eq!(py.results, vec!["pass"], "{}", py.raw_output);
    // And our verifier, also without HDR_LEADSPC.
    let mut back = external(&msg, "QN-VERIFY");
    back.offer_protocol = ALL_PROTOCOL & !SMFIP_HDR_LEADSPC;
    let out = run(&s.milter.endpoint(), &back).await.unwrap();
    assert_eq!(
        ar(&out),
        Some(format!("{AUTHSERV}; {}", rsa_pass(&sigs[0])))
    );
    still_serves(&s, "QN").await;
}

/// Offered everything, as Postfix does, the daemon asks for no reply at every stage whose answer
/// is always "continue" (HELO, MAIL, RCPT, each header, end of headers, body) and keeps the
/// connect reply, which can say "accept" for an ignored client; the message is still signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_stages_are_requested_when_offered() {
    let s = setup().await;
    let mut c = MilterClient::connect_with_timeout(&s.milter.endpoint(), CLIENT_TIMEOUT)
        .await
        .unwrap();
    let n = c.negotiate(ALL_ACTIONS, ALL_PROTOCOL).await.unwrap();
    for (flag, name) in [
        (SMFIP_NR_HELO, "HELO"),
        (SMFIP_NR_MAIL, "MAIL"),
        (SMFIP_NR_RCPT, "RCPT"),
        (SMFIP_NR_HDR, "header"),
        (SMFIP_NR_EOH, "end of headers"),
        (SMFIP_NR_BODY, "body"),
    ] {
        assert!(n.has_protocol(flag), "no reply requested at {name}");
    }
    assert!(!n.has_protocol(SMFIP_NR_CONN), "connect must be answered");
    let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    assert_eq!(
        c.connect_info("localhost", Some(addr)).await.unwrap(),
        Reply::Continue
    );
    assert_eq!(c.helo("localhost").await.unwrap(), Reply::NoReply);
    c.macros(b'M', &[("i", "QNR001")]).await.unwrap();
    assert_eq!(
        c.mail(&["<alice@example.com>"]).await.unwrap(),
        Reply::NoReply
    );
    assert_eq!(
        c.rcpt(&["<bob@example.org>"]).await.unwrap(),
        Reply::NoReply
    );
    let _ = c.data().await.unwrap();
    assert_eq!(
        c.header("From", " alice@example.com").await.unwrap(),
        Reply::NoReply
    );
    assert_eq!(c.eoh().await.unwrap(), Reply::NoReply);
    assert_eq!(c.body(b"hello\r\n").await.unwrap(), Reply::NoReply);
    c.macros(b'E', &[("i", "QNR001")]).await.unwrap();
    let r = c.eom().await.unwrap();
    assert_eq!(r.reply, Reply::Accept);
    assert_eq!(inserted_in(&r.modifications, "DKIM-Signature").len(), 1);
    let _ = c.quit().await;
}
