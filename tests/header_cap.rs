//! The header storage cap must not be a hiding place (issue #15, the CVE-2022-48521 class): a
//! forged Authentication-Results with our own authserv-id, or a From field, placed after
//! thousands of filler fields or hundreds of KiB of header data is seen by both daemons, over
//! real milter sessions against a loopback DNS. The forged header is removed or the message is
//! tempfailed; it is never delivered. An MTA that cannot delete headers is refused up front.

use milter_client::consts::{ALL_ACTIONS, SMFIF_CHGHDRS};
use milter_client::{apply_modifications, run, Outcome, Reply, Transaction};
use std::net::SocketAddr;
use testkit::daemons::{start_dkim, start_dmarc, RunningMilter};
use testkit::dns::{TestDns, Zone};
use testkit::logcapture::lines_with;

const AUTHSERV: &str = "mx.cap.example";
const BAD_IP: &str = "203.0.113.9";
/// Marks the forged header so the delivered message can be searched for it.
const FORGED: &str = "forged-by-the-sender";

fn zone() -> Zone {
    Zone::new()
        .txt("example.com", "v=spf1 ip4:192.0.2.10 -all")
        .txt("_dmarc.example.com", "v=DMARC1; p=reject")
}

fn resolver(dns: SocketAddr) -> String {
    format!("[resolver]\nnameservers = [\"{dns}\"]\ntimeout = 1.0\nattempts = 1\n")
}

/// How the filler before the hidden field is made.
#[derive(Debug, Clone, Copy)]
enum Filler {
    /// This many one-line fields.
    Fields(usize),
    /// About this many KiB of header data, in 1 KiB fields (fewer fields than the count cap).
    KiB(usize),
}

fn filler_fields(f: Filler) -> Vec<(String, String)> {
    match f {
        Filler::Fields(n) => (0..n)
            .map(|i| (format!("X-Filler-{i}"), " x".to_string()))
            .collect(),
        Filler::KiB(k) => (0..k)
            .map(|i| (format!("X-Filler-{i}"), format!(" {}", "y".repeat(1020))))
            .collect(),
    }
}

/// A message with `hidden` fields placed after `filler`, From (unless hidden) on top.
fn transaction(
    filler: Filler,
    hidden: &[(&str, String)],
    from_on_top: bool,
    qid: &str,
) -> Transaction {
    let mut raw = String::new();
    if from_on_top {
        raw.push_str("From: Alice <alice@example.com>\r\n");
    }
    raw.push_str("To: bob@example.org\r\nSubject: cap\r\nDate: Wed, 2 Dec 2026 12:00:00 +0000\r\n\r\nbody\r\n");
    let mut tx = Transaction::from_message(raw.as_bytes())
        .with_client(
            "client.example.net",
            Some(format!("{BAD_IP}:40000").parse().unwrap()),
        )
        .with_helo("client.example.net")
        .with_mail_from("alice@example.com");
    let mut headers = filler_fields(filler);
    for (n, v) in hidden {
        headers.push((n.to_string(), format!(" {v}")));
    }
    tx.headers.extend(headers);
    tx.mail_macros.push(("i".into(), qid.into()));
    tx.eom_macros.push(("i".into(), qid.into()));
    tx
}

fn forged_ar() -> (&'static str, String) {
    (
        "Authentication-Results",
        format!("{AUTHSERV}; dmarc=pass header.from=example.com ({FORGED})"),
    )
}

/// The header block the MTA would deliver after applying the milter's changes.
fn delivered(tx: &Transaction, out: &Outcome) -> Vec<(String, String)> {
    apply_modifications(None, &tx.headers, &out.modifications, out.leadspc())
}

fn is_tempfail(r: &Reply) -> bool {
    matches!(r, Reply::Tempfail) || matches!(r, Reply::ReplyCode(t) if t.starts_with("451"))
}

fn is_reply(r: &Reply, prefix: &str) -> bool {
    matches!(r, Reply::ReplyCode(t) if t.starts_with(prefix) || t.contains(prefix))
}

