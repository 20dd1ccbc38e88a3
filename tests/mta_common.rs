//! Helpers shared by the end-to-end tests with real MTAs (mta_dkim.rs, mta_dmarc.rs): the
//! macro that runs each scenario against every MTA, the rig (DNS server, milters, MTA) a
//! scenario drives, the test message, header parsing, judges' plumbing, log filtering.

#![allow(dead_code)] // each test binary uses a different subset

use std::any::Any;
use std::path::Path;
use std::time::Duration;

use chassis::policy::Policy;
use testkit::daemons::RunningMilter;
use testkit::dns::{TestDns, Zone};
use testkit::keys::TestKey;
use testkit::mta::{header_fields, Mta, MtaKind, MtaOptions};
use testkit::opendkim::{miltertest_message, Opendkim};
use testkit::smtp::{self, Reply};

/// Generates, for each scenario `name` (an `async fn name(kind: MtaKind)` in the calling
/// file), the tests `postfix::name` and `sendmail::name`, so one scenario is one function and
/// every MTA runs it. Names after `; postfix only:` get a Postfix test alone (scenarios about a
/// Postfix quirk). The runtime has two worker threads: blocking work runs in `block_in_place`
/// while the milters and the DNS server keep being served.
macro_rules! mta_tests {
    ($($name:ident),+ $(,)? $(; postfix only: $($pf:ident),+ $(,)?)?) => {
        mta_tests!(@mod postfix, Postfix, $($name,)+ $($($pf,)+)?);
        mta_tests!(@mod sendmail, Sendmail, $($name,)+);
    };
    (@mod $m:ident, $kind:ident, $($name:ident,)+) => {
        mod $m {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(testkit::mta::MtaKind::$kind).await
                }
            )+
        }
    };
}

/// The MTA's host name, and the authserv-id the milters are configured with.
pub const AUTHSERV: &str = testkit::mta::HOSTNAME;
/// The name the test client greets with (EHLO).
pub const HELO: &str = "client.test.example";
/// Upper bound for one delivery (measured: 0.1-0.3 s after the end of DATA).
pub const DELIVERY: Duration = Duration::from_secs(20);

/// Runs blocking work (SMTP, MTA start-up, judges) without stalling the runtime that serves
/// the milter and the DNS server.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

pub struct Keys {
    /// example.com, selector rsa.
    pub rsa: TestKey,
    /// example.com, selector ed.
    pub ed: TestKey,
    /// sender.example, selector od: used by the real OpenDKIM signer.
    pub od_rsa: TestKey,
    /// sender.example, selector oded: used by the real OpenDKIM signer.
    pub od_ed: TestKey,
}

pub fn zone_for(k: &Keys) -> Zone {
    Zone::new()
        .txt("rsa._domainkey.example.com", &k.rsa.dns_record())
        .txt("ed._domainkey.example.com", &k.ed.dns_record())
        .txt("od._domainkey.sender.example", &k.od_rsa.dns_record())
        .txt("oded._domainkey.sender.example", &k.od_ed.dns_record())
}

pub fn send(addr: std::net::SocketAddr, from: &str, msg: &[u8]) -> Reply {
    blocking(|| smtp::send(addr, HELO, from, &["bob@test.example"], msg, None))
        .expect("SMTP session")
}

pub fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Someone <{from}>\r\nTo: Bob <bob@test.example>\r\nSubject: {subject}\r\n\
         Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@test.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         Hello Bob,\r\n\r\nthis went through a real MTA.  With  spaces.\r\n.leading dot\r\n\r\n"
    )
    .into_bytes()
}

/// Header fields of `msg` called `name` (case-insensitive), unfolded, whitespace runs collapsed.
pub fn fields(msg: &[u8], name: &str) -> Vec<String> {
    header_fields(msg)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| collapse(&v))
        .collect()
}

pub fn collapse(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The value of tag `tag` in a DKIM-Signature value, whitespace removed.
pub fn tag(sig: &str, tag: &str) -> String {
    sig.split(';')
        .filter_map(|t| t.split_once('='))
        .find(|(n, _)| n.trim() == tag)
        .map(|(_, v)| v.chars().filter(|c| !c.is_whitespace()).collect())
        .unwrap_or_default()
}

/// The first 8 characters of the signature's b= as an A-R property value (header.b): a
/// quoted-string when they are not an RFC 2045 token (base64's "/" is a tspecial).
pub fn header_b(sig: &str) -> String {
    let b8: String = tag(sig, "b").chars().take(8).collect();
    if b8.chars().any(|c| "()<>@,;:\\\"/[]?=".contains(c)) {
        format!("\"{b8}\"")
    } else {
        b8
    }
}

/// The delivered message with this Subject.
pub fn by_subject<'a>(got: &'a [(String, Vec<u8>)], subject: &str) -> &'a (String, Vec<u8>) {
    got.iter()
        .find(|(_, m)| fields(m, "Subject") == [subject])
        .unwrap_or_else(|| panic!("no delivered message with Subject {subject}"))
}

/// Our daemon's OpenDKIM-style log lines for queue id `qid` ("QID: ..."), in order.
pub fn logged(qid: &str) -> Vec<String> {
    let prefix = format!("{qid}: ");
    testkit::logcapture::lines_with(qid)
        .into_iter()
        .filter(|l| l.starts_with(&prefix))
        .collect()
}

pub fn text(msg: &[u8]) -> String {
    String::from_utf8_lossy(msg).into_owned()
}

