//! The `authmilter` command end to end against a real DNS server on loopback (testkit's
//! `TestDns`): a correct domain, one broken variant per finding, and the key life cycle
//! genkey -> publish -> testkey -> sign -> verify.

use chassis::mailauth::common::HeaderWriter;
use chassis::mailauth::dkim::DkimSigner;
use chassis::mailauth::{AuthenticatedMessage, DkimResult};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use testkit::dns::{TestDns, Zone};

/// Runs the built binary; returns (exit status, stdout, stderr).
fn authmilter(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_authmilter"))
        .args(args)
        .output()
        .expect("run authmilter");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `authmilter --json` with the test DNS server as resolver; returns (exit, parsed output).
fn json(dns: SocketAddr, args: &[&str]) -> (i32, Value) {
    let ns = dns.to_string();
    let mut all = vec!["--nameserver", ns.as_str(), "--timeout", "2", "--json"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = authmilter(&all);
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {stderr}"));
    eprintln!("authmilter {}:\n{stdout}", args.join(" "));
    (code, v)
}

/// The findings of one check.
fn findings<'a>(report: &'a Value, check: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .expect("findings array")
        .iter()
        .filter(|f| f["check"] == check)
        .collect()
}

/// The status of the only finding of `check` (panics when there is not exactly one).
fn status(report: &Value, check: &str) -> String {
    let f = findings(report, check);
    assert_eq!(f.len(), 1, "expected one {check} finding in {report:#}");
    f[0]["status"].as_str().unwrap().to_string()
}

/// Statuses of a check's findings by subject.
fn statuses(report: &Value, check: &str) -> Vec<(String, String)> {
    findings(report, check)
        .iter()
        .map(|f| {
            (
                f["subject"].as_str().unwrap().to_string(),
                f["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Zone-file record -> TXT value: the quoted strings, joined.
fn txt_value_of(zone_record: &str) -> String {
    zone_record.split('"').skip(1).step_by(2).collect()
}

/// How a test domain deviates from the correct setup.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Good,
    Spf11Lookups,
    SpfVoid,
    SpfPlusAll,
    SpfQuestionAll,
    SpfMxNotListed,
    DmarcSyntax,
    DmarcNone,
    MissingPtr,
    CnameMx,
    ExternalRuaUnauthorized,
    NoMtaStsNoTlsRpt,
}

/// A DKIM key record for selector `sel` of every domain (testkey has its own tests).
const ED_RECORD: &str = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

/// Records for `domain` (MX host addresses are 192.0.2.N and 2001:db8::N).
fn domain_zone(domain: &str, n: u8, v: Variant) -> Zone {
    let mx = format!("mx1.{domain}");
    let ip4 = Ipv4Addr::new(192, 0, 2, n);
    let ip6: Ipv6Addr = format!("2001:db8::{n}").parse().unwrap();
    let mut z = Zone::new();
    // MX.
    if v == Variant::CnameMx {
        let alias = format!("mail.{domain}");
        z = z.mx(domain, 10, &alias).cname(&alias, &mx);
    } else {
        z = z.mx(domain, 10, &mx);
    }
    z = z.a(&mx, ip4).aaaa(&mx, ip6).ptr(IpAddr::V6(ip6), &mx);
    if v != Variant::MissingPtr {
        z = z.ptr(IpAddr::V4(ip4), &mx);
    }
    // SPF.
    let spf_include = format!("_spf.{domain}");
    z = z.txt(&spf_include, "v=spf1 ip4:198.51.100.0/24 -all");
    let spf = match v {
        Variant::Spf11Lookups => {
            let mut s = "v=spf1 mx".to_string();
            for i in 1..=10 {
                let inc = format!("i{i}.{domain}");
                z = z.txt(&inc, &format!("v=spf1 ip4:203.0.113.{i} -all"));
                s.push_str(&format!(" include:{inc}"));
            }
            s + " -all"
        }
        Variant::SpfVoid => {
            format!("v=spf1 mx a:gone1.{domain} a:gone2.{domain} a:gone3.{domain} -all")
        }
        Variant::SpfPlusAll => "v=spf1 mx +all".to_string(),
        Variant::SpfQuestionAll => "v=spf1 mx ?all".to_string(),
        Variant::SpfMxNotListed => format!("v=spf1 include:{spf_include} -all"),
        _ => format!("v=spf1 mx include:{spf_include} -all"),
    };
    z = z.txt(domain, &spf);
    // DKIM.
    z = z.txt(&format!("sel._domainkey.{domain}"), ED_RECORD);
    // DMARC.
    let dmarc = match v {
        Variant::DmarcSyntax => "v=DMARC1; p=rejectt; rua=mailto:dmarc@{d}".to_string(),
        Variant::DmarcNone => "v=DMARC1; p=none; rua=mailto:dmarc@{d}".to_string(),
        Variant::ExternalRuaUnauthorized => {
            "v=DMARC1; p=reject; rua=mailto:dmarc@{d},mailto:agg@unauthorized.example".to_string()
        }
        _ => "v=DMARC1; p=reject; rua=mailto:dmarc@{d},mailto:agg@reports.example".to_string(),
    };
    z = z
        .txt(&format!("_dmarc.{domain}"), &dmarc.replace("{d}", domain))
        .txt(
            &format!("{domain}._report._dmarc.reports.example"),
            "v=DMARC1",
        );
    // MTA-STS and TLS-RPT.
    if v != Variant::NoMtaStsNoTlsRpt {
        z = z
            .txt(&format!("_mta-sts.{domain}"), "v=STSv1; id=2024060101")
            .a(&format!("mta-sts.{domain}"), Ipv4Addr::new(192, 0, 2, 200))
            .txt(
                &format!("_smtp._tls.{domain}"),
                &format!("v=TLSRPTv1; rua=mailto:tls-reports@{domain}"),
            );
    }
    z
}

const VARIANTS: &[(&str, Variant)] = &[
    ("good.example", Variant::Good),
    ("spf11.example", Variant::Spf11Lookups),
    ("spfvoid.example", Variant::SpfVoid),
    ("plusall.example", Variant::SpfPlusAll),
    ("questionall.example", Variant::SpfQuestionAll),
    ("mxnotinspf.example", Variant::SpfMxNotListed),
    ("dmarcsyntax.example", Variant::DmarcSyntax),
    ("dmarcnone.example", Variant::DmarcNone),
    ("noptr.example", Variant::MissingPtr),
    ("cnamemx.example", Variant::CnameMx),
    ("extrua.example", Variant::ExternalRuaUnauthorized),
    ("nosts.example", Variant::NoMtaStsNoTlsRpt),
];

fn audit_dns() -> TestDns {
    let mut zone = Zone::new();
    for (i, (d, v)) in VARIANTS.iter().enumerate() {
        zone = zone.merge(&domain_zone(d, 10 + i as u8, *v));
    }
    // DNS trouble and a dangling include.
    let zone = zone
        .merge(&domain_zone("dnsfail.example", 100, Variant::Good))
        .servfail("_dmarc.dnsfail.example")
        .txt(
            "badinclude2.example",
            "v=spf1 include:nospf.example include:loop.example -all",
        )
        .txt("loop.example", "v=spf1 include:badinclude2.example -all")
        .txt("nospf.example", "hello");
    TestDns::start_blocking(&zone).expect("start test DNS")
}

fn audit(dns: &TestDns, domain: &str) -> (i32, Value) {
    json(dns.addr(), &["audit", domain, "--selector", "sel"])
}

#[test]
fn audit_correct_domain_is_all_ok() {
    let dns = audit_dns();
    let (code, r) = audit(&dns, "good.example");
    assert_eq!(r["command"], "audit");
    assert_eq!(r["target"], "good.example");
    let bad: Vec<&Value> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] != "OK")
        .collect();
    assert!(bad.is_empty(), "not OK: {bad:#?}");
    assert_eq!(
        (code, r["worst"].as_str(), r["exit"].as_u64()),
        (0, Some("OK"), Some(0))
    );
    // Every check ran.
    for check in [
        "mx",
        "mx.address",
        "spf.record",
        "spf.lookups",
        "spf.void",
        "spf.all",
        "dkim.record",
        "dkim.size",
        "dmarc.record",
        "dmarc.policy",
        "mta_sts.record",
        "mta_sts.host",
        "tls_rpt.record",
    ] {
        assert_eq!(status(&r, check), "OK", "{check}");
    }
    // Both MX addresses: PTR, forward-confirmed, and SPF pass.
    let both = vec![
        ("192.0.2.10".to_string(), "OK".to_string()),
        ("2001:db8::10".to_string(), "OK".to_string()),
    ];
    assert_eq!(statuses(&r, "mx.ptr"), both);
    assert_eq!(statuses(&r, "mx.fcrdns"), both);
    assert_eq!(statuses(&r, "spf.mx_pass"), both);
    assert_eq!(
        findings(&r, "spf.lookups")[0]["detail"],
        "2 of 10 DNS-querying terms"
    );
    assert_eq!(findings(&r, "dkim.size")[0]["detail"], "Ed25519 (256 bits)");
    // Internal and authorized external report destinations.
    assert_eq!(
        statuses(&r, "dmarc.rua"),
        vec![
            ("dmarc@good.example".to_string(), "OK".to_string()),
            ("agg@reports.example".to_string(), "OK".to_string()),
        ]
    );
    assert!(findings(&r, "mx.cname").is_empty());
}

#[test]
fn audit_spf_with_11_lookups_fails() {
    let dns = audit_dns();
    let (code, r) = audit(&dns, "spf11.example");
    assert_eq!(status(&r, "spf.lookups"), "FAIL");
    assert_eq!(
        findings(&r, "spf.lookups")[0]["detail"],
        "11 DNS-querying terms, over the limit of 10 (permerror)"
    );
    assert_eq!((code, r["worst"].as_str()), (2, Some("FAIL")));
}

#[test]
fn audit_spf_void_lookups_fail() {
    let dns = audit_dns();
    let (code, r) = audit(&dns, "spfvoid.example");
    assert_eq!(status(&r, "spf.void"), "FAIL");
    assert_eq!(status(&r, "spf.lookups"), "OK");
    assert_eq!(code, 2);
}

#[test]
fn audit_spf_all_qualifiers() {
    let dns = audit_dns();
    let (code, r) = audit(&dns, "plusall.example");
    assert_eq!(status(&r, "spf.all"), "FAIL");
    assert!(findings(&r, "spf.all")[0]["advice"]
        .as_str()
        .unwrap()
        .contains("-all"));
    assert_eq!(code, 2);
    let (code, r) = audit(&dns, "questionall.example");
    assert_eq!(status(&r, "spf.all"), "WARN");
    assert_eq!((code, r["worst"].as_str()), (1, Some("WARN")));
}

#[test]
fn audit_mx_addresses_not_in_spf_warn() {
    let dns = audit_dns();
    let (code, r) = audit(&dns, "mxnotinspf.example");
    let warn = vec![
        ("192.0.2.15".to_string(), "WARN".to_string()),
        ("2001:db8::15".to_string(), "WARN".to_string()),
    ];
    assert_eq!(statuses(&r, "spf.mx_pass"), warn);
    assert_eq!(code, 1);
}

#[test]
fn audit_dmarc_syntax_error_and_p_none() {
    let dns = audit_dns();
    let (code, r) = audit(&dns, "dmarcsyntax.example");
    assert_eq!(status(&r, "dmarc.record"), "FAIL");
    assert!(findings(&r, "dmarc.record")[0]["detail"]
        .as_str()
        .unwrap()
        .contains("bad value for p=: 'rejectt'"));
    assert!(findings(&r, "dmarc.policy").is_empty());
    assert_eq!(code, 2);
    let (code, r) = audit(&dns, "dmarcnone.example");
    assert_eq!(status(&r, "dmarc.policy"), "WARN");
    assert_eq!(code, 1);
}

#[test]
fn audit_missing_ptr_fails() {
    let dns = audit_dns();
    let (code, r) = audit(&dns, "noptr.example");
    assert_eq!(
        statuses(&r, "mx.ptr"),
        vec![
            ("192.0.2.18".to_string(), "FAIL".to_string()),
            ("2001:db8::18".to_string(), "OK".to_string()),
        ]
    );
    // No PTR, nothing to confirm: only the IPv6 address has an FCrDNS finding.
    assert_eq!(
        statuses(&r, "mx.fcrdns"),
        vec![("2001:db8::18".to_string(), "OK".to_string())]
    );
    assert_eq!(code, 2);
}

#[test]
fn audit_cnamed_mx_warns() {
    let dns = audit_dns();
    let (code, r) = audit(&dns, "cnamemx.example");
    let f = findings(&r, "mx.cname");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["status"], "WARN");
    assert_eq!(f[0]["subject"], "mail.cnamemx.example");
    assert_eq!(
        f[0]["detail"],
        "the MX target is an alias (CNAME to mx1.cnamemx.example)"
    );
    // The alias still resolves, so delivery works.
    assert_eq!(status(&r, "mx.address"), "OK");
    assert_eq!((code, r["worst"].as_str()), (1, Some("WARN")));
}

#[test]
fn audit_external_rua_without_authorization_fails() {
    let dns = audit_dns();
    let (code, r) = audit(&dns, "extrua.example");
    assert_eq!(
        statuses(&r, "dmarc.rua"),
        vec![
            ("dmarc@extrua.example".to_string(), "OK".to_string()),
            ("agg@unauthorized.example".to_string(), "FAIL".to_string()),
        ]
    );
    assert!(findings(&r, "dmarc.rua")[1]["detail"]
        .as_str()
        .unwrap()
        .contains("extrua.example._report._dmarc.unauthorized.example"));
    assert_eq!(code, 2);
}

#[test]
fn audit_missing_mta_sts_and_tls_rpt_warn() {
    let dns = audit_dns();
    let (code, r) = audit(&dns, "nosts.example");
    assert_eq!(status(&r, "mta_sts.record"), "WARN");
    assert_eq!(status(&r, "tls_rpt.record"), "WARN");
    assert!(findings(&r, "mta_sts.host").is_empty());
    assert_eq!(code, 1);
}

#[test]
fn audit_domain_without_any_records_fails_everywhere() {
    let dns = audit_dns();
    let (code, r) = audit(&dns, "nothing.example");
    for check in ["mx", "spf.record", "dkim.record", "dmarc.record"] {
        assert_eq!(status(&r, check), "FAIL", "{check}");
    }
    assert_eq!(code, 2);
}

#[test]
fn audit_lookup_errors_are_not_missing_records() {
    let dns = audit_dns();
    let (code, r) = audit(&dns, "dnsfail.example");
    assert_eq!(status(&r, "dmarc.record"), "FAIL");
    let detail = findings(&r, "dmarc.record")[0]["detail"].as_str().unwrap();
    assert!(detail.starts_with("lookup failed"), "{detail}");
    assert_eq!(status(&r, "spf.record"), "OK");
    assert_eq!(code, 2);
}

#[test]
fn audit_spf_include_without_record_and_loop() {
    let dns = audit_dns();
    let (code, r) = audit(&dns, "badinclude2.example");
    assert_eq!(
        statuses(&r, "spf.include"),
        vec![
            ("nospf.example".to_string(), "FAIL".to_string()),
            ("badinclude2.example".to_string(), "FAIL".to_string()),
        ]
    );
    assert!(findings(&r, "spf.include")[1]["detail"]
        .as_str()
        .unwrap()
        .contains("loops back"));
    // include:nospf.example found nothing: a void lookup.
    assert_eq!(status(&r, "spf.void"), "WARN");
    assert_eq!(code, 2);
}

#[test]
fn audit_human_output() {
    let dns = audit_dns();
    let ns = dns.addr().to_string();
    let (code, out, _) = authmilter(&["--nameserver", &ns, "audit", "cnamemx.example"]);
    eprintln!("{out}");
    assert_eq!(code, 1);
    assert!(out.starts_with(&format!("audit cnamemx.example (resolver: {ns})\n")));
    assert!(out.contains("WARN  mx.cname        mail.cnamemx.example: the MX target is an alias"));
    assert!(out.contains("-> point the MX record at the canonical name mx1.cnamemx.example"));
    assert!(out.ends_with("exit 1)\n"));
}

/// genkey through the binary; returns (private key path, TXT value).
fn genkey(dir: &Path, domain: &str, selector: &str, extra: &[&str]) -> (String, String) {
    let out = dir.join(format!("{selector}.private"));
    let out_s = out.to_str().unwrap();
    let mut args = vec![
        "--json",
        "genkey",
        "--domain",
        domain,
        "--selector",
        selector,
        "--out",
        out_s,
    ];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = authmilter(&args);
    assert_eq!(code, 0, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v["key_table"],
        format!("{selector}._domainkey.{domain} {domain}:{selector}:{out_s}")
    );
    assert_eq!(
        v["signing_table"],
        format!("*@{domain} {selector}._domainkey.{domain}")
    );
    let zone_record = v["zone_record"].as_str().unwrap();
    assert!(zone_record
        .split('"')
        .skip(1)
        .step_by(2)
        .all(|s| s.len() <= 255));
    assert_eq!(txt_value_of(zone_record), v["txt_value"].as_str().unwrap());
    (
        out_s.to_string(),
        v["txt_value"].as_str().unwrap().to_string(),
    )
}

/// Signs a message with the key file (loaded the way dkim-milter loads keys) and verifies it
/// through the test DNS.
async fn sign_and_verify(dns: SocketAddr, key: &str, domain: &str, selector: &str) {
    let key = dkim_policy::keys::load_key_file(Path::new(key), true).unwrap();
    let message = format!(
        "From: Alice <alice@{domain}>\r\nTo: bob@example.net\r\nSubject: genkey test\r\n\
         Date: Mon, 3 Jun 2024 10:00:00 +0000\r\nMessage-ID: <1@{domain}>\r\n\r\nHello.\r\n"
    );
    let sig = DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(message.as_bytes())
        .unwrap();
    let signed = format!("{}{message}", sig.to_header());
    let auth = testkit::dns::authenticator(dns, Duration::from_secs(2), 1);
    let msg = AuthenticatedMessage::parse(signed.as_bytes()).unwrap();
    let results = auth.verify_dkim(&msg).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].result(), &DkimResult::Pass, "{results:?}");
}

