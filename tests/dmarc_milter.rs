//! dmarc-milter end to end: a real DNS server on loopback, dmarc-milter on a loopback socket,
//! our milter client playing the MTA, and the SQLite history read back after each case.

use milter_client::consts::SMFIP_NOBODY;
use milter_client::{run, Modification, Outcome, Reply, Transaction};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use testkit::daemons::{start_dmarc, RunningMilter};
use testkit::dns::{BlackholeDns, TestDns, Zone};
use testkit::keys::TestKey;
use testkit::logcapture::lines_with;

const AUTHSERV: &str = "mx.test.example";
/// The client address SPF records authorise.
const GOOD_IP: &str = "192.0.2.10";
const BAD_IP: &str = "203.0.113.5";

struct Setup {
    dir: tempfile::TempDir,
    _dns: TestDns,
    milter: RunningMilter<dmarc_policy::runtime::Runtime>,
    key: TestKey,
}

fn zone(key: &TestKey) -> Zone {
    let spf = format!("v=spf1 ip4:{GOOD_IP} -all");
    Zone::new()
        .txt("example.com", &spf)
        .txt("bounce.example.com", &spf)
        .txt(
            "_dmarc.example.com",
            "v=DMARC1; p=reject; rua=mailto:dmarc@example.com",
        )
        .a("a.b.example.com", Ipv4Addr::new(192, 0, 2, 99))
        .txt("ruf.example", &format!("v=spf1 ip4:{GOOD_IP} -all"))
        .txt(
            "_dmarc.ruf.example",
            "v=DMARC1; p=none; ruf=mailto:ruf@ruf.example!50k; fo=1",
        )
        .txt("ed._domainkey.example.com", &key.dns_record())
        .txt("ed._domainkey.sub.example.com", &key.dns_record())
        .txt("softfail.example", "v=spf1 ~all")
        .txt("neutral.example", "v=spf1 ?all")
        .txt("perm.example", "v=spf1 include:nospf.example -all")
        .txt(
            "void.example",
            "v=spf1 a:nx1.void.example a:nx2.void.example a:nx3.void.example -all",
        )
        .servfail("temp.example")
        .txt("helo.example", &spf)
        .txt("strict.example", "v=spf1 -all")
        .txt("sub.strict.example", &spf)
        .txt(
            "_dmarc.strict.example",
            "v=DMARC1; p=reject; aspf=s; adkim=s",
        )
        .txt("relaxed.example", "v=spf1 -all")
        .txt("sub.relaxed.example", &spf)
        .txt("_dmarc.relaxed.example", "v=DMARC1; p=quarantine")
        .txt("pct.example", "v=spf1 -all")
        .txt("_dmarc.pct.example", "v=DMARC1; p=reject; pct=0")
        .txt("none.example", "v=spf1 -all")
        .txt("_dmarc.none.example", "v=DMARC1; p=none")
        .txt("np.example", "v=spf1 -all")
        .txt("_dmarc.np.example", "v=DMARC1; p=none; sp=none; np=reject")
        // RFC 9989 PSD DMARC: a public-suffix operator's record, for orgs without their own.
        .txt("_dmarc.psdtld", "v=DMARC1; p=reject; psd=y")
        .a("org.psdtld", Ipv4Addr::new(192, 0, 2, 98))
        .txt("org.psdtld", "v=spf1 -all")
        .txt("own.psdtld", "v=spf1 -all")
        .txt("_dmarc.own.psdtld", "v=DMARC1; p=none")
        .merge(&conformance_zone())
}

/// Records for the RFC 7489 / RFC 9989 record-discovery and organizational-domain cases.
fn conformance_zone() -> Zone {
    let spf = format!("v=spf1 ip4:{GOOD_IP} -all");
    let exists = Ipv4Addr::new(192, 0, 2, 97);
    Zone::new()
        // Two DMARC records at the author domain.
        .txt("multi.example", "v=spf1 -all")
        .txt("_dmarc.multi.example", "v=DMARC1; p=reject")
        .txt("_dmarc.multi.example", "v=DMARC1; p=none")
        // A subdomain with its own record under it, and one without.
        .txt("_dmarc.own.multi.example", "v=DMARC1; p=quarantine")
        .a("own.multi.example", exists)
        .a("bare.multi.example", exists)
        // One DMARC record among other TXT records.
        .txt("_dmarc.mixed.example", "v=spf1 -all")
        .txt("_dmarc.mixed.example", "v=DMARC1; p=reject")
        .txt("_dmarc.mixed.example", "some-site-verification=abc")
        // Version value case, tag name case.
        .txt("_dmarc.lower.example", "v=dmarc1; p=reject")
        .txt("_dmarc.upper.example", "V=DMARC1; p=reject")
        // A bare token breaks the record; below a valid parent, the parent's record applies.
        .txt("_dmarc.token.example", "v=DMARC1; p=reject; reject")
        .txt("_dmarc.bad.token2.example", "v=DMARC1; p=none; none")
        .txt("_dmarc.token2.example", "v=DMARC1; p=reject")
        .a("bad.token2.example", exists)
        // Organizational domains.
        .txt("_dmarc.sib.example", "v=DMARC1; p=reject")
        .a("x.sib.example", exists)
        .txt("y.sib.example", &spf)
        .txt("_dmarc.par.example", "v=DMARC1; p=reject")
        .txt("mail.par.example", &spf)
        .txt("_dmarc.kid.lone.example", "v=DMARC1; p=reject")
        .txt("lone.example", &spf)
        .txt("_dmarc.tldx", "v=DMARC1; p=reject")
        .a("one.tldx", exists)
        .txt("two.tldx", &spf)
}

fn base_config(dns: SocketAddr, extra: &str) -> String {
    format!(
        "authserv_id = \"{AUTHSERV}\"\nhistory = \"history.sqlite\"\n{extra}\n\
         [resolver]\nnameservers = [\"{dns}\"]\ntimeout = 1.0\nattempts = 1\n"
    )
}