/// Removed or tempfailed, never delivered.
fn assert_not_delivered(tx: &Transaction, out: &Outcome, case: &str) {
    if is_tempfail(&out.reply) {
        return;
    }
    let left: Vec<(String, String)> = delivered(tx, out)
        .into_iter()
        .filter(|(_, v)| v.contains(FORGED))
        .collect();
    assert!(
        left.is_empty(),
        "{case}: forged header delivered ({left:?}); reply {:?}",
        out.reply
    );
}

async fn dkim_milter(extra: &str) -> (TestDns, tempfile::TempDir, RunningMilter) {
    let dns = TestDns::start(&zone()).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "authserv_id = \"{AUTHSERV}\"\n{extra}\n{}",
        resolver(dns.addr())
    );
    let m = start_dkim(dir.path(), &cfg, "inet:0@127.0.0.1").await;
    (dns, dir, m)
}

async fn dmarc_milter(
    extra: &str,
) -> (
    TestDns,
    tempfile::TempDir,
    RunningMilter<dmarc_policy::runtime::Runtime>,
) {
    let dns = TestDns::start(&zone()).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "authserv_id = \"{AUTHSERV}\"\nreject_failures = true\n{extra}\n{}",
        resolver(dns.addr())
    );
    let m = start_dmarc(dir.path(), &cfg, "inet:0@127.0.0.1").await;
    (dns, dir, m)
}

const FILLERS: [Filler; 3] = [
    Filler::Fields(1_000),
    Filler::Fields(5_000),
    Filler::KiB(300),
];

/// dkim-milter with its default `security` action (tempfail) and with `security = accept`,
/// where the message goes on and the forged field must be deleted by its real position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_milter_never_delivers_a_forged_result_past_the_cap() {
    for (extra, must_accept) in [("", false), ("[actions]\nsecurity = \"accept\"", true)] {
        let (_dns, _dir, m) = dkim_milter(extra).await;
        for (n, filler) in FILLERS.into_iter().enumerate() {
            let qid = format!("DKCAP{n}{}", u8::from(must_accept));
            let tx = transaction(filler, &[forged_ar()], true, &qid);
            let out = run(&m.endpoint(), &tx).await.expect("milter session");
            let case = format!("dkim-milter {extra:?} {filler:?}");
            assert_not_delivered(&tx, &out, &case);
            if must_accept {
                assert_eq!(out.reply, Reply::Accept, "{case}");
                assert!(
                    lines_with(&format!("{qid}: removed 1 Authentication-Results header(s) claiming to be from {AUTHSERV}")).len() == 1,
                    "{case}: removal log line"
                );
            } else {
                assert!(is_tempfail(&out.reply), "{case}: {:?}", out.reply);
            }
        }
    }
}

/// dmarc-milter removes the forged field wherever it is; and a From past the cap is the
/// author: p=reject fails and is rejected instead of reading as "no From".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmarc_milter_sees_forged_results_and_from_past_the_cap() {
    let (_dns, _dir, m) = dmarc_milter("").await;
    for (n, filler) in FILLERS.into_iter().enumerate() {
        let qid = format!("DMCAP{n}");
        let tx = transaction(filler, &[forged_ar()], true, &qid);
        let out = run(&m.endpoint(), &tx).await.expect("milter session");
        let case = format!("dmarc-milter {filler:?}");
        assert_not_delivered(&tx, &out, &case);
        assert!(
            lines_with(&format!(
                "{qid}: removed 1 Authentication-Results header(s) claiming to be from {AUTHSERV}"
            ))
            .len()
                == 1,
            "{case}: removal log line"
        );
        // The author is on top and fails SPF from BAD_IP with no DKIM: p=reject applies.
        assert!(is_reply(&out.reply, "550"), "{case}: {:?}", out.reply);

        let qid = format!("DMFROM{n}");
        let from = ("From", "Mallory <alice@example.com>".to_string());
        let tx = transaction(filler, &[from], false, &qid);
        let out = run(&m.endpoint(), &tx).await.expect("milter session");
        let case = format!("dmarc-milter From past the cap {filler:?}");
        assert!(
            is_reply(&out.reply, "rejected by DMARC policy for example.com"),
            "{case}: {:?}",
            out.reply
        );
        assert_eq!(
            lines_with(&format!("{qid}: example.com fail")).len(),
            1,
            "{case}"
        );
    }
}

