//! The real OpenDKIM daemon (Debian's `opendkim` 2.11) as a milter in tests.
//!
//! Why: authmilter's dkim-milter is a drop-in for OpenDKIM, so the reference behaviour is the real
//! daemon, not our reading of its documentation. Tests start it in the foreground on a loopback
//! port with a generated configuration in a temporary directory, drive it with a milter client,
//! and compare.
//!
//! DNS: Debian builds OpenDKIM with libunbound (`opendkim -V` lists USE_UNBOUND). Its
//! `Nameservers` setting cannot carry a port, but `ResolverConfiguration` names an unbound
//! configuration file, and unbound's `forward-addr: 127.0.0.1@PORT` can. Unbound refuses to
//! query loopback addresses unless `do-not-query-localhost: no`, and without `forward-first` it
//! never falls back to recursion from the root hints. Every instance gets such a file: pointing at
//! the test DNS server for verifiers, at a closed loopback port for signers, so OpenDKIM can never
//! send a query off the machine (it does read /etc/resolv.conf at start-up, but does not use it).
//!
//! Logging: OpenDKIM logs only through syslog(3); with `Syslog no` nothing is written, and a test
//! host usually has no syslog daemon. Start-up errors go to stderr, which is captured in
//! `<dir>/stderr.log` and included in start-up failures.

use std::fs;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Path of the daemon.
pub const OPENDKIM: &str = "/usr/sbin/opendkim";
/// Path of Debian's Lua-scripted milter client.
pub const MILTERTEST: &str = "/usr/bin/miltertest";
/// How long OpenDKIM may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running OpenDKIM; killed (and reaped) on drop.
pub struct Opendkim {
    /// The milter socket in libmilter syntax, "inet:PORT@127.0.0.1".
    pub socket: String,
    /// The TCP address of the milter socket.
    pub addr: SocketAddr,
    child: Child,
    dir: TempDir,
}

/// The signing key of a signer instance.
#[derive(Clone, Debug)]
pub struct SigningKey<'a> {
    /// `d=`; mail whose From domain is this one is signed.
    pub domain: &'a str,
    /// `s=`.
    pub selector: &'a str,
    /// PEM private key (PKCS#1 or PKCS#8, RSA or Ed25519).
    pub key_pem_path: &'a Path,
}

/// Picks a free loopback TCP port by binding port 0 and closing it. Another process may take it
/// before OpenDKIM binds; [`Opendkim::start`] retries on that.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The DKIM algorithm OpenDKIM must be told for the key in `pem`.
///
/// OpenDKIM 2.11 (Debian 12) does not infer the algorithm from the key: `SignatureAlgorithm`
/// (default rsa-sha256) is global, and an Ed25519 key under the default fails at end of message
/// with a reply code ("y") and no signature. So the harness looks at the key: PKCS#8 with the
/// Ed25519 OID 1.3.101.112 (DER `06 03 2B 65 70`) is ed25519-sha256, anything else rsa-sha256.
fn signature_algorithm(pem: &str) -> &'static str {
    const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
    if pem.contains("BEGIN RSA PRIVATE KEY") {
        return "rsa-sha256";
    }
    let der = crate::keys::pem_body(pem);
    if der
        .windows(ED25519_OID.len())
        .take(32)
        .any(|w| w == ED25519_OID)
    {
        "ed25519-sha256"
    } else {
        "rsa-sha256"
    }
}

/// An unbound configuration that forwards every query to `dns` and nowhere else.
fn unbound_conf(dns: SocketAddr) -> String {
    format!(
        "server:\n\
         \x20   do-not-query-localhost: no\n\
         \x20   do-ip6: {ip6}\n\
         \x20   do-ip4: {ip4}\n\
         forward-zone:\n\
         \x20   name: \".\"\n\
         \x20   forward-addr: {ip}@{port}\n",
        ip6 = if dns.is_ipv6() { "yes" } else { "no" },
        ip4 = if dns.is_ipv4() { "yes" } else { "no" },
        ip = dns.ip(),
        port = dns.port(),
    )
}

