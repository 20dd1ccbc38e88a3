//! The dkim-milter binary as an operator runs it: configuration checks, the legacy
//! opendkim.conf format, reload, graceful shutdown, socket permissions, privilege drop, JSON
//! logs and metrics. Each test starts the real binary on a loopback or unix socket.

use dkim_policy::keygen::{generate, KeyKind};
use milter_client::{run, Endpoint, MilterClient, Modification, Reply, Transaction};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::binary::{
    check_config, check_fails_with, check_then_convert, repo_root, two_key_dir,
    verify_systemd_unit, Daemon,
};

const BIN: &str = env!("CARGO_BIN_EXE_dkim-milter");

/// Two keys and tables signing with `one` (see [`two_key_dir`]).
fn keys_dir() -> tempfile::TempDir {
    two_key_dir()
}

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("dkim-milter.toml");
    std::fs::write(
        &path,
        format!(
            "socket = \"inet:0@127.0.0.1\"\nkey_table = \"file:KeyTable\"\nsigning_table = \"refile:SigningTable\"\n{extra}\n\
             [resolver]\nnameservers = [\"127.0.0.1:9\"]\ntimeout = 0.5\nattempts = 1\n"
        ),
    )
    .unwrap();
    path
}

fn message() -> Vec<u8> {
    b"From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\nDate: Wed, 25 Nov 2026 12:00:00 +0000\r\n\r\nbody\r\n".to_vec()
}

fn internal_tx() -> Transaction {
    Transaction::from_message(&message())
        .with_client("localhost", Some("127.0.0.1:40000".parse().unwrap()))
}

fn selector_signed(mods: &[Modification]) -> Option<String> {
    mods.iter().find_map(|m| match m {
        Modification::InsertHeader { name, value, .. } if name == "DKIM-Signature" => value
            .split(';')
            .find_map(|t| t.trim().strip_prefix("s=").map(str::to_string)),
        _ => None,
    })
}

#[test]
fn shipped_example_passes_check() {
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc");
    std::fs::create_dir_all(etc.join("keys")).unwrap();
    std::fs::copy(
        repo_root().join("etc/dkim-milter.toml"),
        etc.join("dkim-milter.toml"),
    )
    .unwrap();
    for f in ["KeyTable", "SigningTable"] {
        std::fs::copy(
            repo_root().join("etc/keys").join(f),
            etc.join("keys").join(f),
        )
        .unwrap();
    }
    let out = check_config(BIN, &etc.join("dkim-milter.toml"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("configuration OK (1 key(s), 1 signing rule(s))"));
    // The example creates its key on first use, private to its owner.
    use std::os::unix::fs::PermissionsExt;
    let key = etc.join("keys/example.com.mail.private");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("mail._domainkey.example.com. IN TXT"));
}