#[tokio::test]
async fn genkey_publish_testkey_sign_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa_key, rsa_txt) = genkey(dir.path(), "keys.example", "rsa", &[]);
    let (ed_key, ed_txt) = genkey(dir.path(), "keys.example", "ed", &["--type", "ed25519"]);
    assert!(rsa_txt.starts_with("v=DKIM1; k=rsa; p="));
    assert!(ed_txt.starts_with("v=DKIM1; k=ed25519; p="));
    let dns = TestDns::start(
        &Zone::new()
            .txt("rsa._domainkey.keys.example", &rsa_txt)
            .txt("ed._domainkey.keys.example", &ed_txt),
    )
    .await
    .unwrap();
    for (sel, key, size) in [
        ("rsa", &rsa_key, "RSA 2048 bits"),
        ("ed", &ed_key, "Ed25519 (256 bits)"),
    ] {
        let (code, r) = json(
            dns.addr(),
            &[
                "testkey",
                "--domain",
                "keys.example",
                "--selector",
                sel,
                "--key",
                key,
            ],
        );
        assert_eq!(code, 0, "{r:#}");
        assert_eq!(status(&r, "testkey.match"), "OK");
        assert_eq!(findings(&r, "testkey.size")[0]["detail"], size);
        assert!(findings(&r, "testkey.record")[0]["detail"]
            .as_str()
            .unwrap()
            .contains("DNSSEC unknown"));
        sign_and_verify(dns.addr(), key, "keys.example", sel).await;
    }
    // The key file is never overwritten.
    let (code, _, stderr) = authmilter(&[
        "genkey",
        "--domain",
        "keys.example",
        "--selector",
        "rsa",
        "--out",
        &rsa_key,
    ]);
    assert_eq!(code, 73);
    assert!(stderr.contains("refusing to overwrite"), "{stderr}");
}

