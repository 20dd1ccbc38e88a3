//! `authmilter reports run` end to end on a history database written by the milter's own store:
//! the reports are checked by independent judges (xmllint against the corpus XSDs, parsedmarc
//! from PyPI) and by value against SQL over the history rows; exactly-once under `kill -9`,
//! late rows, ignore list and retention.

use dmarc_policy::history::{DkimEntry, Published, Record, Store};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// 2024-10-04 00:00:00 UTC.
const DAY: i64 = 20000 * 86400;
const NOW: i64 = DAY + 2 * 86400 + 3600;
const PARSEDMARC: &str = "/opt/authmilter-tests/parsedmarc-venv/bin/python";

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

#[allow(clippy::too_many_arguments)]
fn rec(
    key: &str,
    received: i64,
    ip: Option<&str>,
    domain: &str,
    rua: &str,
    dkim: &[(&str, &str, &str)],
    spf: Option<(&str, &str, &str)>,
    aligned: (&str, &str),
    disposition: &str,
    reason: Option<&str>,
) -> Record {
    Record {
        received,
        job_id: key.into(),
        reporter: "rx.test".into(),
        source_ip: ip.map(str::to_string),
        header_from: domain.into(),
        envelope_from: spf.map_or(domain, |s| s.0).into(),
        envelope_to: "rx.test".into(),
        policy_domain: Some(domain.into()),
        published: Some(Published {
            p: if domain == "example.org" {
                "none"
            } else {
                "reject"
            }
            .into(),
            sp: "quarantine".into(),
            np: "reject".into(),
            adkim: "r".into(),
            aspf: "r".into(),
            testing: false,
            pct: (domain == "example.com").then_some(50),
            psd: "u".into(),
            rua: rua.split_whitespace().map(str::to_string).collect(),
        }),
        policy_applied: "reject".into(),
        spf: spf.map(|(d, s, r)| (d.into(), s.into(), r.into())),
        dkim: dkim
            .iter()
            .map(|(d, s, r)| DkimEntry {
                domain: d.to_string(),
                selector: s.to_string(),
                result: r.to_string(),
            })
            .collect(),
        dkim_aligned: aligned.0.into(),
        spf_aligned: aligned.1.into(),
        dmarc_result: if aligned.0 == "pass" || aligned.1 == "pass" {
            "pass"
        } else {
            "fail"
        }
        .into(),
        disposition: disposition.into(),
        action: "accept".into(),
        override_reason: reason.map(str::to_string),
        override_comment: None,
        message_key: key.into(),
    }
}

/// The history of two days: example.com (several sources and results, IPv6, HELO SPF, local
/// policy and pct overrides, one local submission), example.org (two DKIM signatures), a domain
/// without rua and one on the ignore list.
fn fill(path: &Path) {
    let store = Store::open(path).unwrap();
    let by = || Instant::now() + Duration::from_secs(10);
    let com = "mailto:dmarc@example.com";
    let pass = [("example.com", "s1", "pass")];
    let mut n = 0;
    let mut add = |r: Record| {
        n += 1;
        let mut r = r;
        r.message_key = format!("k{n}");
        store.insert(&r, by()).unwrap();
    };
    let t = DAY + 3600;
    for i in 0..3 {
        add(rec(
            "a",
            t + i,
            Some("192.0.2.10"),
            "example.com",
            com,
            &pass,
            Some(("example.com", "mfrom", "pass")),
            ("pass", "pass"),
            "none",
            None,
        ));
    }
    for i in 0..2 {
        add(rec(
            "b",
            t + 100 + i,
            Some("198.51.100.7"),
            "example.com",
            com,
            &[("example.com", "s1", "fail")],
            Some(("example.com", "mfrom", "fail")),
            ("fail", "fail"),
            "reject",
            None,
        ));
    }
    add(rec(
        "c",
        t + 200,
        Some("2001:db8::25"),
        "example.com",
        com,
        &pass,
        Some(("mx.example.com", "helo", "pass")),
        ("pass", "fail"),
        "none",
        None,
    ));
    add(rec(
        "d",
        t + 300,
        Some("203.0.113.9"),
        "example.com",
        com,
        &[],
        Some(("example.com", "mfrom", "softfail")),
        ("fail", "fail"),
        "none",
        Some("local_policy"),
    ));
    add(rec(
        "e",
        t + 400,
        Some("203.0.113.10"),
        "example.com",
        com,
        &[],
        Some(("example.com", "mfrom", "fail")),
        ("fail", "fail"),
        "none",
        Some("sampled_out"),
    ));
    add(rec(
        "f",
        t + 500,
        None,
        "example.com",
        com,
        &pass,
        None,
        ("pass", "fail"),
        "none",
        None,
    ));
    add(rec(
        "g",
        DAY + 86400 + 7,
        Some("192.0.2.10"),
        "example.com",
        com,
        &pass,
        Some(("example.com", "mfrom", "pass")),
        ("pass", "pass"),
        "none",
        None,
    ));
    for i in 0..2 {
        add(rec(
            "h",
            t + 600 + i,
            Some("192.0.2.44"),
            "example.org",
            "mailto:dmarc@example.org",
            &[("example.org", "a", "pass"), ("esp.example", "b", "pass")],
            Some(("esp.example", "mfrom", "pass")),
            ("pass", "fail"),
            "none",
            None,
        ));
    }
    add(rec(
        "i",
        t + 700,
        Some("192.0.2.50"),
        "norua.example",
        "",
        &[],
        None,
        ("fail", "fail"),
        "none",
        None,
    ));
    add(rec(
        "j",
        t + 800,
        Some("192.0.2.51"),
        "ignored.example",
        "mailto:reports@ignored.example",
        &[],
        None,
        ("fail", "fail"),
        "none",
        None,
    ));
}