impl Opendkim {
    /// A signer (`Mode sv`) for `domain`/`selector` with the key at `key_pem_path` and the given
    /// canonicalization ("relaxed/relaxed", "simple/simple", ...). The signature algorithm follows
    /// the key (rsa-sha256 or ed25519-sha256). Mail is signed when the milter
    /// CONNECT reports 127.0.0.1 or ::1 as the client (InternalHosts) and the From domain is
    /// `domain`. Its resolver points at a closed loopback port: signing needs no DNS.
    pub fn start_signer(
        domain: &str,
        selector: &str,
        key_pem_path: &Path,
        canon: &str,
    ) -> io::Result<Self> {
        let key = SigningKey {
            domain,
            selector,
            key_pem_path,
        };
        Self::start(Some(&key), canon, None, &[])
    }

    /// A verifier (`Mode v`) that looks keys up only in the DNS server at `dns` and adds an
    /// Authentication-Results header with authserv-id "opendkim.test".
    pub fn start_verifier(dns: SocketAddr) -> io::Result<Self> {
        Self::start(None, "relaxed/relaxed", Some(dns), &[])
    }

    /// The general form: signs with `key` if given (`Mode sv`, else `Mode v`), resolves through
    /// `dns` if given (else through a closed loopback port), and appends `extra` settings
    /// (name, value) to the generated opendkim.conf, which override the defaults above them.
    pub fn start(
        key: Option<&SigningKey<'_>>,
        canon: &str,
        dns: Option<SocketAddr>,
        extra: &[(&str, &str)],
    ) -> io::Result<Self> {
        let mut last_err = None;
        for _ in 0..3 {
            match Self::start_once(key, canon, dns, extra) {
                Ok(d) => return Ok(d),
                // A lost race for the port shows up as an early exit; try another port.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("opendkim did not start")))
    }

    fn start_once(
        key: Option<&SigningKey<'_>>,
        canon: &str,
        dns: Option<SocketAddr>,
        extra: &[(&str, &str)],
    ) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("opendkim-test").tempdir()?;
        let d = dir.path();
        let port = free_port()?;
        let socket = format!("inet:{port}@127.0.0.1");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));