/// Signs `msg` with a real OpenDKIM signer for sender.example (selector od = RSA, oded =
/// Ed25519), relaxed/relaxed, and returns the signed message.
pub fn opendkim_signed(dir: &Path, key: &TestKey, selector: &str, msg: &[u8]) -> Vec<u8> {
    let path = key.write_pem(dir, &format!("{selector}-opendkim.pem"), true);
    let signer = Opendkim::start_signer("sender.example", selector, &path, "relaxed/relaxed")
        .expect("opendkim signer starts");
    let out = miltertest_message(&signer.socket, msg, "127.0.0.1").expect("miltertest");
    assert_eq!(out.header("DKIM-Signature").len(), 1, "{}", out.raw_output);
    out.apply_to(msg)
}

/// Where a milter of a test listens.
#[derive(Clone, Copy, PartialEq)]
pub enum Socket {
    Inet,
    Unix,
}

/// Starts our daemon of policy `P` with `cfg` in `dir` on `socket` (a unix socket is
/// `dir/<name>.sock`, opened up for the MTA where it needs that), and returns it with its milter
/// spec in the MTA's syntax.
pub async fn start_milter<P: Policy>(
    kind: MtaKind,
    dir: &Path,
    cfg: &str,
    socket: Socket,
    name: &str,
) -> (RunningMilter<P>, String) {
    match socket {
        Socket::Inet => {
            let m = testkit::daemons::start::<P>(dir, cfg, "inet:0@127.0.0.1").await;
            let spec = kind.milter_inet(m.addr);
            (m, spec)
        }
        Socket::Unix => {
            let path = dir.join(format!("{name}.sock"));
            let m =
                testkit::daemons::start::<P>(dir, cfg, &format!("unix:{}", path.display())).await;
            kind.prepare_unix_socket(&path)
                .unwrap_or_else(|e| panic!("open {} to {}: {e}", path.display(), kind.name()));
            (m, kind.milter_unix(&path))
        }
    }
}

/// Starts an MTA of `kind` with these milter specs (in order); panics when it does not start.
pub fn start_mta(kind: MtaKind, milters: Vec<String>, opts: &MtaOptions) -> Box<dyn Mta> {
    blocking(|| testkit::mta::start(kind, milters, opts))
        .unwrap_or_else(|e| panic!("{} starts: {e}", kind.name()))
}

/// Our milters, the test DNS server, an MTA and the keys of one test (`K`: the test's own).
/// Fields drop in this order: the MTA stops before the milters it talks to, and the directory
/// with their sockets goes last.
pub struct Rig<K> {
    pub kind: MtaKind,
    pub mta: Box<dyn Mta>,
    /// The running milters (`RunningMilter`s of any policy), stopped on drop.
    pub milters: Vec<Box<dyn Any>>,
    pub dns: TestDns,
    pub keys: K,
    /// The milters' directory (configuration, keys, history database, sockets).
    pub dir: tempfile::TempDir,
}

impl<K> Rig<K> {
    /// Sends `msg` on the plain SMTP port (an outside client: mail is verified).
    pub fn send_inbound(&self, from: &str, msg: &[u8]) -> Reply {
        send(self.mta.smtp_addr(), from, msg)
    }

    /// Sends `msg` on the submission port (outgoing mail for dkim-milter: signed).
    pub fn send_submission(&self, from: &str, msg: &[u8]) -> Reply {
        send(self.mta.submission_addr(), from, msg)
    }

    /// Waits for exactly `n` deliveries and returns them as (queue id, message).
    pub fn delivered(&self, n: usize) -> Vec<(String, Vec<u8>)> {
        let got = blocking(|| self.mta.wait_for_deliveries(n, DELIVERY));
        assert_eq!(
            got.len(),
            n,
            "expected {n} deliveries; {}",
            self.mta.diagnostics()
        );
        got
    }

    /// The delivered message with queue id `qid` (waits for it).
    pub fn delivered_id(&self, qid: &str) -> Vec<u8> {
        blocking(|| {
            testkit::mta::poll(DELIVERY, || {
                self.mta
                    .deliveries()
                    .into_iter()
                    .find_map(|(q, m)| (q == qid).then_some(m))
            })
        })
        .unwrap_or_else(|| panic!("{qid} not delivered; {}", self.mta.diagnostics()))
    }

    /// After a rejection: waits a little for a wrongly queued rejected message to show up, then
    /// checks that only the `n` messages accepted since were delivered and nothing is left in
    /// the queue.
    pub fn assert_only_delivered(&self, n: usize) {
        blocking(|| std::thread::sleep(Duration::from_millis(500)));
        assert_eq!(self.mta.deliveries().len(), n, "{}", self.mta.diagnostics());
        assert!(
            self.mta.queue_files().is_empty(),
            "{:?}; {}",
            self.mta.queue_files(),
            self.mta.diagnostics()
        );
    }
}

/// The queue id of the message the MTA accepted with `reply` (asserts it was accepted).
pub fn queued(reply: &Reply) -> String {
    assert_eq!(reply.code, 250, "{reply}");
    reply.queue_id().expect("queue id").to_owned()
}

/// The Received field at `index` of `msg` (asserted to be one), white space collapsed, to
/// compare with [`Mta::received_start`].
pub fn own_received(msg: &[u8], index: usize) -> String {
    let hdrs = header_fields(msg);
    assert_eq!(hdrs[index].0, "Received", "{}", text(msg));
    collapse(&hdrs[index].1)
}
