//! The dmarc-milter binary as an operator runs it: the shipped example, the legacy
//! opendmarc.conf format and its conversion, and the systemd unit. (Reload, shutdown, privilege
//! drop and metrics come from the shared chassis lifecycle and are exercised in dkim-milter's
//! lifecycle tests with the same code.)

use testkit::binary::{
    check_config, check_fails_with, check_then_convert, repo_root, verify_systemd_unit,
};

const BIN: &str = env!("CARGO_BIN_EXE_dmarc-milter");

#[test]
fn shipped_example_passes_check() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("dmarc-milter.toml");
    std::fs::copy(repo_root().join("etc/dmarc-milter.toml"), &cfg).unwrap();
    let out = check_config(BIN, &cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("configuration OK (DKIM verified here; history "),
        "{stdout}"
    );
}

#[test]
fn opendmarc_conf_loads_and_converts_to_equivalent_toml() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ignore.hosts"),
        "127.0.0.1\n::1\n10.0.0.0/8\n",
    )
    .unwrap();
    let conf = dir.path().join("opendmarc.conf");
    std::fs::write(
        &conf,
        format!(
            "# Debian-style opendmarc.conf\nPidFile {d}/opendmarc.pid\nPublicSuffixList /usr/share/publicsuffix\n\
             Socket inet:8893@127.0.0.1\nSyslog false\nUMask 0002\nAuthservID mx.example.net\n\
             TrustedAuthservIDs mx.example.net\nIgnoreHosts {d}/ignore.hosts\nIgnoreAuthenticatedClients true\n\
             RejectFailures true\nSPFSelfValidate true\nRequiredHeaders true\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let toml_path = check_then_convert(BIN, &conf, "PublicSuffixList is not supported");
    let a = dmarc_policy::config::Config::load(&conf).unwrap();
    let b = dmarc_policy::config::Config::load(&toml_path).unwrap();
    assert_eq!(a.trusted_authserv_ids, vec!["mx.example.net".to_string()]);
    assert_eq!(a.trusted_authserv_ids, b.trusted_authserv_ids);
    assert_eq!(a.ignore_hosts, b.ignore_hosts);
    assert!(a.ignore_hosts.matches_ip("10.1.2.3".parse().unwrap()));
    assert_eq!(
        (
            a.reject_failures,
            a.required_headers,
            a.ignore_authenticated_clients
        ),
        (true, true, true)
    );
    assert_eq!(
        (
            a.reject_failures,
            a.required_headers,
            a.ignore_authenticated_clients,
            a.spf_self_validate
        ),
        (
            b.reject_failures,
            b.required_headers,
            b.ignore_authenticated_clients,
            b.spf_self_validate
        )
    );
    assert_eq!(a.service, b.service);
    assert_eq!(a.service.socket_mode, Some(0o775));
    check_fails_with(
        BIN,
        &conf,
        "Socket inet:8893@127.0.0.1\nNoSuchOption yes\n",
        "opendmarc.conf:2: key 'NoSuchOption': unrecognized parameter",
    );
}

#[test]
fn systemd_unit_verifies() {
    verify_systemd_unit("dmarc-milter", BIN);
}