fn config(dir: &Path, schema: &str, extra: &str) -> PathBuf {
    let cfg = dir.join("reports.toml");
    std::fs::write(
        &cfg,
        format!(
            "history = \"{}\"\norg_name = \"Receiver Test\"\nemail = \"dmarc-noreply@rx.test\"\n\
             submitter = \"rx.test\"\nschema = \"{schema}\"\nignore_rua = [\"@ignored.example\"]\n\
             {extra}\n[resolver]\nnameservers = [\"127.0.0.1:9\"]\ntimeout = 0.2\nattempts = 1\n",
            dir.join("history.sqlite").display()
        ),
    )
    .unwrap();
    cfg
}

fn require(tool: &str, path: &str) {
    assert!(
        Path::new(path).exists(),
        "{tool} is missing at {path}: run tests/run.sh as root once to install it"
    );
}

fn xsds() -> Option<PathBuf> {
    let dir = testkit::corpus::shared_dir()?.join("corpus/dmarc-reports/xsd");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "!!!!! SKIPPED: {} not found; reports were not schema-checked !!!!!",
            dir.display()
        );
        None
    }
}

/// xmllint's verdict on `xml` (a file) against `xsd`.
fn xmllint(xsd: &Path, xml: &Path) -> (bool, String) {
    require("xmllint (libxml2-utils)", "/usr/bin/xmllint");
    let out = Command::new("/usr/bin/xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(xsd)
        .arg(xml)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn gunzip(path: &Path) -> Vec<u8> {
    let out = Command::new("gzip").arg("-dc").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "gzip -dc {}: not gzip",
        path.display()
    );
    out.stdout
}

/// parsedmarc's reading of report files (.xml.gz or a whole mail).
fn parsedmarc(files: &[PathBuf]) -> Vec<Value> {
    require("parsedmarc (venv)", PARSEDMARC);
    let judge = testkit::judges::judges_dir().join("parsedmarc_report.py");
    let out = Command::new(PARSEDMARC)
        .arg(judge)
        .args(files)
        .env("TZ", "UTC")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "parsedmarc rejected {files:?}");
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// What the history says a report for (domain, day) must hold, by SQL over the rows:
/// (source, disposition, dkim, spf) -> count.
fn expected(
    db: &Path,
    domain: &str,
    begin: i64,
) -> BTreeMap<(IpAddr, String, String, String), i64> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c
        .prepare(
            "SELECT source_ip, disposition, dkim_aligned, spf_aligned, COUNT(*) FROM messages
             WHERE policy_domain = ?1 AND received BETWEEN ?2 AND ?3 AND source_ip IS NOT NULL
             GROUP BY 1, 2, 3, 4",
        )
        .unwrap();
    st.query_map(rusqlite::params![domain, begin, begin + 86399], |r| {
        Ok((
            (
                r.get::<_, String>(0)?.parse().unwrap(),
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
            ),
            r.get(4)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn judged(report: &Value) -> BTreeMap<(IpAddr, String, String, String), i64> {
    let mut m = BTreeMap::new();
    for r in report["records"].as_array().unwrap() {
        let key = (
            r["ip"].as_str().unwrap().parse().unwrap(),
            r["disposition"].as_str().unwrap().to_string(),
            r["dkim"].as_str().unwrap().to_string(),
            r["spf"].as_str().unwrap().to_string(),
        );
        *m.entry(key).or_default() += r["count"].as_i64().unwrap();
    }
    m
}

fn record<'a>(report: &'a Value, ip: &str) -> &'a Value {
    let want: IpAddr = ip.parse().unwrap();
    report["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ip"].as_str().unwrap().parse::<IpAddr>().unwrap() == want)
        .unwrap_or_else(|| panic!("no record for {ip} in {report:#}"))
}

fn check_schema(schema: &str, xsd: &str, pct: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.sqlite");
    fill(&db);
    let cfg = config(dir.path(), schema, "");
    let out_dir = dir.path().join("out");
    let (code, stdout, stderr) = authmilter(&[
        "reports",
        "run",
        "-c",
        cfg.to_str().unwrap(),
        "--dry-run",
        out_dir.to_str().unwrap(),
        "--now",
        &NOW.to_string(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains("reports@ignored.example is on ignore_rua; skipped"),
        "{stderr}"
    );
    // A dry run leaves the store as it found it.
    let c = rusqlite::Connection::open(&db).unwrap();
    let reports: i64 = c
        .query_row("SELECT COUNT(*) FROM reports", [], |r| r.get(0))
        .unwrap();
    let claims: i64 = c
        .query_row("SELECT COUNT(*) FROM report_rows", [], |r| r.get(0))
        .unwrap();
    assert_eq!((reports, claims), (0, 0));

    let mut files: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".xml.gz"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let day2 = DAY + 86400;
    let prefixes = [
        format!("rx.test!example.com!{DAY}!{}!", DAY + 86399),
        format!("rx.test!example.com!{day2}!{}!", day2 + 86399),
        format!("rx.test!example.org!{DAY}!{}!", DAY + 86399),
    ];
    assert_eq!(names.len(), 3, "{names:?}");
    for (n, p) in names.iter().zip(&prefixes) {
        assert!(n.starts_with(p), "{n} does not start with {p}");
    }

    let judged_all = parsedmarc(&files);
    for ((file, name), report) in files.iter().zip(&names).zip(&judged_all) {
        if let Some(xsd_dir) = xsds() {
            let xml = dir.path().join(name.trim_end_matches(".gz"));
            std::fs::write(&xml, gunzip(file)).unwrap();
            let (ok, msg) = xmllint(&xsd_dir.join(xsd), &xml);
            assert!(
                ok,
                "{name} is not valid against {xsd}: {msg}\n{}",
                std::fs::read_to_string(&xml).unwrap()
            );
        }
        let domain = report["domain"].as_str().unwrap();
        let begin = if name.contains(&format!("!{day2}!")) {
            day2
        } else {
            DAY
        };
        // The id in the file name is the report's id.
        let id = report["report_id"].as_str().unwrap();
        assert!(
            name.ends_with(&format!("!{id}.xml.gz")),
            "{name} vs id {id}"
        );
        assert_eq!(report["org_name"], "Receiver Test");
        assert_eq!(report["org_email"], "dmarc-noreply@rx.test");
        assert_eq!(judged(report), expected(&db, domain, begin), "{name}");
        assert_eq!(report["sp"], "quarantine");
        if domain == "example.com" {
            assert_eq!(report["p"], "reject");
            assert_eq!(report["pct"].as_str(), pct);
        } else {
            assert_eq!(report["p"], "none");
        }
    }
    let com = &judged_all[0];
    assert_eq!(com["begin"], "2024-10-04 00:00:00");
    assert_eq!(com["end"], "2024-10-04 23:59:59");
    let helo = record(com, "2001:db8::25");
    assert_eq!(helo["spf_results"][0][0], "mx.example.com");
    assert_eq!(helo["spf_results"][0][2], "pass");
    if schema == "rfc7489" {
        assert_eq!(helo["spf_results"][0][1], "helo");
        assert_eq!(record(com, "203.0.113.10")["reasons"][0], "sampled_out");
    } else {
        assert_eq!(record(com, "203.0.113.10")["reasons"][0], "other");
    }
    assert_eq!(record(com, "203.0.113.9")["reasons"][0], "local_policy");
    assert_eq!(
        record(com, "198.51.100.7")["dkim_results"][0],
        serde_json::json!(["example.com", "s1", "fail"])
    );
    let org = record(&judged_all[2], "192.0.2.44");
    assert_eq!(org["count"], 2);
    assert_eq!(
        org["dkim_results"],
        serde_json::json!([["example.org", "a", "pass"], ["esp.example", "b", "pass"]])
    );
    assert_eq!(
        org["spf_results"][0],
        serde_json::json!(["esp.example", "mfrom", "pass"])
    );
}

#[test]
fn rfc9990_reports_validate_and_parsedmarc_agrees_with_the_history() {
    check_schema("rfc9990", "pydmarc-dmarc-2.0.xsd", None);
}

#[test]
fn rfc7489_reports_validate_and_parsedmarc_agrees_with_the_history() {
    check_schema("rfc7489", "pydmarc-dmarc.xsd", Some("50"));
}

/// A stand-in for sendmail that keeps each message (and its arguments) in `dir/sink` and, when
/// `dir/hang-after` names its number, hangs after taking that message: the report is
/// delivered, the report program has not marked it yet.
fn fake_sendmail(dir: &Path) -> PathBuf {
    let sink = dir.join("sink");
    std::fs::create_dir_all(&sink).unwrap();
    let script = dir.join("sendmail");
    let d = dir.display();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=$(ls {d}/sink | wc -l)\nn=$((n+1))\nprintf '%s\\n' \"$*\" > {d}/args.$n\n\
             cat > {d}/sink/.tmp.$n && mv {d}/sink/.tmp.$n {d}/sink/msg.$n\n\
             if [ -e {d}/hang-after ] && [ \"$n\" -eq \"$(cat {d}/hang-after)\" ]; then\n\
             echo $$ > {d}/hanging.tmp && mv {d}/hanging.tmp {d}/hanging\n  exec sleep 60\nfi\n"
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&script)
        .status()
        .unwrap();
    script
}

fn sink(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("sink"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("msg."))
        .collect();
    v.sort_by_key(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .and_then(|e| e.parse::<u32>().ok())
    });
    v
}

fn header(msg: &str, name: &str) -> String {
    // Unfolded value of the first `name:` header.
    let head = msg
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {head}"))
        .to_string()
}

fn states(db: &Path) -> BTreeMap<String, i64> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c
        .prepare("SELECT state, COUNT(*) FROM reports GROUP BY 1")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn count(db: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

#[test]
fn kill_9_mid_send_resends_only_that_report_and_every_other_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.sqlite");
    fill(&db);
    let sendmail = fake_sendmail(dir.path());
    let cfg = config(
        dir.path(),
        "rfc9990",
        &format!(
            "method = \"sendmail\"\nsendmail = \"{}\"\n",
            sendmail.display()
        ),
    );
    let cfg_s = cfg.to_str().unwrap().to_string();
    let now = NOW.to_string();
    let args = ["reports", "run", "-c", &cfg_s, "--now", &now];

    // Run 1: killed while "sendmail" holds the second report (delivered, not yet marked).
    std::fs::write(dir.path().join("hang-after"), "2").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_authmilter"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let hanging = dir.path().join("hanging");
    let until = Instant::now() + Duration::from_secs(30);
    while !hanging.exists() {
        assert!(
            Instant::now() < until,
            "the fake sendmail never got a second report"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let sleeper = std::fs::read_to_string(&hanging).unwrap();
    Command::new("kill")
        .arg("-9")
        .arg(sleeper.trim())
        .status()
        .unwrap();
    std::fs::remove_file(dir.path().join("hang-after")).unwrap();
    assert_eq!(sink(dir.path()).len(), 2);
    assert_eq!(
        states(&db),
        BTreeMap::from([("pending".to_string(), 3), ("sent".to_string(), 1)])
    );

    // Run 2 finishes the job: the interrupted report once more, the rest once.
    let (code, stdout, stderr) = authmilter(&args);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        stdout.trim(),
        "claimed 0 sent 2 skipped 1 expired 0 retry 0 late 0"
    );
    let msgs = sink(dir.path());
    assert_eq!(msgs.len(), 4, "{msgs:?}");
    let text: Vec<String> = msgs
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let judged = parsedmarc(&msgs);
    let ids: Vec<&str> = judged
        .iter()
        .map(|r| r["report_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids[1], ids[2],
        "the interrupted report is sent again with its id"
    );
    assert_eq!(judged[1], judged[2], "and the same content");
    assert_eq!(
        header(&text[1], "Message-ID"),
        header(&text[2], "Message-ID")
    );
    assert!(
        ids[0] != ids[1] && ids[1] != ids[3] && ids[0] != ids[3],
        "{ids:?}"
    );
    assert_eq!(
        judged
            .iter()
            .map(|r| r["domain"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["example.com", "example.org", "example.org", "example.com"]
    );
    // Rows claimed = rows reported (counted once per distinct report).
    let reported: i64 = [0, 1, 3]
        .iter()
        .flat_map(|&i| judged[i]["records"].as_array().unwrap().iter())
        .map(|r| r["count"].as_i64().unwrap())
        .sum();
    let claimed = count(
        &db,
        "SELECT COUNT(*) FROM report_rows c JOIN reports r ON r.id = c.report WHERE r.state = 'sent'",
    );
    assert_eq!((reported, claimed), (11, 11));
    assert_eq!(
        states(&db),
        BTreeMap::from([("sent".to_string(), 3), ("skipped".to_string(), 1)])
    );

    // The mail as the RFC asks for it.
    let m = &text[0];
    let id = ids[0];
    assert_eq!(
        header(m, "Subject"),
        format!("Report Domain: example.com Submitter: rx.test Report-ID: <{id}>")
    );
    assert_eq!(header(m, "To"), "<dmarc@example.com>");
    assert_eq!(header(m, "From"), "<dmarc-noreply@rx.test>");
    assert_eq!(header(m, "Auto-Submitted"), "auto-generated");
    assert_eq!(header(m, "Message-ID"), format!("<{id}@rx.test>"));
    let filename = format!("rx.test!example.com!{DAY}!{}!{id}.xml.gz", DAY + 86399);
    assert!(m.contains(&format!("filename=\"{filename}\"")), "{m}");
    assert!(m.contains("Content-Type: application/gzip"), "{m}");
    let args1 = std::fs::read_to_string(dir.path().join("args.1")).unwrap();
    assert_eq!(args1.trim(), "-oi -t -f dmarc-noreply@rx.test");

    // Run 3: nothing more to send.
    let (code, stdout, _) = authmilter(&args);
    assert_eq!(
        (code, stdout.trim()),
        (0, "claimed 0 sent 0 skipped 0 expired 0 retry 0 late 0")
    );
    assert_eq!(sink(dir.path()).len(), 4);

    // A row that turns up after its period was reported is set aside, not reported twice.
    {
        let store = Store::open(&db).unwrap();
        store
            .insert(
                &rec(
                    "late",
                    DAY + 5000,
                    Some("192.0.2.99"),
                    "example.com",
                    "mailto:dmarc@example.com",
                    &[],
                    None,
                    ("fail", "fail"),
                    "none",
                    None,
                ),
                Instant::now() + Duration::from_secs(10),
            )
            .unwrap();
    }
    let (code, stdout, stderr) = authmilter(&args);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        "claimed 0 sent 0 skipped 0 expired 0 retry 0 late 1"
    );
    assert!(
        stderr.contains("1 message(s) for example.com arrived after the report for"),
        "{stderr}"
    );
    assert_eq!(sink(dir.path()).len(), 4);

    // Retention (180 days by default): rows and finished reports go.
    let later = (NOW + 200 * 86400).to_string();
    let (code, _, stderr) = authmilter(&["reports", "run", "-c", &cfg_s, "--now", &later]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM messages"), 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM reports"), 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM report_rows"), 0);
}

#[test]
fn undeliverable_reports_are_retried_then_expire() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.sqlite");
    fill(&db);
    let cfg = config(
        dir.path(),
        "rfc9990",
        "method = \"sendmail\"\nsendmail = \"/bin/false\"\ngive_up_hours = 24\n",
    );
    let cfg_s = cfg.to_str().unwrap();
    let (code, stdout, stderr) =
        authmilter(&["reports", "run", "-c", cfg_s, "--now", &NOW.to_string()]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        "claimed 4 sent 0 skipped 1 expired 0 retry 3 late 0"
    );
    assert!(
        stderr.contains("cannot send: /bin/false exited with exit status: 1"),
        "{stderr}"
    );
    let later = (NOW + 25 * 3600).to_string();
    let (_, stdout, stderr) = authmilter(&["reports", "run", "-c", cfg_s, "--now", &later]);
    assert_eq!(
        stdout.trim(),
        "claimed 0 sent 0 skipped 0 expired 3 retry 0 late 0"
    );
    assert!(
        stderr.contains("not sent within 24 hours (1 attempts); expired"),
        "{stderr}"
    );
    assert_eq!(
        states(&db),
        BTreeMap::from([("expired".to_string(), 3), ("skipped".to_string(), 1)])
    );
}

/// History with one row for each of these (policy domain, rua) pairs, on DAY.
fn fill_rua(path: &Path, domains: &[(&str, &str)]) {
    let store = Store::open(path).unwrap();
    for (i, (domain, rua)) in domains.iter().enumerate() {
        let mut r = rec(
            "x",
            DAY + 100 + i as i64,
            Some("192.0.2.10"),
            domain,
            rua,
            &[],
            Some((domain, "mfrom", "pass")),
            ("fail", "pass"),
            "none",
            None,
        );
        r.message_key = format!("k{i}");
        store
            .insert(&r, Instant::now() + Duration::from_secs(10))
            .unwrap();
    }
}

/// Recipients (To) of each delivered report, by policy domain (from the subject).
fn delivered_to(dir: &Path) -> BTreeMap<String, String> {
    sink(dir)
        .iter()
        .map(|p| {
            let m = std::fs::read_to_string(p).unwrap();
            let subject = header(&m, "Subject");
            let domain = subject
                .strip_prefix("Report Domain: ")
                .and_then(|s| s.split(' ').next())
                .unwrap()
                .to_string();
            (domain, header(&m, "To"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_destinations_need_their_consent_in_dns() {
    use testkit::dns::{TestDns, Zone};
    let zone = Zone::new()
        .txt("ext-yes.example._report._dmarc.vendor.example", "v=DMARC1")
        .txt("wrong.example._report._dmarc.vendor.example", "v=spf1 -all");
    let dns = TestDns::start(&zone).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.sqlite");
    fill_rua(
        &db,
        &[
            ("ext-yes.example", "mailto:agg@vendor.example!10m"),
            (
                "ext-no.example",
                "mailto:agg@vendor.example mailto:dmarc@ext-no.example",
            ),
            ("ext-none.example", "mailto:agg@vendor.example"),
            ("wrong.example", "mailto:agg@vendor.example"),
            (
                "mail.ext-yes.example",
                "mailto:d@ext-yes.example mailto:x@sub.mail.ext-yes.example",
            ),
            (
                "bad-uri.example",
                "https://vendor.example/dmarc mailto:ok@bad-uri.example",
            ),
        ],
    );
    let sendmail = fake_sendmail(dir.path());
    let cfg = config(
        dir.path(),
        "rfc9990",
        &format!(
            "method = \"sendmail\"\nsendmail = \"{}\"\n",
            sendmail.display()
        ),
    );
    // Point the report program at the test DNS server.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("127.0.0.1:9", &dns.addr().to_string());
    std::fs::write(&cfg, text).unwrap();
    let (code, stdout, stderr) = tokio::task::block_in_place(|| {
        authmilter(&[
            "reports",
            "run",
            "-c",
            cfg.to_str().unwrap(),
            "--now",
            &NOW.to_string(),
        ])
    });
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "claimed 6 sent 4 skipped 2 expired 0 retry 0 late 0",
        "{stderr}"
    );
    assert_eq!(
        delivered_to(dir.path()),
        BTreeMap::from([
            (
                "bad-uri.example".to_string(),
                "<ok@bad-uri.example>".to_string()
            ),
            (
                "ext-no.example".to_string(),
                "<dmarc@ext-no.example>".to_string()
            ),
            (
                "ext-yes.example".to_string(),
                "<agg@vendor.example>".to_string()
            ),
            (
                "mail.ext-yes.example".to_string(),
                "<d@ext-yes.example>, <x@sub.mail.ext-yes.example>".to_string()
            ),
        ])
    );
    for line in [
        "agg@vendor.example does not accept reports for ext-no.example (no v=DMARC1 at ext-no.example._report._dmarc.vendor.example); skipped",
        "agg@vendor.example does not accept reports for wrong.example",
        "for ext-none.example: no usable rua destination (mailto:agg@vendor.example); not sent",
        "rua 'https://vendor.example/dmarc': only mailto: destinations are supported; skipped",
    ] {
        assert!(stderr.contains(line), "missing '{line}' in\n{stderr}");
    }
}

#[test]
fn dns_trouble_defers_a_report_with_an_external_destination() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.sqlite");
    fill_rua(&db, &[("ext.example", "mailto:agg@vendor.example")]);
    let sendmail = fake_sendmail(dir.path());
    // The resolver of config() is 127.0.0.1:9, where nothing answers.
    let cfg = config(
        dir.path(),
        "rfc9990",
        &format!(
            "method = \"sendmail\"\nsendmail = \"{}\"\n",
            sendmail.display()
        ),
    );
    let (code, stdout, stderr) = authmilter(&[
        "reports",
        "run",
        "-c",
        cfg.to_str().unwrap(),
        "--now",
        &NOW.to_string(),
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        "claimed 1 sent 0 skipped 0 expired 0 retry 1 late 0"
    );
    assert!(
        stderr.contains(
            "DNS lookup of ext.example._report._dmarc.vendor.example failed; will try again"
        ),
        "{stderr}"
    );
    assert!(sink(dir.path()).is_empty());
    assert_eq!(states(&db), BTreeMap::from([("pending".to_string(), 1)]));
}

/// `authmilter reports inspect FILE` under a 1 GiB address-space limit: (status, out, err).
fn inspect(file: &Path) -> (i32, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1048576; exec \"$0\" reports inspect \"$1\"")
        .arg(env!("CARGO_BIN_EXE_authmilter"))
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn gzip_file(input: &Path, output: &Path) {
    let f = std::fs::File::create(output).unwrap();
    assert!(Command::new("gzip")
        .arg("-c")
        .arg(input)
        .stdout(f)
        .status()
        .unwrap()
        .success());
}

#[test]
fn inspect_summarises_our_reports_and_received_ones() {
    let dir = tempfile::tempdir().unwrap();
    fill(&dir.path().join("history.sqlite"));
    let cfg = config(dir.path(), "rfc7489", "");
    let out_dir = dir.path().join("out");
    let (code, _, stderr) = authmilter(&[
        "reports",
        "run",
        "-c",
        cfg.to_str().unwrap(),
        "--dry-run",
        out_dir.to_str().unwrap(),
        "--now",
        &NOW.to_string(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let gz = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(&format!("rx.test!example.com!{DAY}!")) && n.ends_with(".xml.gz")
        })
        .unwrap();
    let eml = PathBuf::from(format!("{}.eml", gz.display()));
    for file in [&gz, &eml] {
        let (code, out, err) = inspect(file);
        assert_eq!(code, 0, "{err}");
        let id = gz
            .to_string_lossy()
            .rsplit('!')
            .next()
            .unwrap()
            .trim_end_matches(".xml.gz")
            .to_string();
        for line in [
            format!("DMARC aggregate report {id} from Receiver Test <dmarc-noreply@rx.test>"),
            "domain example.com: 2024-10-04 00:00:00 UTC to 2024-10-04 23:59:59 UTC".into(),
            "published policy: p=reject sp=quarantine adkim=r aspf=r".into(),
            "messages: 8 from 5 source(s); DMARC pass 4 (50%), fail 4 (50%)".into(),
            "  198.51.100.7 (2 message(s)): DKIM fail for d=example.com s=s1; SPF fail for example.com".into(),
            "  203.0.113.9 (1 message(s)): no DKIM signature; SPF softfail for example.com".into(),
        ] {
            assert!(out.lines().any(|l| l == line), "missing '{line}' in\n{out}");
        }
        let src = out.lines().find(|l| l.starts_with("192.0.2.10 ")).unwrap();
        assert_eq!(
            src.split_whitespace().collect::<Vec<_>>(),
            ["192.0.2.10", "3", "none", "pass", "pass", "example.com"]
        );
    }
    // Reports others wrote (the shared corpus: parsedmarc's and mail-auth's samples).
    let Some(shared) = testkit::corpus::shared_dir() else {
        return;
    };
    let c = shared.join("corpus/dmarc-reports");
    for (file, needle) in [
        ("parsedmarc-samples/samples/aggregate/rfc9990-sample.xml", "messages: 123 from 1 source(s)"),
        ("parsedmarc-samples/samples/extract_report/nice-input.xml.gz", "DMARC aggregate report"),
        ("stalwart-mail-auth-dmarc-feedback/100.eml", "DMARC aggregate report"),
        ("parsedmarc-samples/samples/aggregate/estadocuenta1.infonacot.gob.mx!example.com!1536853302!1536939702!2940.xml.zip", "zip archives"),
    ] {
        let (code, out, err) = inspect(&c.join(file));
        assert!(out.contains(needle) || err.contains(needle), "{file}: {out}{err}");
        assert!(code == 0 || needle == "zip archives", "{file}: {err}");
    }
}

#[test]
fn inspect_refuses_hostile_input_with_a_clear_error_and_bounded_memory() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, data: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, data).unwrap();
        p
    };
    let report = "<?xml version=\"1.0\"?>\n<feedback><report_metadata><org_name>x</org_name>\
        <email>a@x.example</email><report_id>1</report_id><date_range><begin>0</begin>\
        <end>1</end></date_range></report_metadata><policy_published><domain>x.example</domain>\
        <p>none</p></policy_published><record><row><source_ip>192.0.2.1</source_ip><count>1</count>\
        <policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>pass</spf>\
        </policy_evaluated></row><identifiers><header_from>x.example</header_from></identifiers>\
        <auth_results></auth_results></record></feedback>\n";
    let xml = write("ok.xml", report.as_bytes());
    gzip_file(&xml, &d.join("ok.xml.gz"));
    assert_eq!(inspect(&d.join("ok.xml.gz")).0, 0, "the base case reads");
    let gz = std::fs::read(d.join("ok.xml.gz")).unwrap();

    let laughs = {
        let mut s =
            String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE feedback [\n<!ENTITY l0 \"lol\">\n");
        for i in 1..10 {
            let prev = format!("&l{};", i - 1);
            s.push_str(&format!("<!ENTITY l{i} \"{}\">\n", prev.repeat(10)));
        }
        s.push_str("]>\n<feedback><report_metadata><org_name>&l9;</org_name></report_metadata></feedback>\n");
        s
    };
    let bomb_xml = write("laughs.xml", laughs.as_bytes());
    gzip_file(&bomb_xml, &d.join("laughs.xml.gz"));
    let laughs_gz = std::fs::read(d.join("laughs.xml.gz")).unwrap();
    let mail = |ctype: &str, name: &str, data: &[u8]| {
        format!(
            "From: <r@x.example>\r\nTo: <d@y.example>\r\nSubject: Report Domain: y.example\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nreport\r\n--b\r\nContent-Type: {ctype}\r\n\
             Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\r\n{}\r\n--b--\r\n",
            base64::engine::general_purpose::STANDARD.encode(data)
        )
    };
    // A gzip bomb: 200 MB of zeros in about 200 KB.
    let zeros = d.join("zeros.gz");
    assert!(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 200000000 /dev/zero | gzip -1 > {}",
            zeros.display()
        ))
        .status()
        .unwrap()
        .success());
    let mut forged = gz.clone();
    let n = forged.len();
    forged[n - 4..].copy_from_slice(&(1u32 << 30).to_le_bytes()); // ISIZE: 1 GiB
    let cases: Vec<(PathBuf, &str)> = vec![
        (write("truncated.xml.gz", &gz[..gz.len() / 2]), "gzip: "),
        (zeros.clone(), "larger than 67108864 bytes decompressed"),
        (write("forged-size.xml.gz", &forged), "gzip: "),
        (
            bomb_xml,
            "document type declaration (<!DOCTYPE>) is not allowed",
        ),
        (
            write(
                "laughs.eml",
                mail("application/gzip", "r.xml.gz", &laughs_gz).as_bytes(),
            ),
            "document type declaration (<!DOCTYPE>) is not allowed",
        ),
        (
            write(
                "zeros.eml",
                mail(
                    "application/gzip",
                    "z.xml.gz",
                    &std::fs::read(&zeros).unwrap(),
                )
                .as_bytes(),
            ),
            "larger than 67108864 bytes decompressed",
        ),
        (
            write(
                "ns.xml",
                report
                    .replace("<feedback>", "<feedback xmlns=\"urn:example:other\">")
                    .as_bytes(),
            ),
            "namespace 'urn:example:other' is not a DMARC aggregate report namespace",
        ),
        (
            write(
                "prefixed.xml",
                b"<x:feedback xmlns:x=\"urn:ietf:params:xml:ns:dmarc-2.0\"/>",
            ),
            "the root element is <x:feedback>, not <feedback>",
        ),
        (
            write(
                "plain.eml",
                b"From: <a@x.example>\r\nSubject: hello\r\n\r\nJust a note.\r\n",
            ),
            "the message holds no DMARC aggregate report",
        ),
        (
            write("html.xml", b"<html><body>no</body></html>"),
            "the root element is <html>",
        ),
        (
            write("broken.xml", b"<feedback><report_metadata></feedback>"),
            "XML: ",
        ),
        (write("empty", b""), ""),
    ];
    for (file, needle) in cases {
        let started = Instant::now();
        let (code, out, err) = inspect(&file);
        assert_eq!(code, 65, "{}: {out}{err}", file.display());
        assert!(
            err.contains(needle),
            "{}: '{needle}' not in {err}",
            file.display()
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            file.display()
        );
    }
    let (code, _, err) = inspect(&d.join("missing.xml"));
    assert_eq!(code, 66, "{err}");
}

/// For bench/reports.sh (not a test): fills `$BENCH_HISTORY` with `$BENCH_ROWS` rows of one
/// day (DAY), 200 policy domains, 5,000 sources, mixed results, through the milter's own
/// schema (Store::open), in one transaction.
#[test]
#[ignore]
fn bench_fill_history() {
    let Ok(path) = std::env::var("BENCH_HISTORY") else {
        return;
    };
    let rows: i64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    drop(Store::open(Path::new(&path)).unwrap());
    let mut c = rusqlite::Connection::open(&path).unwrap();
    let tx = c.transaction().unwrap();
    {
        let mut m = tx
            .prepare(
                "INSERT INTO messages (received, job_id, reporter, source_ip, header_from,
                 envelope_from, envelope_to, policy_domain, p, sp, np, adkim, aspf, testing, psd,
                 rua, policy_applied, spf_domain, spf_scope, spf_result, dkim_aligned,
                 spf_aligned, dmarc_result, disposition, action, message_key)
                 VALUES (?1, 'Q', 'rx.test', ?2, ?3, ?3, 'rx.test', ?3, 'reject', 'reject',
                 'reject', 'r', 'r', 0, 'u', ?4, 'reject', ?3, 'mfrom', ?5, ?6, ?7, ?8, ?9,
                 'accept', ?10)",
            )
            .unwrap();
        let mut d = tx
            .prepare("INSERT INTO dkim_results (message_id, domain, selector, result) VALUES (?1, ?2, 's1', ?3)")
            .unwrap();
        for i in 0..rows {
            let dom = format!("d{}.example", i % 200);
            let ip = format!(
                "10.{}.{}.{}",
                (i % 5000) / 65536,
                (i % 5000) / 256 % 256,
                i % 256
            );
            let pass = i % 10 != 0;
            let word = if pass { "pass" } else { "fail" };
            m.execute(rusqlite::params![
                DAY + i % 86400,
                ip,
                dom,
                format!("mailto:dmarc@{dom}"),
                word,
                word,
                word,
                word,
                if pass { "none" } else { "reject" },
                format!("b{i}"),
            ])
            .unwrap();
            d.execute(rusqlite::params![tx.last_insert_rowid(), dom, word])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

#[test]
fn failure_reports_follow_fo_and_the_rate_limit() {
    use dmarc_policy::history::Failure;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.sqlite");
    let store = Store::open(&db).unwrap();
    let failure = |n: usize, fo: &str, dkim: &str, spf_aligned: bool, ruf: &str| Failure {
        received: NOW - 600 + n as i64,
        job_id: format!("F{n}"),
        reporter: "rx.test".into(),
        policy_domain: "example.com".into(),
        ruf: vec![ruf.into()],
        fo: fo.into(),
        source_ip: Some("198.51.100.7".into()),
        mail_from: "bounce@other.example".into(),
        rcpt_to: "bob@rx.test".into(),
        auth_results: "rx.test; dmarc=fail header.from=example.com".into(),
        dkim: vec![DkimEntry {
            domain: "example.com".into(),
            selector: "s1".into(),
            result: dkim.into(),
        }],
        spf: Some(("other.example".into(), "mfrom".into(), "pass".into())),
        dkim_aligned: dkim == "pass",
        spf_aligned,
        disposition: "none".into(),
        headers: format!("From: Alice <alice@example.com>\r\nSubject: F{n}\r\n"),
    };
    let ruf = "mailto:ruf@example.com";
    for f in [
        failure(1, "0", "fail", false, ruf), // DMARC failed: sent
        failure(2, "0", "fail", true, ruf),  // DMARC passed by SPF: not asked for
        failure(3, "d", "fail", true, ruf),  // a signature failed: sent
        failure(4, "s", "pass", true, ruf),  // SPF passed: not asked for
        failure(5, "1", "fail", true, ruf),  // DKIM not aligned: sent (3rd this hour)
        failure(6, "1", "fail", true, ruf),  // over the limit of 3 an hour
        failure(7, "0", "fail", false, "mailto:x@vendor.example"), // consent unknown: skipped
    ] {
        store.insert_failure(&f).unwrap();
    }
    drop(store);
    let sendmail = fake_sendmail(dir.path());
    let cfg = config(
        dir.path(),
        "rfc9990",
        &format!(
            "method = \"sendmail\"\nsendmail = \"{}\"\nfailure_rate_per_hour = 3\n",
            sendmail.display()
        ),
    );
    let args = [
        "reports",
        "run",
        "-c",
        cfg.to_str().unwrap(),
        "--now",
        &NOW.to_string(),
    ];
    let (code, stdout, stderr) = authmilter(&args);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "claimed 0 sent 0 skipped 0 expired 0 retry 0 late 0",
            "failure reports: sent 3 skipped 4"
        ]
    );
    assert!(
        stderr
            .contains("rate limit: 3 failure reports to ruf@example.com in the last hour; skipped"),
        "{stderr}"
    );
    let msgs: Vec<String> = sink(dir.path())
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(msgs.len(), 3);
    let subjects: Vec<String> = msgs
        .iter()
        .map(|m| {
            let part = m.split("text/rfc822-headers").nth(1).unwrap();
            part.lines()
                .find(|l| l.starts_with("Subject: F"))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(subjects, ["Subject: F1", "Subject: F3", "Subject: F5"]);
    for m in &msgs {
        assert_eq!(header(m, "To"), "<ruf@example.com>");
        assert_eq!(
            header(m, "Subject"),
            "DMARC failure report for example.com from 198.51.100.7"
        );
        assert!(m.contains("Feedback-Type: auth-failure\r\n"), "{m}");
        assert!(m.contains("Auth-Failure: dmarc\r\n"), "{m}");
        assert!(m.contains("From: Alice <redacted@example.com>\r\n"), "{m}");
        assert!(!m.contains("alice@"), "{m}");
    }
    let c = rusqlite::Connection::open(&db).unwrap();
    let mut st = c
        .prepare("SELECT job_id, state FROM failures ORDER BY id")
        .unwrap();
    let states: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let want = [
        ("F1", "sent"),
        ("F2", "not_requested"),
        ("F3", "sent"),
        ("F4", "not_requested"),
        ("F5", "sent"),
        ("F6", "skipped"),
        ("F7", "skipped"),
    ];
    assert_eq!(
        states,
        want.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    // Sent once: a second run sends nothing.
    let (_, stdout, _) = authmilter(&args);
    assert_eq!(
        stdout.trim(),
        "claimed 0 sent 0 skipped 0 expired 0 retry 0 late 0"
    );
    assert_eq!(sink(dir.path()).len(), 3);
}
