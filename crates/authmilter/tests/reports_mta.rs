//! Aggregate reports end to end through real Postfix: mail from several sources (Postfix's
//! XCLIENT gives each SMTP session its client address) and domains passes dmarc-milter, which
//! writes the history; `authmilter reports run` makes the reports and submits them over SMTP to
//! a second throwaway Postfix, which delivers them to files. The delivered mail is judged by
//! value: recipient, subject, file name, gzip'd XML (xmllint against the RFC 9990 XSD,
//! parsedmarc for the content), compared with what was sent.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::dns::{TestDns, Zone};
use testkit::mta::Mta;
use testkit::postfix::{require_postfix, Postfix, PostfixOptions};

const PARSEDMARC: &str = "/opt/authmilter-tests/parsedmarc-venv/bin/python";

/// One SMTP transaction as client `client_ip` (XCLIENT ADDR); returns the final reply line.
fn send_as(server: SocketAddr, client_ip: &str, from: &str, header_from: &str, n: usize) -> String {
    let s = TcpStream::connect_timeout(&server, Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut reply = |w: &mut TcpStream, cmd: Option<&str>| -> String {
        if let Some(c) = cmd {
            w.write_all(format!("{c}\r\n").as_bytes()).unwrap();
        }
        let last;
        loop {
            let mut line = String::new();
            if let Err(e) = r.read_line(&mut line) {
                panic!("after {cmd:?}: {e}");
            }
            assert!(!line.is_empty(), "server closed after {cmd:?}");
            if line.as_bytes().get(3) != Some(&b'-') {
                last = line.trim_end().to_string();
                break;
            }
        }
        last
    };
    assert!(reply(&mut w, None).starts_with("220"));
    assert!(reply(&mut w, Some("EHLO client.test.example")).starts_with("250"));
    let x = reply(
        &mut w,
        Some(&format!("XCLIENT ADDR={client_ip} NAME=[UNAVAILABLE]")),
    );
    assert!(x.starts_with("220"), "XCLIENT: {x}");
    assert!(reply(&mut w, Some("EHLO client.test.example")).starts_with("250"));
    let m = reply(&mut w, Some(&format!("MAIL FROM:<{from}>")));
    assert!(m.starts_with("250"), "MAIL: {m}");
    let rc = reply(&mut w, Some("RCPT TO:<bob@rx.test>"));
    assert!(rc.starts_with("250"), "RCPT: {rc}");
    assert!(reply(&mut w, Some("DATA")).starts_with("354"));
    let msg = format!(
        "From: <{header_from}>\r\nTo: <bob@rx.test>\r\nSubject: test {n}\r\n\
         Date: Thu, 03 Dec 2026 09:00:00 +0000\r\nMessage-ID: <m{n}.{client_ip}@test>\r\n\r\nhello\r\n.\r\n"
    );
    w.write_all(msg.as_bytes()).unwrap();
    let end = reply(&mut w, None);
    let _ = reply(&mut w, Some("QUIT"));
    end
}

/// The decoded application/gzip part of a MIME message (base64) and its file name.
fn attachment(msg: &str) -> (String, Vec<u8>) {
    use base64::Engine;
    let at = msg
        .find("Content-Type: application/gzip")
        .expect("a gzip part");
    let part = &msg[at..];
    let name = part
        .split("filename=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a file name")
        .to_string();
    let body = part.split("\r\n\r\n").nth(1).unwrap();
    let b64: String = body
        .lines()
        .take_while(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .concat();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("base64");
    (name, bytes)
}

fn header(msg: &str, name: &str) -> String {
    let head = msg
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_go_from_postfix_through_the_history_to_a_second_postfix() {
    if !require_postfix() {
        return;
    }
    for (tool, path) in [("xmllint", "/usr/bin/xmllint"), ("parsedmarc", PARSEDMARC)] {
        assert!(
            Path::new(path).exists(),
            "{tool} missing at {path}: run tests/run.sh as root"
        );
    }
    let zone = Zone::new()
        .txt("good.example", "v=spf1 ip4:192.0.2.10 -all")
        .txt(
            "_dmarc.good.example",
            "v=DMARC1; p=reject; rua=mailto:dmarc@good.example",
        )
        .txt("other.example", "v=spf1 ip4:203.0.113.5 -all")
        .txt(
            "_dmarc.other.example",
            "v=DMARC1; p=none; rua=mailto:agg@other.example,mailto:copy@other.example!1k",
        );
    let dns = TestDns::start(&zone).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.sqlite");
    let milter_cfg = format!(
        "authserv_id = \"rx.test\"\nhistory = \"{}\"\nignore_hosts = []\n\
         [resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
        db.display(),
        dns.addr()
    );
    let milter = testkit::daemons::start::<dmarc_policy::runtime::Runtime>(
        dir.path(),
        &milter_cfg,
        "inet:0@127.0.0.1",
    )
    .await;
    let inbound = tokio::task::block_in_place(|| {
        Postfix::start(
            PostfixOptions::with_milters([testkit::postfix::milter_inet(milter.addr)])
                .set("smtpd_authorized_xclient_hosts", "127.0.0.0/8")
                // The XCLIENT'd sources may relay (every recipient is a file sink).
                .set(
                    "mynetworks",
                    "127.0.0.0/8 192.0.2.0/24 198.51.100.0/24 203.0.113.0/24",
                ),
        )
    })
    .expect("inbound postfix");
    let relay = tokio::task::block_in_place(|| Postfix::start(PostfixOptions::default()))
        .expect("report relay postfix");

    // Mail: good.example from its own server (SPF pass) three times and forged from another
    // source twice; other.example once.
    let sends = [
        ("192.0.2.10", "a@good.example", "a@good.example", 3),
        ("198.51.100.7", "x@good.example", "a@good.example", 2),
        ("203.0.113.5", "b@other.example", "b@other.example", 1),
    ];
    let mut n = 0;
    tokio::task::block_in_place(|| {
        for (ip, from, hfrom, times) in sends {
            for _ in 0..times {
                n += 1;
                let addr = inbound.smtp_addr();
                let r = std::panic::catch_unwind(|| send_as(addr, ip, from, hfrom, n))
                    .unwrap_or_else(|_| panic!("message {n}: {}", inbound.diagnostics()));
                assert!(r.starts_with("250"), "{r}\n{}", inbound.diagnostics());
            }
        }
        let got = inbound.wait_for_deliveries(6, Duration::from_secs(30));
        assert_eq!(got.len(), 6, "{}", inbound.diagnostics());
    });

    // The report program, one day later (the period of today is then over).
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        / 86400
        * 86400;
    let cfg = dir.path().join("reports.toml");
    std::fs::write(
        &cfg,
        format!(
            "history = \"{}\"\norg_name = \"RX Test\"\nemail = \"dmarc-reports@rx.test\"\n\
             method = \"smtp\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
             [resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
            db.display(),
            relay.smtp_addr().port(),
            dns.addr()
        ),
    )
    .unwrap();
    let now = (today + 86400 + 3600).to_string();
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_authmilter"))
            .args(["reports", "run", "-c", cfg.to_str().unwrap(), "--now", &now])
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim(),
        "claimed 2 sent 2 skipped 0 expired 0 retry 0 late 0",
        "{stderr}"
    );
    // The 1 KiB limit of copy@other.example is below the report's size.
    assert!(
        stderr.contains("is over copy@other.example's limit of 1024; skipped"),
        "{stderr}"
    );

    let got = tokio::task::block_in_place(|| relay.wait_for_deliveries(2, Duration::from_secs(30)));
    assert_eq!(got.len(), 2, "{}", relay.diagnostics());
    let mut by_to = std::collections::BTreeMap::new();
    for (_, m) in &got {
        let m = String::from_utf8_lossy(m).into_owned();
        by_to.insert(header(&m, "To"), m);
    }
    let keys: Vec<_> = by_to.keys().cloned().collect();
    assert_eq!(keys, ["<agg@other.example>", "<dmarc@good.example>"]);

    let xsd = testkit::corpus::shared_dir()
        .map(|d| d.join("corpus/dmarc-reports/xsd/pydmarc-dmarc-2.0.xsd"));
    let end = today + 86399;
    for (to, domain, expect) in [
        (
            "<dmarc@good.example>",
            "good.example",
            vec![
                ("192.0.2.10", 3, "pass", "pass"),
                ("198.51.100.7", 2, "fail", "fail"),
            ],
        ),
        (
            "<agg@other.example>",
            "other.example",
            vec![("203.0.113.5", 1, "pass", "pass")],
        ),
    ] {
        let m = &by_to[to];
        assert_eq!(header(m, "From"), "<dmarc-reports@rx.test>");
        let subject = header(m, "Subject");
        let id = subject
            .strip_prefix(&format!(
                "Report Domain: {domain} Submitter: rx.test Report-ID: <"
            ))
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or_else(|| panic!("subject {subject}"));
        let (name, gz) = attachment(m);
        assert_eq!(name, format!("rx.test!{domain}!{today}!{end}!{id}.xml.gz"));
        let file = dir.path().join(&name);
        std::fs::write(&file, &gz).unwrap();
        let xml = Command::new("gzip").arg("-dc").arg(&file).output().unwrap();
        assert!(xml.status.success(), "{name} is not gzip");
        let xml_file = dir.path().join(format!("{domain}.xml"));
        std::fs::write(&xml_file, &xml.stdout).unwrap();
        if let Some(xsd) = &xsd {
            let v = Command::new("/usr/bin/xmllint")
                .args(["--noout", "--schema"])
                .arg(xsd)
                .arg(&xml_file)
                .output()
                .unwrap();
            assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
        }
        let eml = dir.path().join(format!("{domain}.eml"));
        std::fs::write(&eml, m).unwrap();
        let judge = testkit::judges::judges_dir().join("parsedmarc_report.py");
        let j = Command::new(PARSEDMARC)
            .arg(judge)
            .arg(&eml)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert!(j.status.success(), "{}", String::from_utf8_lossy(&j.stderr));
        let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
        let rep = &v[0];
        assert_eq!(rep["report_id"], id);
        assert_eq!(rep["domain"], domain);
        assert_eq!(rep["org_name"], "RX Test");
        let mut recs: Vec<(String, i64, String, String)> = rep["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert_eq!(r["dkim"], "fail", "no DKIM signatures were sent");
                (
                    r["ip"].as_str().unwrap().to_string(),
                    r["count"].as_i64().unwrap(),
                    r["spf"].as_str().unwrap().to_string(),
                    r["spf_results"][0][2].as_str().unwrap().to_string(),
                )
            })
            .collect();
        recs.sort();
        let want: Vec<(String, i64, String, String)> = expect
            .iter()
            .map(|(ip, c, a, s)| (ip.to_string(), *c, a.to_string(), s.to_string()))
            .collect();
        assert_eq!(recs, want, "{domain}");
        assert_eq!(
            rep["p"],
            if domain == "good.example" {
                "reject"
            } else {
                "none"
            }
        );
    }
    drop(relay);
    drop(inbound);
    drop(milter);
}