/// Without the change-header action forged results could not be removed: both daemons refuse
/// the connection at negotiation, with a log line that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mta_without_change_header_is_refused() {
    let (_d1, _t1, dkim) = dkim_milter("").await;
    let (_d2, _t2, dmarc) = dmarc_milter("").await;
    let before = lines_with("does not offer the change-header action").len();
    for ep in [dkim.endpoint(), dmarc.endpoint()] {
        let mut tx = transaction(Filler::Fields(1), &[forged_ar()], true, "NOCHG");
        tx.offer_actions = ALL_ACTIONS & !SMFIF_CHGHDRS;
        assert!(run(&ep, &tx).await.is_err(), "negotiation must fail");
    }
    let lines = lines_with("does not offer the change-header action");
    assert_eq!(lines.len(), before + 2, "{lines:?}");
    assert!(lines
        .last()
        .unwrap()
        .contains("needed to remove forged Authentication-Results; refusing the connection"));
    // Both keep serving MTAs that do offer it.
    for ep in [dkim.endpoint(), dmarc.endpoint()] {
        let tx = transaction(Filler::Fields(1), &[forged_ar()], true, "CHGOK");
        let out = run(&ep, &tx).await.expect("milter session");
        assert_not_delivered(&tx, &out, "after a refused negotiation");
    }
}

/// A header change the MTA side does not take (here: the MTA resets the connection right after
/// end of message, so the deletion cannot be written): the daemon logs that it could not
/// remove the forged field and answers tempfail, never "accept without it", and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_that_cannot_be_made_tempfails() {
    use milter_client::consts::{ALL_PROTOCOL, SMFIC_BODYEOB};
    use milter_client::MilterClient;
    let (_d, _t, m) = dmarc_milter("").await;
    let before = lines_with("cannot remove forged Authentication-Results header").len();
    let mut refused = 0;
    // Which side of the race the reset lands on is up to the kernel; a few tries make the
    // "deletion failed" path certain to be taken at least once.
    for attempt in 0..40 {
        let stream = tokio::net::TcpStream::connect(m.addr).await.unwrap();
        // A zero linger makes the close send a reset at once; it never blocks on drop (the
        // reason tokio deprecates the setter is a non-zero linger).
        #[allow(deprecated)]
        stream.set_linger(Some(std::time::Duration::ZERO)).unwrap();
        let mut c = MilterClient::from_stream(stream);
        c.negotiate(ALL_ACTIONS, ALL_PROTOCOL).await.unwrap();
        let qid = format!("RESET{attempt}");
        c.macros(b'M', &[("i", qid.as_str())]).await.unwrap();
        c.connect_info(
            "client.example.net",
            Some(format!("{BAD_IP}:40000").parse().unwrap()),
        )
        .await
        .unwrap();
        c.helo("client.example.net").await.unwrap();
        c.mail(&["<alice@example.com>"]).await.unwrap();
        c.rcpt(&["<bob@example.org>"]).await.unwrap();
        c.header("From", "alice@example.com").await.unwrap();
        let (n, v) = forged_ar();
        c.header(n, &v).await.unwrap();
        c.eoh().await.unwrap();
        c.body(b"body\r\n").await.unwrap();
        c.macros(SMFIC_BODYEOB, &[("i", qid.as_str())])
            .await
            .unwrap();
        c.send_command(SMFIC_BODYEOB, &[]).await.unwrap();
        c.flush().await.unwrap();
        // Give the milter time to read end of message, then reset under its answer.
        tokio::time::sleep(std::time::Duration::from_millis(5 * attempt as u64)).await;
        drop(c);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        refused = lines_with("cannot remove forged Authentication-Results header").len() - before;
        if refused > 0 {
            break;
        }
    }
    assert!(refused > 0, "the failed deletion was never observed");
    let line = lines_with("cannot remove forged Authentication-Results header")
        .pop()
        .unwrap();
    assert!(line.contains("; temporarily failing"), "{line}");
    // Still serving.
    let tx = transaction(Filler::Fields(1), &[forged_ar()], true, "AFTERRESET");
    let out = run(&m.endpoint(), &tx).await.expect("milter session");
    assert_not_delivered(&tx, &out, "after a reset");
}