async fn setup(extra: &str) -> Setup {
    let key = TestKey::ed25519();
    let dns = TestDns::start(&zone(&key)).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(dns.addr(), extra);
    let milter = start_dmarc(dir.path(), &cfg, "inet:0@127.0.0.1").await;
    Setup {
        dir,
        _dns: dns,
        milter,
        key,
    }
}

fn message(from: &str, qid: &str) -> Vec<u8> {
    format!(
        "From: Alice <{from}>\r\nTo: bob@example.org\r\nSubject: test {qid}\r\n\
         Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{qid}@example.com>\r\n\r\n\
         Hello Bob,\r\n"
    )
    .into_bytes()
}

/// Signs `raw` with the test key as `d=domain; s=ed`.
fn sign(raw: &[u8], key: &TestKey, domain: &str) -> Vec<u8> {
    key.sign_ed25519(raw, domain, "ed")
}

fn tx(raw: &[u8], qid: &str, ip: &str, mail_from: &str) -> Transaction {
    let mut tx = Transaction::from_message(raw)
        .with_client(
            "client.example.net",
            Some(format!("{ip}:40000").parse().unwrap()),
        )
        .with_helo("client.example.net")
        .with_mail_from(mail_from);
    tx.connect_macros.push(("j".into(), AUTHSERV.into()));
    tx.mail_macros.push(("i".into(), qid.into()));
    tx.eom_macros.push(("i".into(), qid.into()));
    tx
}

async fn send(s: &Setup, tx: &Transaction) -> Outcome {
    run(&s.milter.endpoint(), tx).await.expect("milter run")
}

fn inserted(out: &Outcome, name: &str) -> Vec<String> {
    out.modifications
        .iter()
        .filter_map(|m| match m {
            Modification::InsertHeader { name: n, value, .. } if n.eq_ignore_ascii_case(name) => {
                Some(
                    value
                        .trim_start()
                        .replace("\r\n\t", " ")
                        .replace("\n\t", " "),
                )
            }
            _ => None,
        })
        .collect()
}

fn auth_results(out: &Outcome) -> String {
    let ar = inserted(out, "Authentication-Results");
    assert_eq!(ar.len(), 1, "exactly one A-R expected, got {ar:?}");
    ar[0].clone()
}

/// One history row, as text columns by name.
#[derive(Debug)]
struct Row {
    cols: std::collections::HashMap<String, Option<String>>,
    dkim: Vec<(String, String, String)>,
}

impl Row {
    fn get(&self, c: &str) -> Option<&str> {
        self.cols
            .get(c)
            .unwrap_or_else(|| panic!("no column {c}"))
            .as_deref()
    }
}

fn history_path(s: &Setup) -> PathBuf {
    s.dir.path().join("history.sqlite")
}

fn history_row(path: &Path, qid: &str) -> Row {
    let conn = rusqlite::Connection::open(path).expect("open history");
    let mut stmt = conn
        .prepare("SELECT * FROM messages WHERE job_id = ?1")
        .unwrap();
    let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    let mut rows = stmt.query([qid]).unwrap();
    let row = rows
        .next()
        .unwrap()
        .unwrap_or_else(|| panic!("no history row for {qid}"));
    let mut cols = std::collections::HashMap::new();
    let mut id = 0i64;
    for (i, n) in names.iter().enumerate() {
        let v: rusqlite::types::Value = row.get(i).unwrap();
        let text = match v {
            rusqlite::types::Value::Null => None,
            rusqlite::types::Value::Integer(n) => Some(n.to_string()),
            rusqlite::types::Value::Text(t) => Some(t),
            other => Some(format!("{other:?}")),
        };
        if n == "id" {
            id = text.as_deref().unwrap().parse().unwrap();
        }
        cols.insert(n.clone(), text);
    }
    assert!(rows.next().unwrap().is_none(), "one row per message");
    let mut d = conn
        .prepare("SELECT domain, selector, result FROM dkim_results WHERE message_id = ?1")
        .unwrap();
    let dkim = d
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    Row { cols, dkim }
}

#[tokio::test]
async fn spf_results_for_mail_from() {
    let s = setup("").await;
    let cases = [
        ("SPFPASS", GOOD_IP, "alice@example.com", "pass"),
        ("SPFFAIL", BAD_IP, "alice@example.com", "fail"),
        ("SPFSOFT", BAD_IP, "x@softfail.example", "softfail"),
        ("SPFNEUT", BAD_IP, "x@neutral.example", "neutral"),
        ("SPFNONE", BAD_IP, "x@nospf.example", "none"),
        ("SPFTEMP", BAD_IP, "x@temp.example", "temperror"),
        ("SPFPERM", BAD_IP, "x@perm.example", "permerror"),
        ("SPFVOID", BAD_IP, "x@void.example", "permerror"),
    ];
    for (qid, ip, mail_from, want) in cases {
        let raw = message("alice@example.com", qid);
        let out = send(&s, &tx(&raw, qid, ip, mail_from)).await;
        assert_eq!(out.reply, Reply::Accept, "{qid}");
        let ar = auth_results(&out);
        let domain = mail_from.split('@').nth(1).unwrap();
        assert!(
            ar.contains(&format!("spf={want} smtp.mailfrom={domain}")),
            "{qid}: {ar}"
        );
        let log = lines_with(qid);
        assert!(
            log.iter()
                .any(|l| l.contains(&format!("{qid}: SPF(mailfrom): {domain} {want}"))),
            "{qid}: {log:?}"
        );
        let row = history_row(&history_path(&s), qid);
        assert_eq!(row.get("spf_domain"), Some(domain));
        assert_eq!(row.get("spf_scope"), Some("mfrom"));
        assert_eq!(row.get("spf_result"), Some(want));
    }
}