#[test]
fn check_names_a_bad_keytable_line_and_exits_78() {
    let dir = keys_dir();
    std::fs::write(
        dir.path().join("KeyTable"),
        "one example.com:one:one.pem\nbroken example.com-no-selector\n",
    )
    .unwrap();
    let cfg = write_config(dir.path(), "");
    let out = check_config(BIN, &cfg);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("KeyTable:2: key 'broken': expected 'domain:selector:keyfile'"),
        "{err}"
    );
    let out = Command::new(BIN).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn opendkim_conf_loads_and_converts_to_equivalent_toml() {
    let dir = keys_dir();
    std::fs::write(
        dir.path().join("TrustedHosts"),
        "127.0.0.1\n::1\n192.0.2.0/24\n",
    )
    .unwrap();
    let conf = dir.path().join("opendkim.conf");
    std::fs::write(
        &conf,
        format!(
            "# Debian-style opendkim.conf\nSyslog\t\t\tno\nSyslogSuccess\t\tyes\nCanonicalization\trelaxed/simple\n\
             Mode\t\t\tsv\nOversignHeaders\t\tFrom\nUMask\t\t\t007\nSocket\t\t\tinet:0@127.0.0.1\n\
             KeyTable\t\t{d}/KeyTable\nSigningTable\t\trefile:{d}/SigningTable\nInternalHosts\t\trefile:{d}/TrustedHosts\n\
             TrustAnchorFile\t\t/usr/share/dns/root.key\nOn-BadSignature\t\treject\nNameservers\t127.0.0.1\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let toml_path = check_then_convert(BIN, &conf, "TrustAnchorFile is not supported");
    let a = dkim_policy::config::Config::load(&conf).unwrap();
    let b = dkim_policy::config::Config::load(&toml_path).unwrap();
    assert_eq!(a.signing_table, b.signing_table);
    assert_eq!(a.internal_hosts, b.internal_hosts);
    assert_eq!(a.actions, b.actions);
    assert_eq!(a.service.socket_mode, Some(0o770));
    assert_eq!(
        format!("{:?}", (a.header_canon, a.body_canon)),
        format!("{:?}", (b.header_canon, b.body_canon))
    );
    assert_eq!(
        (a.max_signatures_to_verify, b.max_signatures_to_verify),
        (3, 3),
        "OpenDKIM's default"
    );
    assert_eq!(a.resolver, b.resolver);
    let mut ka: Vec<_> = a.keys.keys().collect();
    let mut kb: Vec<_> = b.keys.keys().collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb);
    // An unknown option is an error with file and line.
    check_fails_with(
        BIN,
        &conf,
        "Mode sv\nNoSuchOption 1\n",
        "opendkim.conf:2: key 'NoSuchOption': unrecognized parameter",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_to_new_messages_only_and_bad_reload_keeps_old() {
    let dir = keys_dir();
    let cfg = write_config(dir.path(), "");
    let d = Daemon::start(BIN, &cfg);
    let ep = d.endpoint();
    let out = run(&ep, &internal_tx()).await.unwrap();
    assert_eq!(selector_signed(&out.modifications).as_deref(), Some("one"));

    // A session in flight across the reload keeps the configuration it started with.
    let tx = internal_tx();
    let mut c = MilterClient::connect(&ep).await.unwrap();
    c.negotiate(tx.offer_actions, tx.offer_protocol)
        .await
        .unwrap();
    c.connect_info("localhost", Some("127.0.0.1:40000".parse().unwrap()))
        .await
        .unwrap();
    c.mail(&["<a@example.com>"]).await.unwrap();
    c.rcpt(&["<b@example.org>"]).await.unwrap();
    for (n, v) in &tx.headers {
        c.header(n, v).await.unwrap();
    }

    std::fs::write(dir.path().join("SigningTable"), "*@example.com two\n").unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_for("configuration reloaded from");

    c.eoh().await.unwrap();
    c.body(&tx.body).await.unwrap();
    let eom = c.eom().await.unwrap();
    assert_eq!(
        selector_signed(&eom.modifications).as_deref(),
        Some("one"),
        "in-flight session keeps its config"
    );
    let out = run(&ep, &internal_tx()).await.unwrap();
    assert_eq!(
        selector_signed(&out.modifications).as_deref(),
        Some("two"),
        "new session uses the new config"
    );

    // A broken reload (missing key file) keeps the running configuration.
    std::fs::write(
        dir.path().join("KeyTable"),
        "one example.com:one:one.pem\ntwo example.com:two:missing.pem\n",
    )
    .unwrap();
    d.signal(nix::sys::signal::Signal::SIGUSR1);
    let line = d.wait_for("reload failed, keeping the running configuration");
    assert!(line.contains("missing.pem"), "{line}");
    let out = run(&ep, &internal_tx()).await.unwrap();
    assert_eq!(selector_signed(&out.modifications).as_deref(), Some("two"));

    // Socket changes need a restart and say so.
    std::fs::write(
        dir.path().join("KeyTable"),
        "one example.com:one:one.pem\ntwo example.com:two:two.pem\n",
    )
    .unwrap();
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("inet:0@127.0.0.1", "inet:1@127.0.0.1"),
    )
    .unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_for("socket changed; this needs a restart");
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.count("configuration reloaded from") < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.count("configuration reloaded from"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_session_in_flight_finish() {
    let dir = keys_dir();
    let cfg = write_config(dir.path(), "[limits]\nshutdown_grace = 10");
    let mut d = Daemon::start(BIN, &cfg);
    let ep = d.endpoint();
    let tx = internal_tx();
    let mut c = MilterClient::connect(&ep).await.unwrap();
    c.negotiate(tx.offer_actions, tx.offer_protocol)
        .await
        .unwrap();
    c.connect_info("localhost", Some("127.0.0.1:40000".parse().unwrap()))
        .await
        .unwrap();
    c.mail(&["<a@example.com>"]).await.unwrap();
    c.rcpt(&["<b@example.org>"]).await.unwrap();
    for (n, v) in &tx.headers {
        c.header(n, v).await.unwrap();
    }
    d.signal(nix::sys::signal::Signal::SIGTERM);
    d.wait_for("shutting down: no new connections");
    // New connections are refused while the open one finishes.
    assert!(
        MilterClient::connect(&ep).await.is_err(),
        "listener must be closed"
    );
    c.eoh().await.unwrap();
    c.body(&tx.body).await.unwrap();
    let eom = c.eom().await.unwrap();
    assert_eq!(eom.reply, Reply::Accept);
    assert_eq!(selector_signed(&eom.modifications).as_deref(), Some("one"));
    c.quit().await.unwrap();
    assert_eq!(d.wait_exit(), 0);
    d.wait_for("terminating with status 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_mode_pid_file_and_privilege_drop() {
    let dir = keys_dir();
    let sock = dir.path().join("run/dkim.sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    if nix::unistd::Uid::effective().is_root() {
        // As with systemd's RuntimeDirectory: the run directory belongs to the daemon's user, so
        // it can remove its socket and pid file after dropping privileges.
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        nix::unistd::chown(sock.parent().unwrap(), Some(nobody.uid), Some(nobody.gid)).unwrap();
    }
    let pid = dir.path().join("run/dkim.pid");
    let running_as_root = nix::unistd::Uid::effective().is_root();
    let user = if running_as_root {
        "user = \"nobody\"\n"
    } else {
        ""
    };
    let cfg = write_config(
        dir.path(),
        &format!(
            "socket_mode = \"0660\"\npid_file = \"{}\"\n{user}",
            pid.display()
        ),
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("inet:0@127.0.0.1", &format!("unix:{}", sock.display()));
    std::fs::write(&cfg, text).unwrap();
    // nobody must be able to traverse to the socket's directory.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut d = Daemon::start(BIN, &cfg);
    d.wait_for("listening on unix:");
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let pid_text = std::fs::read_to_string(&pid).unwrap();
    assert_eq!(pid_text.trim(), d.pid().to_string());
    if running_as_root {
        let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
        let uid_line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .to_string();
        let nobody = nix::unistd::User::from_name("nobody")
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        assert!(
            uid_line
                .split_whitespace()
                .skip(1)
                .all(|u| u == nobody.to_string()),
            "{uid_line}"
        );
    } else {
        eprintln!("!!!!! not root: the privilege drop part of this test did not run !!!!!");
    }
    let out = run(&Endpoint::Unix(sock.clone()), &internal_tx())
        .await
        .unwrap();
    assert_eq!(selector_signed(&out.modifications).as_deref(), Some("one"));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0);
    assert!(!sock.exists(), "socket removed on exit");
    assert!(!pid.exists(), "pid file removed on exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_metrics() {
    let dir = keys_dir();
    let cfg = write_config(
        dir.path(),
        "metrics_listen = \"127.0.0.1:0\"\n[log]\ndestination = \"json\"",
    );
    let d = Daemon::start(BIN, &cfg);
    let metrics_line = d.wait_for("metrics on http://");
    let addr = metrics_line
        .split("http://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let fetch = |addr: String| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body
    };
    let before = fetch(addr.clone()).await;
    assert!(
        !before.contains("authmilter_signatures_added_total{"),
        "{before}"
    );
    let ep = d.endpoint();
    let mut tx = internal_tx();
    tx.eom_macros.push(("i".into(), "QJSON1".into()));
    run(&ep, &tx).await.unwrap();
    let after = fetch(addr).await;
    assert!(
        after.contains("authmilter_messages_total{action=\"accept\"} 1"),
        "{after}"
    );
    assert!(after.contains("authmilter_signatures_added_total{domain=\"example.com\",selector=\"one\",algorithm=\"ed25519-sha256\"} 1"), "{after}");
    d.wait_for("QJSON1");
    let lines = d.lines();
    let mut verdicts = 0;
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"));
        if v["target"] == "verdict" {
            verdicts += 1;
            assert_eq!(v["queue_id"], "QJSON1");
            assert_eq!(v["action"], "accept");
            assert!(
                v["signatures_added"]
                    .as_str()
                    .unwrap()
                    .contains("d=example.com s=one a=ed25519-sha256"),
                "{v}"
            );
        }
    }
    assert_eq!(verdicts, 1, "{lines:?}");
}

#[test]
fn systemd_unit_verifies() {
    verify_systemd_unit("dkim-milter", BIN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_with_wrong_permissions_then_sighup_keeps_the_old_config() {
    use std::os::unix::fs::PermissionsExt;
    let dir = keys_dir();
    let cfg = write_config(dir.path(), "");
    let d = Daemon::start(BIN, &cfg);
    let ep = d.endpoint();
    assert_eq!(
        selector_signed(&run(&ep, &internal_tx()).await.unwrap().modifications).as_deref(),
        Some("one")
    );
    // The key is replaced by one anybody can read, and the tables now point at it.
    let key = dir.path().join("one.pem");
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&key, generate(KeyKind::Ed25519).unwrap().private_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let line = d.wait_for("reload failed, keeping the running configuration");
    assert!(
        line.contains("mode 0644") && line.contains("one.pem"),
        "{line}"
    );
    // Still signing with the key loaded before.
    assert_eq!(
        selector_signed(&run(&ep, &internal_tx()).await.unwrap().modifications).as_deref(),
        Some("one")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_disconnected_after_the_idle_timeout() {
    use tokio::io::AsyncReadExt;
    let dir = keys_dir();
    let cfg = write_config(dir.path(), "[limits]\nidle_timeout = 1");
    let d = Daemon::start(BIN, &cfg);
    let ep = d.endpoint();
    let Endpoint::Tcp(addr) = ep.clone() else {
        panic!("tcp expected")
    };
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the daemon must close a silent connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a reply");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout: {:?}",
        started.elapsed()
    );
    // And the daemon still serves.
    let out = run(&ep, &internal_tx()).await.unwrap();
    assert_eq!(selector_signed(&out.modifications).as_deref(), Some("one"));
}

/// A SIGTERM that arrives as soon as the socket exists (before the daemon has built its policy
/// and logged that it listens) is a graceful stop with status 0, not death by the signal's
/// default action (status 143, as an early `systemctl stop` saw before the handlers were
/// installed ahead of the bind).
#[test]
fn sigterm_right_after_bind_is_a_graceful_stop() {
    let dir = keys_dir();
    let sock = dir.path().join("early.sock");
    let cfg = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("inet:0@127.0.0.1", &format!("unix:{}", sock.display()));
    std::fs::write(&cfg, text).unwrap();
    let mut d = Daemon::start(BIN, &cfg);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "socket never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(), 0, "{:?}", d.lines());
}