        // Port 9 (discard) on loopback has no listener here: queries fail fast, never leave.
        let resolver_target = dns.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 9)));
        fs::write(d.join("unbound.conf"), unbound_conf(resolver_target))?;

        let mut conf = vec![
            ("Syslog".to_owned(), "no".to_owned()),
            ("SyslogSuccess".to_owned(), "yes".to_owned()),
            ("LogWhy".to_owned(), "yes".to_owned()),
            ("Socket".to_owned(), socket.clone()),
            (
                "PidFile".to_owned(),
                d.join("opendkim.pid").display().to_string(),
            ),
            (
                "Mode".to_owned(),
                if key.is_some() { "sv" } else { "v" }.to_owned(),
            ),
            ("Canonicalization".to_owned(), canon.to_owned()),
            ("InternalHosts".to_owned(), "csl:127.0.0.1,::1".to_owned()),
            // Keys generated by tests are owned by root with mode 0600, which is safe, but a key
            // written by another user must not stop the test.
            ("RequireSafeKeys".to_owned(), "false".to_owned()),
            ("AuthservID".to_owned(), "opendkim.test".to_owned()),
            (
                "ResolverConfiguration".to_owned(),
                d.join("unbound.conf").display().to_string(),
            ),
            ("DNSTimeout".to_owned(), "5".to_owned()),
        ];
        if let Some(k) = key {
            let name = format!("{}._domainkey.{}", k.selector, k.domain);
            fs::write(
                d.join("KeyTable"),
                format!(
                    "{name} {}:{}:{}\n",
                    k.domain,
                    k.selector,
                    k.key_pem_path.display()
                ),
            )?;
            fs::write(d.join("SigningTable"), format!("*@{} {name}\n", k.domain))?;
            let pem = fs::read_to_string(k.key_pem_path)?;
            conf.push((
                "SignatureAlgorithm".to_owned(),
                signature_algorithm(&pem).to_owned(),
            ));
            conf.push((
                "KeyTable".to_owned(),
                format!("file:{}", d.join("KeyTable").display()),
            ));
            conf.push((
                "SigningTable".to_owned(),
                format!("refile:{}", d.join("SigningTable").display()),
            ));
        }
        for (name, value) in extra {
            conf.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            conf.push(((*name).to_owned(), (*value).to_owned()));
        }
        let text: String = conf.iter().map(|(n, v)| format!("{n} {v}\n")).collect();
        let conf_path = d.join("opendkim.conf");
        fs::write(&conf_path, text)?;

        // `-n` checks the configuration and exits: a clear error instead of a silent early exit.
        let check = Command::new(OPENDKIM)
            .arg("-n")
            .arg("-x")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .output()?;
        if !check.status.success() {
            return Err(io::Error::other(format!(
                "opendkim -n rejected the configuration: {}{}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            )));
        }

        let stderr = fs::File::create(d.join("stderr.log"))?;
        let stdout = fs::File::create(d.join("stdout.log"))?;
        let child = Command::new(OPENDKIM)
            .arg("-f")
            .arg("-x")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()?;
        let mut me = Opendkim {
            socket,
            addr,
            child,
            dir,
        };
        me.wait_listening()?;
        Ok(me)
    }

    /// Waits until the milter port accepts connections, the child exits, or START_TIMEOUT.
    fn wait_listening(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = self.stderr_log();
                let kind = if log.contains("Address already in use") {
                    io::ErrorKind::AddrInUse
                } else {
                    io::ErrorKind::Other
                };
                return Err(io::Error::new(
                    kind,
                    format!("opendkim exited during start-up ({status}): {log}"),
                ));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "opendkim did not listen on {} within {START_TIMEOUT:?}: {}",
                        self.socket,
                        self.stderr_log()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The temporary directory holding opendkim.conf, KeyTable, SigningTable, unbound.conf and
    /// the captured stdout/stderr.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The generated configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("opendkim.conf")
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr_log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(self.dir.path().join("stderr.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Whether the daemon is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Opendkim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a milter did with one message, as observed by miltertest.
#[derive(Clone, Debug, Default)]
pub struct MilterOutcome {
    /// The end-of-message reply letter: 'a' accept, 'c' continue, 'r' reject, 't' tempfail,
    /// 'd' discard, 'y' reply code.
    pub reply: char,
    /// Headers the milter added at end of message, (name, value) with folded lines joined by
    /// "\n", in the order of the requested names.
    pub added_headers: Vec<(String, String)>,
    /// miltertest's full output.
    pub raw_output: String,
}

impl MilterOutcome {
    /// Values of the added headers called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.added_headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The message as the MTA would deliver it: added headers prepended (CRLF line endings).
    pub fn apply_to(&self, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in &self.added_headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.trim_start().replace('\n', "\r\n").as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(message);
        out
    }
}

/// Sends `message` through the milter at `socket` with Debian's miltertest
/// (`tests/judges/miltertest_message.lua`), reporting the SMTP client as `client_ip`, and
/// returns the reply and the DKIM-Signature / Authentication-Results headers it added.
/// This is an independent milter client, for checking OpenDKIM without our own client crate.
pub fn miltertest_message(
    socket: &str,
    message: &[u8],
    client_ip: &str,
) -> io::Result<MilterOutcome> {
    let dir = tempfile::tempdir()?;
    let msg_path = dir.path().join("message.eml");
    fs::write(&msg_path, message)?;
    let mut cmd = Command::new(MILTERTEST);
    cmd.arg("-s")
        .arg(crate::judges::judges_dir().join("miltertest_message.lua"))
        .env("MT_SOCKET", socket)
        .env("MT_MESSAGE", &msg_path)
        .env("MT_CLIENT_IP", client_ip)
        .env("MT_HEADERS", "DKIM-Signature:Authentication-Results");
    let out = crate::judges::run_bounded(cmd, b"", Duration::from_secs(60))?;
    let raw = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "miltertest failed ({}): {raw}",
            out.status
        )));
    }
    let mut outcome = MilterOutcome {
        raw_output: raw.clone(),
        ..Default::default()
    };
    for line in raw.lines() {
        let fields: Vec<&str> = line.splitn(4, '\t').collect();
        match fields.as_slice() {
            ["REPLY", r] => outcome.reply = r.chars().next().unwrap_or('?'),
            ["HEADER", name, _idx, value] => outcome
                .added_headers
                .push(((*name).to_owned(), value.replace("\\n", "\n"))),
            _ => {}
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{TestDns, Zone};
    use crate::judges::{self, require_judge};
    use crate::keys::TestKey;

    const MESSAGE: &[u8] = b"From: Alice <alice@example.com>\r\n\
To: Bob <bob@example.net>\r\n\
Subject: signed by OpenDKIM\r\n\
Date: Tue, 25 Nov 2025 12:00:00 +0000\r\n\
Message-ID: <opendkim-test@example.com>\r\n\
\r\n\
Hello Bob,\r\n\
\r\n\
this body went through the real OpenDKIM.\r\n";

    #[test]
    fn signer_listens_and_stops() {
        if !require_judge("opendkim") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let key = TestKey::rsa(2048);
        let path = key.write_pem(dir.path(), "sel.pem", true);
        let mut od =
            Opendkim::start_signer("example.com", "sel", &path, "relaxed/relaxed").unwrap();
        assert!(od.is_running());
        assert!(od.socket.starts_with("inet:") && od.socket.ends_with("@127.0.0.1"));
        TcpStream::connect(od.addr).unwrap();
        let addr = od.addr;
        drop(od);
        assert!(
            TcpStream::connect(addr).is_err(),
            "port must be closed after drop"
        );
    }

    #[test]
    fn bad_config_is_reported() {
        if !require_judge("opendkim") {
            return;
        }
        let err = Opendkim::start(None, "relaxed/relaxed", None, &[("Mode", "bogus")])
            .err()
            .expect("a bad Mode must not start");
        assert!(err.to_string().contains("opendkim"), "{err}");
    }

    /// OpenDKIM signs (RSA and Ed25519); the independent judges and an OpenDKIM verifier, all
    /// reading keys from the test DNS server, accept the signature, and reject a tampered body.
    #[test]
    fn opendkim_signs_and_judges_and_opendkim_verify() {
        if !require_judge("opendkim")
            || !require_judge("miltertest")
            || !require_judge("dkimpy")
            || !require_judge("mail-dkim")
        {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let rsa = TestKey::rsa(2048);
        let ed = TestKey::ed25519();
        let zone = Zone::new()
            .txt("rsa._domainkey.example.com", &rsa.dns_record())
            .txt("ed._domainkey.example.com", &ed.dns_record());
        let dns = TestDns::start_blocking(&zone).unwrap();
        let verifier = Opendkim::start_verifier(dns.addr()).unwrap();

        for (selector, key) in [("rsa", &rsa), ("ed", &ed)] {
            let path = key.write_pem(dir.path(), &format!("{selector}.pem"), true);
            let signer =
                Opendkim::start_signer("example.com", selector, &path, "relaxed/relaxed").unwrap();
            let out = miltertest_message(&signer.socket, MESSAGE, "127.0.0.1").unwrap();
            let sigs = out.header("DKIM-Signature");
            assert_eq!(sigs.len(), 1, "{}", out.raw_output);
            assert!(sigs[0].contains(&format!("s={selector};")), "{}", sigs[0]);
            let signed = out.apply_to(MESSAGE);

            let v = judges::dkimpy_verify(&signed, dns.addr()).unwrap();
            assert_eq!(v.results, ["pass"], "{}", v.raw_output);
            // Debian 12's Mail::DKIM predates Ed25519 support.
            let expected = if key.kind == crate::keys::KeyKind::Ed25519
                && !judges::judge_supports_ed25519("mail-dkim")
            {
                "invalid"
            } else {
                "pass"
            };
            let v = judges::mail_dkim_verify(&signed, dns.addr()).unwrap();
            assert_eq!(v.results, [expected], "{}", v.raw_output);

            let checked = miltertest_message(&verifier.socket, &signed, "192.0.2.1").unwrap();
            let ar = checked.header("Authentication-Results");
            assert_eq!(ar.len(), 1, "{}", checked.raw_output);
            assert!(ar[0].contains("dkim=pass"), "{}", ar[0]);

            let tampered = String::from_utf8_lossy(&signed)
                .replace("Hello Bob", "Hello Eve")
                .into_bytes();
            let checked = miltertest_message(&verifier.socket, &tampered, "192.0.2.1").unwrap();
            let ar = checked.header("Authentication-Results");
            assert!(
                ar.len() == 1 && ar[0].contains("dkim=fail"),
                "{}",
                checked.raw_output
            );
            let v = judges::dkimpy_verify(&tampered, dns.addr()).unwrap();
            assert_eq!(v.results, ["fail"], "{}", v.raw_output);
        }
    }

    /// Mail from a host that is not internal is verified, not signed.
    #[test]
    fn signer_does_not_sign_external_clients() {
        if !require_judge("opendkim") || !require_judge("miltertest") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let key = TestKey::rsa(2048);
        let path = key.write_pem(dir.path(), "sel.pem", false);
        let signer = Opendkim::start_signer("example.com", "sel", &path, "simple/simple").unwrap();
        let out = miltertest_message(&signer.socket, MESSAGE, "192.0.2.7").unwrap();
        assert!(
            out.header("DKIM-Signature").is_empty(),
            "{}",
            out.raw_output
        );
    }

    /// The same signer driven by our own milter client (crates/milter-client) the way Postfix
    /// talks to a milter: OpenDKIM's signature, applied as Postfix would, passes both judges.
    #[tokio::test]
    async fn opendkim_signs_through_milter_client() {
        if !require_judge("opendkim") || !require_judge("dkimpy") || !require_judge("mail-dkim") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let key = TestKey::rsa(2048);
        let path = key.write_pem(dir.path(), "mc.pem", true);
        let zone = Zone::new().txt("mc._domainkey.example.com", &key.dns_record());
        let dns = TestDns::start(&zone).await.unwrap();
        let signer = Opendkim::start_signer("example.com", "mc", &path, "relaxed/relaxed").unwrap();

        let tx = milter_client::Transaction::from_message(MESSAGE)
            .with_client("localhost", Some("127.0.0.1:40000".parse().unwrap()))
            .with_mail_from("alice@example.com");
        let ep = milter_client::Endpoint::Tcp(signer.addr);
        let outcome = milter_client::run(&ep, &tx).await.unwrap();
        let headers = milter_client::apply_modifications(
            None,
            &tx.headers,
            &outcome.modifications,
            outcome.leadspc(),
        );
        assert!(
            headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("DKIM-Signature")),
            "{outcome:?}"
        );
        let signed = milter_client::render(&headers, &tx.body);
        let v = judges::dkimpy_verify(&signed, dns.addr()).unwrap();
        assert_eq!(v.results, ["pass"], "{}", v.raw_output);
        let v = judges::mail_dkim_verify(&signed, dns.addr()).unwrap();
        assert_eq!(v.results, ["pass"], "{}", v.raw_output);
    }

    #[test]
    fn detects_key_algorithm() {
        assert_eq!(
            signature_algorithm(&TestKey::ed25519().pkcs8_pem),
            "ed25519-sha256"
        );
        let rsa = TestKey::rsa(2048);
        assert_eq!(signature_algorithm(&rsa.pkcs8_pem), "rsa-sha256");
        assert_eq!(
            signature_algorithm(rsa.pkcs1_pem.as_deref().unwrap()),
            "rsa-sha256"
        );
    }
}