#[tokio::test]
async fn received_spf_header_when_configured() {
    let s = setup("").await;
    let raw = message("alice@example.com", "RSPF0");
    let out = send(&s, &tx(&raw, "RSPF0", GOOD_IP, "alice@example.com")).await;
    assert!(inserted(&out, "Received-SPF").is_empty(), "off by default");

    let s = setup("received_spf = true").await;
    let out = send(&s, &tx(&raw, "RSPF1", GOOD_IP, "alice@example.com")).await;
    assert_eq!(
        inserted(&out, "Received-SPF"),
        vec![format!(
            "pass ({AUTHSERV}: domain of alice@example.com designates {GOOD_IP} as permitted \
             sender) client-ip={GOOD_IP}; envelope-from=\"alice@example.com\"; \
             helo=client.example.net; receiver={AUTHSERV}; identity=mailfrom"
        )]
    );
    // The A-R stays on top (index 0, inserted last).
    let names: Vec<&str> = out
        .modifications
        .iter()
        .filter_map(|m| match m {
            Modification::InsertHeader { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["Received-SPF", "Authentication-Results"]);

    let mut t = tx(&raw, "RSPF2", BAD_IP, "");
    t.helo = "helo.example".into();
    let out = send(&s, &t).await;
    assert_eq!(
        inserted(&out, "Received-SPF"),
        vec![format!(
            "fail ({AUTHSERV}: domain of helo.example does not designate {BAD_IP} as permitted \
             sender) client-ip={BAD_IP}; envelope-from=\"\"; helo=helo.example; \
             receiver={AUTHSERV}; identity=helo"
        )]
    );
}

#[tokio::test]
async fn helo_identity_for_null_sender() {
    let s = setup("").await;
    let raw = message("alice@example.com", "HELO1");
    let mut t = tx(&raw, "HELO1", GOOD_IP, "");
    t.helo = "helo.example".into();
    let out = send(&s, &t).await;
    let ar = auth_results(&out);
    assert!(ar.contains("spf=pass smtp.helo=helo.example"), "{ar}");
    assert!(lines_with("HELO1")
        .iter()
        .any(|l| l.contains("HELO1: SPF(helo): helo.example pass")));
    let row = history_row(&history_path(&s), "HELO1");
    assert_eq!(row.get("spf_scope"), Some("helo"));
    assert_eq!(row.get("envelope_from"), Some(""));
    // HELO does not align with example.com, and nothing else passes: DMARC fails.
    assert!(
        ar.contains("dmarc=fail (p=reject dis=none) header.from=example.com"),
        "{ar}"
    );
}

#[tokio::test]
async fn dmarc_pass_via_spf_alignment_only() {
    let s = setup("").await;
    let raw = message("alice@example.com", "SPFALIGN");
    let out = send(
        &s,
        &tx(&raw, "SPFALIGN", GOOD_IP, "bounce@bounce.example.com"),
    )
    .await;
    assert_eq!(out.reply, Reply::Accept);
    let ar = auth_results(&out);
    assert!(ar.starts_with(&format!("{AUTHSERV};")), "{ar}");
    assert!(
        ar.contains("dmarc=pass (p=reject dis=none) header.from=example.com"),
        "{ar}"
    );
    assert!(lines_with("SPFALIGN")
        .iter()
        .any(|l| l.ends_with("SPFALIGN: example.com pass")));
    let row = history_row(&history_path(&s), "SPFALIGN");
    assert_eq!(row.get("spf_aligned"), Some("pass"));
    assert_eq!(row.get("dkim_aligned"), Some("fail"));
    assert_eq!(row.get("policy_domain"), Some("example.com"));
    assert_eq!(row.get("p"), Some("reject"));
    assert_eq!(row.get("adkim"), Some("r"));
    assert_eq!(row.get("rua"), Some("mailto:dmarc@example.com"));
    assert_eq!(row.get("source_ip"), Some(GOOD_IP));
    assert_eq!(row.get("envelope_from"), Some("bounce.example.com"));
    assert_eq!(row.get("header_from"), Some("example.com"));
    assert_eq!(row.get("reporter"), Some(AUTHSERV));
    assert_eq!(row.get("dmarc_result"), Some("pass"));
    assert_eq!(row.get("disposition"), Some("none"));
    assert_eq!(row.get("action"), Some("accept"));
}

#[tokio::test]
async fn dmarc_pass_via_dkim_alignment_only() {
    let s = setup("reject_failures = true").await;
    let raw = sign(
        &message("alice@example.com", "DKIMALIGN"),
        &s.key,
        "example.com",
    );
    // SPF fails (wrong IP), DKIM passes and aligns.
    let out = send(&s, &tx(&raw, "DKIMALIGN", BAD_IP, "alice@example.com")).await;
    assert!(
        !out.negotiated.has_protocol(SMFIP_NOBODY),
        "verifying DKIM itself, the daemon needs the body"
    );
    assert_eq!(out.reply, Reply::Accept);
    let ar = auth_results(&out);
    assert!(ar.contains("spf=fail"), "{ar}");
    assert!(
        ar.contains("dkim=pass header.d=example.com header.s=ed"),
        "{ar}"
    );
    assert!(ar.contains("dmarc=pass"), "{ar}");
    let row = history_row(&history_path(&s), "DKIMALIGN");
    assert_eq!(row.get("dkim_aligned"), Some("pass"));
    assert_eq!(row.get("spf_aligned"), Some("fail"));
    assert_eq!(
        row.dkim,
        vec![("example.com".into(), "ed".into(), "pass".into())]
    );
}

#[tokio::test]
async fn relaxed_and_strict_alignment_with_subdomains() {
    let s = setup("").await;
    // SPF passes for sub.relaxed.example; From is relaxed.example: relaxed alignment passes.
    let raw = message("a@relaxed.example", "RELAXED");
    let out = send(&s, &tx(&raw, "RELAXED", GOOD_IP, "b@sub.relaxed.example")).await;
    let ar = auth_results(&out);
    assert!(
        ar.contains("dmarc=pass (p=quarantine dis=none) header.from=relaxed.example"),
        "{ar}"
    );
    // The same with aspf=s fails.
    let raw = message("a@strict.example", "STRICT");
    let out = send(&s, &tx(&raw, "STRICT", GOOD_IP, "b@sub.strict.example")).await;
    let ar = auth_results(&out);
    assert!(
        ar.contains("spf=pass smtp.mailfrom=sub.strict.example"),
        "{ar}"
    );
    assert!(
        ar.contains("dmarc=fail (p=reject dis=none) header.from=strict.example"),
        "{ar}"
    );
    let row = history_row(&history_path(&s), "STRICT");
    assert_eq!(row.get("aspf"), Some("s"));
    assert_eq!(row.get("spf_aligned"), Some("fail"));
    assert_eq!(row.get("override_reason"), Some("local_policy"));
    // DKIM by a subdomain aligns relaxed (example.com has adkim=r).
    let raw = sign(
        &message("a@example.com", "DKIMSUB"),
        &s.key,
        "sub.example.com",
    );
    let out = send(&s, &tx(&raw, "DKIMSUB", BAD_IP, "a@example.com")).await;
    assert!(auth_results(&out).contains("dmarc=pass"), "{:?}", out);
}

#[tokio::test]
async fn org_domain_by_tree_walk() {
    let s = setup("").await;
    let raw = message("alice@a.b.example.com", "TREEPASS");
    let out = send(&s, &tx(&raw, "TREEPASS", GOOD_IP, "x@example.com")).await;
    let ar = auth_results(&out);
    assert!(
        ar.contains("dmarc=pass (p=reject dis=none) header.from=a.b.example.com"),
        "{ar}"
    );
    let row = history_row(&history_path(&s), "TREEPASS");
    assert_eq!(row.get("policy_domain"), Some("example.com"));
    let raw = message("alice@a.b.example.com", "TREEFAIL");
    let out = send(&s, &tx(&raw, "TREEFAIL", BAD_IP, "x@other.example")).await;
    assert!(
        auth_results(&out).contains("dmarc=fail (p=reject dis=none) header.from=a.b.example.com")
    );
}

#[tokio::test]
async fn np_for_non_existent_subdomain() {
    let s = setup("reject_failures = true").await;
    let raw = message("a@ghost.np.example", "NPREJ");
    let out = send(&s, &tx(&raw, "NPREJ", BAD_IP, "a@ghost.np.example")).await;
    assert_eq!(
        out.reply,
        Reply::ReplyCode("550 5.7.1 rejected by DMARC policy for ghost.np.example".into())
    );
    let row = history_row(&history_path(&s), "NPREJ");
    assert_eq!(row.get("np"), Some("reject"));
    assert_eq!(row.get("policy_applied"), Some("reject"));
    assert_eq!(row.get("disposition"), Some("reject"));
}

#[tokio::test]
async fn psd_record_for_orgs_without_their_own() {
    let s = setup("reject_failures = true").await;
    // org.psdtld publishes nothing: the PSD record at psdtld (psd=y) applies.
    let raw = message("a@org.psdtld", "PSDREJ");
    let out = send(&s, &tx(&raw, "PSDREJ", BAD_IP, "a@org.psdtld")).await;
    assert_eq!(
        out.reply,
        Reply::ReplyCode("550 5.7.1 rejected by DMARC policy for org.psdtld".into())
    );
    let row = history_row(&history_path(&s), "PSDREJ");
    assert_eq!(row.get("policy_domain"), Some("psdtld"));
    assert_eq!(row.get("psd"), Some("y"));
    assert_eq!(row.get("p"), Some("reject"));
    assert_eq!(row.get("dmarc_result"), Some("fail"));
    assert_eq!(row.get("disposition"), Some("reject"));
    // own.psdtld has its own record (p=none): the PSD record does not override it.
    let raw = message("a@own.psdtld", "PSDOWN");
    let out = send(&s, &tx(&raw, "PSDOWN", BAD_IP, "a@own.psdtld")).await;
    assert_eq!(out.reply, Reply::Accept);
    assert!(
        auth_results(&out).contains("dmarc=fail (p=none dis=none) header.from=own.psdtld"),
        "{}",
        auth_results(&out)
    );
    let row = history_row(&history_path(&s), "PSDOWN");
    assert_eq!(row.get("policy_domain"), Some("own.psdtld"));
    assert_eq!(row.get("psd"), Some("u"));
}

#[tokio::test]
async fn p_reject_with_and_without_reject_failures() {
    let off = setup("").await;
    let raw = message("alice@example.com", "REJOFF");
    let out = send(&off, &tx(&raw, "REJOFF", BAD_IP, "alice@example.com")).await;
    assert_eq!(out.reply, Reply::Accept);
    assert!(auth_results(&out).contains("dmarc=fail (p=reject dis=none) header.from=example.com"));
    assert!(lines_with("REJOFF")
        .iter()
        .any(|l| l.ends_with("REJOFF: example.com fail")));

    let on = setup("reject_failures = true").await;
    let raw = message("alice@example.com", "REJON");
    let out = send(&on, &tx(&raw, "REJON", BAD_IP, "alice@example.com")).await;
    assert_eq!(
        out.reply,
        Reply::ReplyCode("550 5.7.1 rejected by DMARC policy for example.com".into())
    );
    assert!(inserted(&out, "Authentication-Results").is_empty());
    let row = history_row(&history_path(&on), "REJON");
    assert_eq!(row.get("action"), Some("reject"));
    assert_eq!(row.get("disposition"), Some("reject"));

    // p=quarantine failure → milter quarantine.
    let raw = message("a@relaxed.example", "QUAR");
    let out = send(&on, &tx(&raw, "QUAR", BAD_IP, "a@relaxed.example")).await;
    assert!(
        out.modifications
            .iter()
            .any(|m| matches!(m, Modification::Quarantine(r) if r.contains("relaxed.example"))),
        "{out:?}"
    );
    assert!(auth_results(&out).contains("dmarc=fail (p=quarantine dis=quarantine)"));

    // pct=0: a p=reject failure is sampled out to quarantine.
    let raw = message("a@pct.example", "PCT0");
    let out = send(&on, &tx(&raw, "PCT0", BAD_IP, "a@pct.example")).await;
    assert!(out
        .modifications
        .iter()
        .any(|m| matches!(m, Modification::Quarantine(_))));
    let row = history_row(&history_path(&on), "PCT0");
    assert_eq!(row.get("pct"), Some("0"));
    assert_eq!(row.get("override_reason"), Some("sampled_out"));
}

#[tokio::test]
async fn multiple_and_missing_from() {
    let s = setup("multi_from = \"permerror\"").await;
    let raw = b"From: a@example.com, b@evil.example\r\nDate: x\r\nSubject: m\r\n\r\nbody\r\n";
    let out = send(&s, &tx(raw, "MULTI1", GOOD_IP, "a@example.com")).await;
    assert_eq!(out.reply, Reply::Accept);
    let ar = auth_results(&out);
    assert!(ar.contains("dmarc=permerror"), "{ar}");
    assert!(lines_with("MULTI1")
        .iter()
        .any(|l| l.contains("MULTI1: multi-valued From field detected")));
    let row = history_row(&history_path(&s), "MULTI1");
    assert_eq!(row.get("dmarc_result"), Some("permerror"));
    assert_eq!(row.get("header_from"), Some("evil.example,example.com"));

    let raw = b"To: b@example.org\r\nDate: x\r\nSubject: m\r\n\r\nbody\r\n";
    let out = send(&s, &tx(raw, "NOFROM", GOOD_IP, "a@example.com")).await;
    assert_eq!(out.reply, Reply::Accept);
    assert!(auth_results(&out).contains("dmarc=permerror"));

    let strict = setup("reject_multi_value_from = true\nrequired_headers = true").await;
    let raw = b"From: a@example.com, b@evil.example\r\nDate: x\r\nSubject: m\r\n\r\nbody\r\n";
    let out = send(&strict, &tx(raw, "MULTI2", GOOD_IP, "a@example.com")).await;
    assert_eq!(
        out.reply,
        Reply::ReplyCode("550 5.7.1 multi-valued From field detected".into())
    );
    let raw = b"To: b@example.org\r\nDate: x\r\n\r\nbody\r\n";
    let out = send(&strict, &tx(raw, "NOFROM2", GOOD_IP, "a@example.com")).await;
    assert_eq!(
        out.reply,
        Reply::ReplyCode("550 5.7.1 RFC5322 requirement error: not exactly one From field".into())
    );
}

#[tokio::test]
async fn dns_down_is_temperror_and_configured_action() {
    let hole = BlackholeDns::start().await.unwrap();
    for (extra, qid, want) in [
        ("", "DNSDOWN1", Reply::Accept),
        (
            "[actions]\ntemperror = \"tempfail\"",
            "DNSDOWN2",
            Reply::ReplyCode("451 4.7.5 temporary DMARC evaluation error for example.com".into()),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = base_config(hole.addr(), extra).replace("timeout = 1.0", "timeout = 0.3");
        let m = start_dmarc(dir.path(), &cfg, "inet:0@127.0.0.1").await;
        let raw = message("alice@example.com", qid);
        let out = run(&m.endpoint(), &tx(&raw, qid, GOOD_IP, "alice@example.com"))
            .await
            .unwrap();
        assert_eq!(out.reply, want, "{qid}");
        if want == Reply::Accept {
            let ar = auth_results(&out);
            assert!(ar.contains("spf=temperror"), "{ar}");
            assert!(
                ar.contains("dmarc=temperror header.from=example.com"),
                "{ar}"
            );
        }
        let row = history_row(&dir.path().join("history.sqlite"), qid);
        assert_eq!(row.get("dmarc_result"), Some("temperror"));
    }
}

#[tokio::test]
async fn dns_budget_per_message() {
    // Each lookup would wait 4 s; the message budget is 1 s for SPF, DKIM and DMARC together.
    let hole = BlackholeDns::start().await.unwrap();
    for (extra, qid) in [
        ("", "BUDGET1"),
        ("[actions]\ntemperror = \"tempfail\"", "BUDGET2"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            "{}[limits]\nmessage_timeout = 1\n",
            base_config(hole.addr(), extra).replace("timeout = 1.0", "timeout = 4.0")
        );
        let m = start_dmarc(dir.path(), &cfg, "inet:0@127.0.0.1").await;
        let raw = message("alice@example.com", qid);
        let started = std::time::Instant::now();
        let out = run(&m.endpoint(), &tx(&raw, qid, GOOD_IP, "alice@example.com"))
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_millis(3500),
            "{qid}: took {took:?}"
        );
        if extra.is_empty() {
            assert_eq!(out.reply, Reply::Accept);
            let ar = auth_results(&out);
            assert!(
                ar.contains("spf=temperror smtp.mailfrom=example.com"),
                "{ar}"
            );
            assert!(ar.contains("dmarc=temperror"), "{ar}");
            assert!(ar.contains("header.from=example.com"), "{ar}");
        } else {
            assert_eq!(
                out.reply,
                Reply::ReplyCode(
                    "451 4.7.5 temporary DMARC evaluation error for example.com".into()
                )
            );
        }
        assert!(lines_with(qid)
            .iter()
            .any(|l| l.contains("exceeded the message budget of 1s")));
        let row = history_row(&dir.path().join("history.sqlite"), qid);
        assert_eq!(row.get("dmarc_result"), Some("temperror"));
        assert_eq!(row.get("spf_result"), Some("temperror"));
    }
}

#[tokio::test]
async fn trusted_upstream_results_and_forged_headers() {
    let s = setup("trusted_authserv_ids = [\"dkim.upstream.example\", \"second.example\"]").await;
    assert!(
        lines_with("trusting Authentication-Results from authserv-ids:")
            .iter()
            .any(|l| l.ends_with("authserv-ids: dkim.upstream.example, second.example")),
        "start-up log line"
    );
    // The trusted upstream says DKIM passed for example.com; an untrusted header claims the
    // same for evil.example's mail; and a header forged with our own id must be removed.
    let body = "From: a@example.com\r\nTo: b@example.org\r\nSubject: t\r\nDate: x\r\n\r\nbody\r\n";
    let raw = format!(
        "Authentication-Results: evil.example; dkim=pass header.d=evil.example header.s=x\r\n\
         Authentication-Results: {AUTHSERV}; dmarc=pass header.from=evil.example\r\n\
         Authentication-Results: dkim.upstream.example; dkim=pass header.d=example.com header.s=up\r\n{body}"
    );
    let out = send(&s, &tx(raw.as_bytes(), "TRUST1", BAD_IP, "a@example.com")).await;
    assert!(
        out.negotiated.has_protocol(SMFIP_NOBODY),
        "with trusted upstream results no body is asked for, as OpenDMARC"
    );
    let ar = auth_results(&out);
    assert!(
        ar.contains("dmarc=pass (p=reject dis=none) header.from=example.com"),
        "{ar}"
    );
    assert!(
        !ar.contains("dkim="),
        "upstream DKIM results are not repeated: {ar}"
    );
    assert!(out.modifications.iter().any(|m| matches!(
        m,
        Modification::ChangeHeader { name, index: 2, value } if name == "Authentication-Results" && value.is_empty()
    )), "{:?}", out.modifications);
    let row = history_row(&history_path(&s), "TRUST1");
    assert_eq!(
        row.dkim,
        vec![("example.com".into(), "up".into(), "pass".into())]
    );

    // Only an untrusted header claims a pass: DMARC fails.
    let raw = format!(
        "Authentication-Results: evil.example; dkim=pass header.d=example.com header.s=x\r\n{body}"
    );
    let out = send(&s, &tx(raw.as_bytes(), "TRUST2", BAD_IP, "a@example.com")).await;
    assert!(auth_results(&out).contains("dmarc=fail"), "{:?}", out);
    assert!(history_row(&history_path(&s), "TRUST2").dkim.is_empty());

    // Many results in one trusted header: parsed, bounded, the passing one found.
    let mut many = String::from("Authentication-Results: dkim.upstream.example");
    for i in 0..200 {
        many.push_str(&format!("; dkim=fail header.d=d{i}.example header.s=s"));
    }
    many.push_str("; dkim=pass header.d=example.com header.s=up\r\n");
    let raw = format!("{many}{body}");
    let out = send(&s, &tx(raw.as_bytes(), "TRUST3", BAD_IP, "a@example.com")).await;
    assert_eq!(out.reply, Reply::Accept);
    assert!(auth_results(&out).contains("dmarc="), "{:?}", out);
}

#[tokio::test]
async fn ignored_connections_and_senders() {
    let s = setup("ignore_mail_from = [\"example.com\"]").await;
    let raw = message("alice@example.com", "IGNMF");
    let out = send(&s, &tx(&raw, "IGNMF", BAD_IP, "alice@example.com")).await;
    assert_eq!(out.reply, Reply::Accept);
    assert!(inserted(&out, "Authentication-Results").is_empty());
    assert!(lines_with("IGNMF")
        .iter()
        .any(|l| l.contains("IGNMF: ignoring mail from example.com")));

    let raw = message("alice@example.com", "IGNLOCAL");
    let out = send(&s, &tx(&raw, "IGNLOCAL", "127.0.0.1", "alice@example.com")).await;
    assert!(inserted(&out, "Authentication-Results").is_empty());
    assert!(!lines_with("ignoring connection from").is_empty());
}

#[tokio::test]
async fn store_failure_tempfails() {
    let s = setup("").await;
    // Make the database unwritable behind the daemon's back.
    let conn = rusqlite::Connection::open(history_path(&s)).unwrap();
    conn.execute_batch("DROP TABLE dkim_results; DROP TABLE messages;")
        .unwrap();
    drop(conn);
    let raw = message("alice@example.com", "STOREFAIL");
    let out = send(&s, &tx(&raw, "STOREFAIL", GOOD_IP, "alice@example.com")).await;
    assert_eq!(
        out.reply,
        Reply::ReplyCode("451 4.3.0 DMARC history store unavailable, try again later".into())
    );
    assert!(lines_with("STOREFAIL")
        .iter()
        .any(|l| l.contains("history store") && l.contains("cannot record message")));
}

/// Issue #15: an evaluation that outlives its deadline (every DNS lookup hangs, then the
/// history database stays locked) ends in 451 and leaves no history row: the row is committed
/// before the deadline or not at all. The retry, through a daemon whose DNS answers and
/// sharing the same history file, is recorded once, and a second delivery attempt of the same
/// message (new queue id, same envelope and Message-ID) does not add a second row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_cancels_the_record_and_a_retry_is_one_row() {
    let hole = BlackholeDns::start().await.unwrap();
    let key = TestKey::ed25519();
    let good = TestDns::start(&zone(&key)).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let slow_dir = dir.path().join("slow");
    std::fs::create_dir(&slow_dir).unwrap();
    let history = dir.path().join("history.sqlite");
    let history_line = format!("history = \"{}\"\n", history.display());
    let slow_cfg = format!(
        "{}[limits]\nmessage_timeout = 1\n",
        base_config(hole.addr(), "")
            .replace("history = \"history.sqlite\"\n", &history_line)
            .replace("timeout = 1.0", "timeout = 4.0")
    );
    let slow = start_dmarc(&slow_dir, &slow_cfg, "inet:0@127.0.0.1").await;
    let fast_cfg =
        base_config(good.addr(), "").replace("history = \"history.sqlite\"\n", &history_line);
    let fast = start_dmarc(dir.path(), &fast_cfg, "inet:0@127.0.0.1").await;

    // Another writer holds the database for longer than the whole deadline.
    let blocker = rusqlite::Connection::open(&history).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let raw = message("alice@example.com", "DEADLINE1");
    let started = std::time::Instant::now();
    let out = run(
        &slow.endpoint(),
        &tx(&raw, "DEADLINE1", GOOD_IP, "alice@example.com"),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(
        matches!(&out.reply, Reply::ReplyCode(t) if t.starts_with("451")),
        "{:?}",
        out.reply
    );
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        lines_with("DEADLINE1: history store").len(),
        1,
        "the failed record is logged"
    );
    // Past the deadline nothing may land, even once the database is free again.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    blocker.execute_batch("ROLLBACK").unwrap();
    let count = |conn: &rusqlite::Connection| -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM messages WHERE header_from = 'example.com' AND envelope_from = 'example.com'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(count(&blocker), 0, "a tempfailed message left a row");

    // The MTA retries: a new queue id, the same message.
    for qid in ["DEADLINE2", "DEADLINE3"] {
        let out = run(
            &fast.endpoint(),
            &tx(&raw, qid, GOOD_IP, "alice@example.com"),
        )
        .await
        .unwrap();
        assert_eq!(out.reply, Reply::Accept, "{qid}");
    }
    assert_eq!(count(&blocker), 1, "the retried message is one row");
    let row = history_row(&history, "DEADLINE2");
    assert_eq!(row.get("dmarc_result"), Some("pass"));
    assert_eq!(
        lines_with("DEADLINE3: already recorded in the history").len(),
        1
    );
}

/// The A-R `dmarc=` results of one message (several when several From domains are evaluated).
fn dmarc_results(out: &Outcome) -> Vec<String> {
    auth_results(out)
        .split(';')
        .map(str::trim)
        .filter(|r| r.starts_with("dmarc="))
        .map(str::to_string)
        .collect()
}

/// An unaligned message from `from` (SPF fails, no DKIM) with `reject_failures` on: whether
/// the domain's policy is applied shows in the reply and the A-R.
async fn unaligned(s: &Setup, from: &str, qid: &str) -> Outcome {
    let raw = message(from, qid);
    send(s, &tx(&raw, qid, BAD_IP, from)).await
}

/// RFC 7489 §6.6.3 step 2 (and RFC 9989 §4.10.1): when the name that would supply the policy
/// has several DMARC records, DMARC is not applied; several records above a subdomain that has
/// its own do not matter; DMARC records mixed with other TXT records count alone.
#[tokio::test]
async fn rfc7489_6_6_3_several_records_mean_no_dmarc() {
    let s = setup("reject_failures = true").await;
    let out = unaligned(&s, "a@multi.example", "MREC1").await;
    assert_eq!(out.reply, Reply::Accept, "{out:?}");
    assert_eq!(
        dmarc_results(&out),
        ["dmarc=none reason=\"2 DMARC records at _dmarc.multi.example, DMARC not applied (RFC 7489 section 6.6.3)\" (p=none dis=none) header.from=multi.example"]
    );
    assert!(
        lines_with("MREC1").iter().any(|l| l.ends_with(
            "MREC1: multi.example: 2 DMARC records at _dmarc.multi.example, DMARC not applied (RFC 7489 section 6.6.3)"
        )),
        "{:?}",
        lines_with("MREC1")
    );
    let row = history_row(&history_path(&s), "MREC1");
    assert_eq!(row.get("dmarc_result"), Some("none"));
    assert_eq!(row.get("policy_domain"), None);
    // The walk from a subdomain without a record reaches the same two records.
    let out = unaligned(&s, "a@bare.multi.example", "MREC2").await;
    assert_eq!(out.reply, Reply::Accept);
    assert!(dmarc_results(&out)[0]
        .starts_with("dmarc=none reason=\"2 DMARC records at _dmarc.multi.example"));
    // A subdomain with its own single record: that record applies (p=quarantine).
    let out = unaligned(&s, "a@own.multi.example", "MREC3").await;
    assert!(
        out.modifications
            .iter()
            .any(|m| matches!(m, Modification::Quarantine(r) if r.contains("own.multi.example"))),
        "{out:?}"
    );
    // One DMARC record among other TXT records at _dmarc: applied.
    let out = unaligned(&s, "a@mixed.example", "MREC4").await;
    assert_eq!(
        out.reply,
        Reply::ReplyCode("550 5.7.1 rejected by DMARC policy for mixed.example".into())
    );
}

/// RFC 7489 §6.3: `v` must be `DMARC1` precisely (the tag name itself is case-insensitive, as
/// ABNF literals are); a record breaking the record ABNF (a bare token) is not a DMARC record:
/// discarded like any other TXT record, so the walk goes on to the parent.
#[tokio::test]
async fn rfc7489_6_3_version_and_record_syntax() {
    let s = setup("reject_failures = true").await;
    let out = unaligned(&s, "a@lower.example", "VCASE1").await;
    assert_eq!(out.reply, Reply::Accept, "v=dmarc1 is no record: {out:?}");
    assert_eq!(
        dmarc_results(&out),
        ["dmarc=none (p=none dis=none) header.from=lower.example"]
    );
    let out = unaligned(&s, "a@upper.example", "VCASE2").await;
    assert_eq!(
        out.reply,
        Reply::ReplyCode("550 5.7.1 rejected by DMARC policy for upper.example".into())
    );
    let out = unaligned(&s, "a@token.example", "TOKEN1").await;
    assert_eq!(out.reply, Reply::Accept, "bare token: no record: {out:?}");
    assert_eq!(
        dmarc_results(&out),
        ["dmarc=none (p=none dis=none) header.from=token.example"]
    );
    // bad.token2.example's own record is broken: token2.example's p=reject applies.
    let out = unaligned(&s, "a@bad.token2.example", "TOKEN2").await;
    assert_eq!(
        out.reply,
        Reply::ReplyCode("550 5.7.1 rejected by DMARC policy for bad.token2.example".into())
    );
    let row = history_row(&history_path(&s), "TOKEN2");
    assert_eq!(row.get("policy_domain"), Some("token2.example"));
    assert_eq!(row.get("sp"), Some("reject"));
}

/// RFC 9989 (several RFC5322.From domains): every domain is evaluated and the strictest
/// disposition applies; each domain has its own `dmarc=` result and the history row names all
/// of them. `multi_from = "permerror"` keeps OpenDMARC's answer (see multiple_and_missing_from).
#[tokio::test]
async fn rfc9989_several_author_domains_strictest_policy() {
    let s = setup("reject_failures = true").await;
    // example.com passes (SPF aligned); relaxed.example fails with p=quarantine.
    let raw = b"From: a@example.com, b@relaxed.example\r\nDate: x\r\nSubject: m\r\n\r\nbody\r\n";
    let out = send(&s, &tx(raw, "MFROM1", GOOD_IP, "a@example.com")).await;
    assert!(
        out.modifications
            .iter()
            .any(|m| matches!(m, Modification::Quarantine(r) if r == "quarantined by DMARC policy for relaxed.example")),
        "{out:?}"
    );
    assert_eq!(
        dmarc_results(&out),
        [
            "dmarc=pass (p=reject dis=none) header.from=example.com",
            "dmarc=fail (p=quarantine dis=quarantine) header.from=relaxed.example",
        ]
    );
    assert!(lines_with("MFROM1").iter().any(|l| l.ends_with(
        "MFROM1: multi-valued From field detected; applying the strictest policy of example.com, relaxed.example"
    )));
    let row = history_row(&history_path(&s), "MFROM1");
    assert_eq!(row.get("header_from"), Some("example.com,relaxed.example"));
    assert_eq!(row.get("disposition"), Some("quarantine"));
    assert_eq!(row.get("policy_domain"), Some("relaxed.example"));
    // Both fail: p=reject beats p=none.
    let raw =
        b"From: a@none.example\r\nFrom: b@example.com\r\nDate: x\r\nSubject: m\r\n\r\nbody\r\n";
    let out = send(&s, &tx(raw, "MFROM2", BAD_IP, "a@none.example")).await;
    assert_eq!(
        out.reply,
        Reply::ReplyCode("550 5.7.1 rejected by DMARC policy for example.com".into())
    );
    let row = history_row(&history_path(&s), "MFROM2");
    assert_eq!(row.get("header_from"), Some("example.com,none.example"));
    assert_eq!(row.get("disposition"), Some("reject"));
}

/// RFC 9989 §4.10.2 organizational domains, step by step, and where RFC 7489's Public Suffix
/// List answer would differ (docs/dmarc-milter.md lists each):
/// 1. siblings under a parent that publishes: both have the parent as organizational domain
///    (the record with the fewest labels found by the walk): relaxed SPF alignment → pass
///    (PSL: same answer);
/// 2. a parent that publishes, an SPF identity below it without a record → pass (PSL: same);
/// 3. only the subdomain publishes: its organizational domain is itself, its parent's is the
///    parent (no record anywhere above) → not aligned → fail (PSL: `lone.example` for both,
///    aligned → pass);
/// 4. a record at a TLD-like name without `psd=`: the walk makes that name the organizational
///    domain of everything under it, so siblings align → pass (PSL: `one.tldx` and `two.tldx`
///    are separate registrations → fail).
#[tokio::test]
async fn rfc9989_4_10_2_organizational_domains() {
    let s = setup("").await;
    let cases = [
        (
            "a@x.sib.example",
            "b@y.sib.example",
            "ORG1",
            "dmarc=pass (p=reject dis=none) header.from=x.sib.example",
        ),
        (
            "a@par.example",
            "b@mail.par.example",
            "ORG2",
            "dmarc=pass (p=reject dis=none) header.from=par.example",
        ),
        (
            "a@kid.lone.example",
            "b@lone.example",
            "ORG3",
            "dmarc=fail (p=reject dis=none) header.from=kid.lone.example",
        ),
        (
            "a@one.tldx",
            "b@two.tldx",
            "ORG4",
            "dmarc=pass (p=reject dis=none) header.from=one.tldx",
        ),
    ];
    for (from, mail_from, qid, want) in cases {
        let raw = message(from, qid);
        let out = send(&s, &tx(&raw, qid, GOOD_IP, mail_from)).await;
        assert_eq!(dmarc_results(&out), [want], "{qid}: {}", auth_results(&out));
        assert!(
            auth_results(&out).contains(&format!(
                "spf=pass smtp.mailfrom={}",
                mail_from.split('@').nth(1).unwrap()
            )),
            "{qid}: SPF itself must pass: {}",
            auth_results(&out)
        );
    }
}

/// (qid, ruf, fo, source_ip, mail_from, auth_results, headers) of each kept failure.
fn failures(path: &Path) -> Vec<[String; 7]> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut st = c
        .prepare(
            "SELECT job_id, ruf, fo, source_ip, mail_from, auth_results, headers FROM failures
             ORDER BY id",
        )
        .unwrap();
    st.query_map([], |r| {
        Ok([
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ])
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// With `failure_reports = true` a failing message of a domain with `ruf=` is kept for the
/// report program (with its headers, our A-R and the record's fo=); report mail, domains
/// without ruf and a configuration without the switch keep nothing.
#[tokio::test]
async fn failure_reports_keep_failing_mail_of_ruf_domains() {
    let s = setup("failure_reports = true").await;
    let raw = message("alice@ruf.example", "FAIL1");
    send(&s, &tx(&raw, "FAIL1", BAD_IP, "alice@ruf.example")).await;
    let raw = message("alice@example.com", "NORUF");
    send(&s, &tx(&raw, "NORUF", BAD_IP, "alice@example.com")).await;
    let report = String::from_utf8(message("alice@ruf.example", "REPORT"))
        .unwrap()
        .replace(
            "Subject: test REPORT",
            "Subject: test REPORT\r\nContent-Type: multipart/report; report-type=feedback-report",
        );
    send(
        &s,
        &tx(report.as_bytes(), "REPORT", BAD_IP, "alice@ruf.example"),
    )
    .await;
    let kept = failures(&history_path(&s));
    assert_eq!(kept.len(), 1, "{kept:?}");
    let [qid, ruf, fo, ip, mail_from, ar, headers] = &kept[0];
    assert_eq!(
        (
            qid.as_str(),
            ruf.as_str(),
            fo.as_str(),
            ip.as_str(),
            mail_from.as_str()
        ),
        (
            "FAIL1",
            "mailto:ruf@ruf.example!51200",
            "1",
            BAD_IP,
            "alice@ruf.example"
        )
    );
    assert!(ar.starts_with(&format!("{AUTHSERV};")), "{ar}");
    assert!(
        ar.contains("dmarc=fail (p=none dis=none) header.from=ruf.example"),
        "{ar}"
    );
    assert!(
        headers.starts_with("From: Alice <alice@ruf.example>\r\n"),
        "{headers}"
    );
    assert!(headers.contains("Subject: test FAIL1\r\n"), "{headers}");
    assert!(!headers.contains("Hello Bob"), "{headers}");

    let off = setup("").await;
    let raw = message("alice@ruf.example", "FAIL2");
    send(&off, &tx(&raw, "FAIL2", BAD_IP, "alice@ruf.example")).await;
    assert!(failures(&history_path(&off)).is_empty());
}