#[test]
fn genkey_refuses_rsa_1024_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.private");
    let (code, _, stderr) = authmilter(&[
        "genkey",
        "-d",
        "x.example",
        "-s",
        "s",
        "--bits",
        "1024",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 64);
    assert!(stderr.contains("at least 2048 bits"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn testkey_mismatch_testing_flag_and_missing_record() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa_key, _) = genkey(dir.path(), "keys.example", "rsa", &[]);
    let (ed_key, ed_txt) = genkey(dir.path(), "keys.example", "ed", &["--type", "ed25519"]);
    let (_, other_rsa) = genkey(dir.path(), "keys.example", "other", &[]);
    let (_, other_ed) = genkey(dir.path(), "keys.example", "other-ed", &["-t", "ed25519"]);
    let dns = TestDns::start_blocking(
        &Zone::new()
            // Published keys that belong to other private keys.
            .txt("rsa._domainkey.keys.example", &other_rsa)
            .txt("ed._domainkey.keys.example", &other_ed)
            // The right key, in testing mode.
            .txt("edt._domainkey.keys.example", &format!("{ed_txt}; t=y")),
    )
    .unwrap();
    let run = |sel: &str, key: &str| {
        json(
            dns.addr(),
            &[
                "testkey",
                "--domain",
                "keys.example",
                "--selector",
                sel,
                "--key",
                key,
            ],
        )
    };
    let (code, r) = run("rsa", &rsa_key);
    assert_eq!(status(&r, "testkey.match"), "FAIL");
    assert!(findings(&r, "testkey.match")[0]["detail"]
        .as_str()
        .unwrap()
        .contains("does NOT match"));
    assert_eq!(code, 2);
    let (code, r) = run("ed", &ed_key);
    assert_eq!(status(&r, "testkey.match"), "FAIL");
    assert_eq!(code, 2);
    // RSA private key against an Ed25519 record.
    let (code, r) = run("edt", &rsa_key);
    assert_eq!(status(&r, "testkey.match"), "FAIL");
    assert_eq!(code, 2);
    let (code, r) = run("edt", &ed_key);
    assert_eq!(status(&r, "testkey.match"), "OK");
    assert_eq!(status(&r, "testkey.testing"), "WARN");
    assert_eq!(code, 1);
    let (code, r) = run("absent", &ed_key);
    assert_eq!(status(&r, "testkey.record"), "FAIL");
    assert_eq!(code, 2);
}

#[test]
fn testkey_every_keytable_entry_of_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let (_, rsa_txt) = genkey(dir.path(), "keys.example", "rsa", &[]);
    let (_, ed_txt) = genkey(dir.path(), "keys.example", "ed", &["--type", "ed25519"]);
    let dns = TestDns::start_blocking(
        &Zone::new()
            .txt("rsa._domainkey.keys.example", &rsa_txt)
            .txt("ed._domainkey.keys.example", &ed_txt),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("KeyTable"),
        "rsa keys.example:rsa:rsa.private\ned keys.example:ed:ed.private\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("SigningTable"), "*@keys.example rsa\n").unwrap();
    let conf = dir.path().join("dkim-milter.toml");
    std::fs::write(
        &conf,
        format!(
            "key_table = \"file:KeyTable\"\nsigning_table = \"refile:SigningTable\"\n\
             [resolver]\nnameservers = [\"{}\"]\ntimeout = 2.0\nattempts = 1\n",
            dns.addr()
        ),
    )
    .unwrap();
    // No --nameserver: the resolver comes from the configuration, as for the daemon.
    let (code, stdout, stderr) = authmilter(&["testkey", "-c", conf.to_str().unwrap(), "--json"]);
    eprintln!("{stdout}");
    assert_eq!(code, 0, "{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["target"], "2 key(s)");
    assert_eq!(
        statuses(&r, "testkey.match"),
        vec![
            ("ed._domainkey.keys.example".to_string(), "OK".to_string()),
            ("rsa._domainkey.keys.example".to_string(), "OK".to_string()),
        ]
    );
    // A broken configuration is a configuration error.
    std::fs::write(&conf, "key_table = \"file:Missing\"\n").unwrap();
    let (code, _, stderr) = authmilter(&["testkey", "-c", conf.to_str().unwrap()]);
    assert_eq!(code, 78, "{stderr}");
}

/// Prints a transcript of every command against the test DNS, for docs/tools.md:
/// `cargo test -p authmilter-cli --test tools docs_transcript -- --ignored --nocapture`.
#[test]
#[ignore]
fn docs_transcript() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let show = |args: &[&str]| -> (i32, String) {
        let (code, out, err) = authmilter(args);
        println!("$ authmilter {}\n{out}{err}(exit {code})\n", args.join(" "));
        (code, out)
    };
    let rsa_out = format!("{d}/sel2024.private");
    let ed_out = format!("{d}/ed2024.private");
    show(&[
        "genkey",
        "--domain",
        "good.example",
        "--selector",
        "sel2024",
        "--out",
        &rsa_out,
    ]);
    show(&[
        "genkey",
        "--domain",
        "good.example",
        "--selector",
        "ed2024",
        "--type",
        "ed25519",
        "--out",
        &ed_out,
    ]);
    show(&[
        "--json",
        "genkey",
        "-d",
        "good.example",
        "-s",
        "x",
        "--out",
        &format!("{d}/x.private"),
    ]);
    let txt = |path: &str| -> String {
        let pk = std::fs::read(path).unwrap();
        let k = authmilter::testkey::public_key_of(&pk).unwrap();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        match k {
            authmilter::testkey::PublicKey::Rsa { spki, .. } => {
                format!("v=DKIM1; k=rsa; p={}", b64.encode(spki))
            }
            authmilter::testkey::PublicKey::Ed25519(raw) => {
                format!("v=DKIM1; k=ed25519; p={}", b64.encode(raw))
            }
        }
    };
    let mut zone = Zone::new()
        .txt("sel2024._domainkey.good.example", &txt(&rsa_out))
        .txt("ed2024._domainkey.good.example", &txt(&ed_out))
        // Selector x is published with a key that is not x.private's.
        .txt("x._domainkey.good.example", &txt(&rsa_out));
    for (i, (dom, var)) in VARIANTS.iter().enumerate() {
        zone = zone.merge(&domain_zone(dom, 10 + i as u8, *var));
    }
    let dns = TestDns::start_blocking(&zone).unwrap();
    let ns = dns.addr().to_string();
    show(&[
        "--nameserver",
        &ns,
        "testkey",
        "--domain",
        "good.example",
        "--selector",
        "ed2024",
        "--key",
        &ed_out,
    ]);
    show(&[
        "--nameserver",
        &ns,
        "testkey",
        "--domain",
        "good.example",
        "--selector",
        "x",
        "--key",
        &format!("{d}/x.private"),
    ]);
    std::fs::write(
        format!("{d}/KeyTable"),
        "sel2024._domainkey.good.example good.example:sel2024:sel2024.private\n\
         ed2024._domainkey.good.example good.example:ed2024:ed2024.private\n",
    )
    .unwrap();
    std::fs::write(
        format!("{d}/SigningTable"),
        "*@good.example sel2024._domainkey.good.example\n",
    )
    .unwrap();
    let conf = format!("{d}/dkim-milter.toml");
    std::fs::write(
        &conf,
        format!(
            "key_table = \"file:KeyTable\"\nsigning_table = \"refile:SigningTable\"\n\
             [resolver]\nnameservers = [\"{ns}\"]\n"
        ),
    )
    .unwrap();
    show(&["testkey", "-c", &conf]);
    show(&[
        "--nameserver",
        &ns,
        "audit",
        "good.example",
        "--selector",
        "sel2024",
        "--selector",
        "ed2024",
    ]);
    for dom in [
        "spf11.example",
        "noptr.example",
        "cnamemx.example",
        "extrua.example",
        "dmarcsyntax.example",
        "plusall.example",
    ] {
        show(&["--nameserver", &ns, "audit", dom]);
    }
    show(&["--nameserver", &ns, "--json", "audit", "cnamemx.example"]);
}
