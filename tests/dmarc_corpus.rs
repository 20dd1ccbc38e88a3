//! The authentication_milter (fastmail, Perl) milter end-to-end scenarios run through
//! dmarc-milter: its BIND zone file served by the test DNS server, each scenario's message sent
//! with the scenario's client IP, HELO and MAIL FROM, and our Authentication-Results compared
//! with authentication_milter's by method, result and properties (not wording, order or
//! comments). Only the methods both implement are compared: spf, dkim, dmarc (and a reject
//! reply). Prints an agreement table; every disagreement must be listed below with its reason,
//! and every listed one must still occur.

use milter_client::{run, Modification, Reply, Transaction};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use testkit::corpus::corpus_dir;
use testkit::daemons::{start_dmarc, RunningMilter};
use testkit::dns::{TestDns, Zone};

const IGNORE_HOSTS: &str = "IgnoreHosts (OpenDMARC's default 127.0.0.1, ::1): a local client is not evaluated at all; authentication_milter still verifies DKIM for local clients (its LocalIP trust model)";
const TRUSTED_IP: &str = "authentication_milter's TrustedIP handler checks only DKIM for listed IPs; dmarc-milter has no such partial mode (ignore_hosts skips a client entirely), so it evaluates SPF and DMARC too";
const IP_MAP: &str = "ip_map is an authentication_milter test feature that replaces the client IP and HELO; dmarc-milter checks SPF for the real client (4.3.2.1 / 5.4.3.2 are not in marcbradshaw.net's SPF -> softfail; DMARC still passes by DKIM)";
const NO_DRYRUN: &str =
    "authentication_milter dry-run mode adds no headers; dmarc-milter has no dry-run mode";
const NO_ENFORCE: &str = "without hard_reject authentication_milter quarantines p=reject failures (X-Disposition-Quarantine, dis=quarantine); dmarc-milter follows OpenDMARC: with reject_failures off nothing is enforced, so the applied disposition is none (RFC 7489 §6.7: local policy)";
const BAD_MAILFROM: &str = "MAIL FROM 'a@b, c@d' is not an RFC 5321 path; authentication_milter falls back to the HELO identity (spf=none for bad.name.google.com), dmarc-milter checks the domain after the last '@' (marcbradshaw.net -> softfail)";
const WHITELIST: &str = "authentication_milter's DMARC whitelist (IP 99.0.0.0/8, dkim:marcbradshaw.net) overrides the reject (trusted_forwarder); dmarc-milter, like OpenDMARC, has no per-source override list, so p=reject with reject_failures is rejected (RFC 7489 §6.7 local policy)";
const RSA_SHA1: &str = "the only signature is rsa-sha1; RFC 8301 §3.1: verifiers MUST NOT consider rsa-sha1 signatures valid -> policy (authentication_milter passes it)";
const ODD_FROM: &str = "the From field is '\"Dear Customer ...\",<noreply@example.com>': a bare quoted string, then an address; authentication_milter finds no From domain (dmarc=permerror), dmarc-milter reads the one mailbox in it, example.com, which has no DMARC record (dmarc=none). RFC 7489 §6.6.1 leaves malformed From fields to local policy; the domain we evaluate is the one a mail reader shows";

/// Where we knowingly differ: (expected file, reason).
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    ("google_apps_good.local.eml", IGNORE_HOSTS),
    ("google_apps_good_case.local.eml", IGNORE_HOSTS),
    ("google_apps_good.trusted.eml", TRUSTED_IP),
    ("google_apps_good_map.eml", IP_MAP),
    ("google_apps_good_map_cidr.eml", IP_MAP),
    ("spam_headers_spf_hide_none.eml", ODD_FROM),
    ("spam_headers_hide_none.eml", ODD_FROM),
    ("dmarc_reject.eml", NO_ENFORCE),
    ("dmarc_reject_case.eml", NO_ENFORCE),
    // Both evaluate each From domain (RFC 9989; dmarc-milter applies the strictest); the one
    // difference left is the quarantine of an unenforced p=reject.
    ("dmarc_multi.eml", NO_ENFORCE),
    ("dmarc_multi_2.eml", BAD_MAILFROM),
    ("dmarc_reject_hard_whitelisted.eml", WHITELIST),
    ("dmarc_reject_wl.eml", WHITELIST),
    ("google_apps_good_dryrun.eml", NO_DRYRUN),
];

/// Extra reasons for a row already listed (shown in the table, not checked).
const ALSO: &[(&str, &str)] = &[
    ("dmarc_multi_2.eml", NO_ENFORCE),
    ("dmarc_reject_wl.eml", RSA_SHA1),
];

/// Parses the corpus's BIND-style zone file into a [`Zone`]. `;ERROR,name,type,NXDOMAIN` lines
/// need nothing (absent names are NXDOMAIN); NS records and PTR records outside in-addr.arpa
/// are not needed by SPF/DKIM/DMARC and are skipped.
fn zone_from_bind(text: &str) -> Zone {
    let mut zone = Zone::new();
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        let tokens = tokenize(line);
        let mut it = tokens.iter().map(String::as_str).peekable();
        let Some(name) = it.next() else { continue };
        if it
            .peek()
            .is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit()))
        {
            it.next();
        }
        if it.peek() == Some(&"IN") {
            it.next();
        }
        let Some(rtype) = it.next() else { continue };
        let rdata: Vec<&str> = it.collect();
        // The file repeats some records; a zone holds each once.
        let key = format!(
            "{} {rtype} {}",
            name.trim_end_matches('.').to_ascii_lowercase(),
            rdata.join(" ")
        );
        if !seen.insert(key) {
            continue;
        }
        zone = match rtype {
            "TXT" => zone.txt(name, &rdata.concat()),
            "A" => zone.a(name, rdata[0].parse::<Ipv4Addr>().expect("A")),
            "AAAA" => zone.aaaa(name, rdata[0].parse::<Ipv6Addr>().expect("AAAA")),
            "MX" => zone.mx(name, rdata[0].parse().expect("MX preference"), rdata[1]),
            "CNAME" => zone.cname(name, rdata[0]),
            "PTR" => match reverse_v4(name) {
                Some(ip) => zone.ptr(ip, rdata[0]),
                None => zone,
            },
            _ => zone,
        };
    }
    zone
}

/// Zone file tokens: quoted strings (quotes removed) and bare words; `(` `)` dropped.
fn tokenize(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() || c == '(' || c == ')' {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                s.push(c);
            }
            out.push(s);
        } else {
            let mut s = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '"' || c == '(' || c == ')' {
                    break;
                }
                s.push(c);
                chars.next();
            }
            out.push(s);
        }
    }
    out
}

fn reverse_v4(name: &str) -> Option<IpAddr> {
    let rest = name.trim_end_matches('.').strip_suffix(".in-addr.arpa")?;
    let mut octets: Vec<&str> = rest.split('.').collect();
    octets.reverse();
    octets.join(".").parse().ok()
}

/// The header fields of a message, unfolded: (name, value).
fn headers(raw: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let head = text.split("\n\n").next().unwrap_or("");
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn domain_part(s: &str) -> String {
    let s = s.trim_matches('"');
    s.rsplit_once('@')
        .map_or(s, |(_, d)| d)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// The compared facts of one A-R header: `spf=RESULT id=DOMAIN`, `dkim=RESULT d=… s=…`,
/// `dmarc=RESULT from=… p=… dis=…`, sorted. `dkim=none` without a domain (no signature) is the
/// same as no dkim result. With `hide_none`, results `none` are dropped (authentication_milter
/// omits them in that mode).
fn facts(value: &str, hide_none: bool) -> Vec<String> {
    let parsed = chassis::authres::parse(value).unwrap_or_else(|e| panic!("A-R {value}: {e:?}"));
    let mut out = Vec::new();
    for r in &parsed.results {
        if hide_none && r.result == "none" {
            continue;
        }
        let prop = |k: &str| r.prop(k).map(domain_part).unwrap_or_default();
        let fact = match r.method.as_str() {
            "spf" => {
                let mailfrom = prop("smtp.mailfrom");
                let id = if mailfrom.is_empty() {
                    prop("smtp.helo")
                } else {
                    mailfrom
                };
                format!("spf={} id={id}", r.result)
            }
            "dkim" if r.result == "none" && r.prop("header.d").is_none() => continue,
            "dkim" => format!(
                "dkim={} d={} s={}",
                r.result,
                prop("header.d"),
                r.prop("header.s").unwrap_or("")
            ),
            "dmarc" => {
                // authentication_milter: properties; ours: the comment "p=X dis=Y".
                let comment = r.comment.clone().unwrap_or_default();
                let from_comment = |k: &str| {
                    comment
                        .split([' ', ','])
                        .find_map(|t| t.strip_prefix(k))
                        .unwrap_or("")
                        .to_string()
                };
                let p = r
                    .prop("policy.published-domain-policy")
                    .map(str::to_string)
                    .unwrap_or_else(|| from_comment("p="));
                let dis = r
                    .prop("policy.applied-disposition")
                    .map(str::to_string)
                    .unwrap_or_else(|| from_comment("dis="));
                let mut f = format!("dmarc={} from={}", r.result, prop("header.from"));
                if matches!(r.result.as_str(), "pass" | "fail" | "none") {
                    f.push_str(&format!(" p={p} dis={dis}"));
                }
                f
            }
            _ => continue,
        };
        out.push(fact);
    }
    out.sort();
    out
}

struct Scenario {
    config: String,
    source: String,
    dest: String,
    ip: String,
    helo: String,
    mail_from: String,
}

fn load_scenarios(path: &Path) -> Vec<Scenario> {
    let text = std::fs::read_to_string(path).expect("SCENARIOS_milter.tsv");
    let mut lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty());
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    let col = |n: &str| {
        header
            .iter()
            .position(|c| c.starts_with(n))
            .unwrap_or_else(|| panic!("column {n}"))
    };
    let (c, s, d, ip, name, mf) = (
        col("config"),
        col("source"),
        col("expected_dest"),
        col("connect_ip"),
        col("connect_name"),
        col("mail_from"),
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let get = |i: usize| f.get(i).map(|s| s.trim().to_string()).unwrap_or_default();
            Scenario {
                config: get(c),
                source: get(s),
                dest: get(d),
                ip: get(ip),
                helo: get(name),
                mail_from: get(mf)
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string(),
            }
        })
        .collect()
}

/// dmarc-milter's configuration for an authentication_milter config directory.
fn config_for(name: &str, dns: std::net::SocketAddr) -> String {
    let (authserv, reject) = match name {
        "config/hide_none" => ("mx.example.net", false),
        "config/dmarc_reject" | "config/dmarc_reject_wl" => ("test.module", true),
        _ => ("test.module", false),
    };
    format!(
        "authserv_id = \"{authserv}\"\nreject_failures = {reject}\n\
         [resolver]\nnameservers = [\"{dns}\"]\ntimeout = 2.0\nattempts = 1\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_milter_scenarios_agreement() {
    let Some(dir) = corpus_dir("milter-e2e-authentication_milter") else {
        return;
    };
    let zone = zone_from_bind(&std::fs::read_to_string(dir.join("t/zonefile")).unwrap());
    let dns = TestDns::start(&zone).await.unwrap();
    let scenarios = load_scenarios(&dir.join("SCENARIOS_milter.tsv"));
    let tmp = tempfile::tempdir().unwrap();
    let mut milters: BTreeMap<String, RunningMilter<dmarc_policy::runtime::Runtime>> =
        BTreeMap::new();
    let mut table = Vec::new();
    let mut unexplained = Vec::new();
    let mut stale: Vec<&str> = KNOWN_DIFFERENCES.iter().map(|k| k.0).collect();
    for (n, sc) in scenarios.iter().enumerate() {
        if !milters.contains_key(&sc.config) {
            let sub = tmp.path().join(sc.config.replace('/', "_"));
            std::fs::create_dir_all(&sub).unwrap();
            let m = start_dmarc(
                &sub,
                &config_for(&sc.config, dns.addr()),
                "inet:0@127.0.0.1",
            )
            .await;
            milters.insert(sc.config.clone(), m);
        }
        let milter = &milters[&sc.config];
        let hide_none = sc.config.contains("hide_none");
        let source = std::fs::read(dir.join("t/data/source").join(&sc.source)).unwrap();
        let expected_raw = std::fs::read(dir.join("t/data/example").join(&sc.dest)).unwrap();

        // Expected: a rejection, or the A-R authentication_milter added (one not in the source).
        let source_ars: Vec<String> = headers(&source)
            .into_iter()
            .filter(|h| h.0.eq_ignore_ascii_case("Authentication-Results"))
            .map(|h| h.1)
            .collect();
        let expected: Vec<String> = if expected_raw.starts_with(b"Message rejected") {
            vec!["reject".to_string()]
        } else {
            headers(&expected_raw)
                .into_iter()
                .find(|h| {
                    h.0.eq_ignore_ascii_case("Authentication-Results") && !source_ars.contains(&h.1)
                })
                .map(|h| facts(&h.1, hide_none))
                .unwrap_or_default()
        };

        let crlf = String::from_utf8_lossy(&source)
            .replace("\r\n", "\n")
            .replace('\n', "\r\n");
        let ip: IpAddr = sc.ip.parse().expect("scenario IP");
        let mut tx = Transaction::from_message(crlf.as_bytes())
            .with_client(&sc.helo, Some(std::net::SocketAddr::new(ip, 41000)))
            .with_helo(&sc.helo)
            .with_mail_from(&sc.mail_from);
        tx.eom_macros.push(("i".into(), format!("AM{n:02}")));
        let out = run(&milter.endpoint(), &tx).await.unwrap();
        let ours: Vec<String> = match &out.reply {
            Reply::Reject => vec!["reject".to_string()],
            Reply::ReplyCode(c) if c.starts_with('5') => vec!["reject".to_string()],
            _ => out
                .modifications
                .iter()
                .find_map(|m| match m {
                    Modification::InsertHeader { name, value, .. }
                        if name == "Authentication-Results" =>
                    {
                        // AM_DEBUG=1 prints our raw header, to study a new disagreement.
                        if std::env::var_os("AM_DEBUG").is_some() {
                            eprintln!("{}: {value}", sc.dest);
                        }
                        Some(facts(
                            &value.replace("\r\n", "").replace('\n', ""),
                            hide_none,
                        ))
                    }
                    _ => None,
                })
                .unwrap_or_default(),
        };

        let agree = expected == ours;
        let known = KNOWN_DIFFERENCES.iter().find(|k| k.0 == sc.dest);
        let verdict = match (agree, known) {
            (true, _) => "agree".to_string(),
            (false, Some(k)) => {
                stale.retain(|f| *f != sc.dest);
                let also: Vec<&str> = ALSO
                    .iter()
                    .filter(|a| a.0 == sc.dest)
                    .map(|a| a.1)
                    .collect();
                let mut v = format!("differs: {}", k.1);
                for a in also {
                    v.push_str("; also: ");
                    v.push_str(a);
                }
                v
            }
            (false, None) => {
                unexplained.push(format!(
                    "{} {}: expected {expected:?}, ours {ours:?}",
                    sc.config, sc.dest
                ));
                "DIFFERS (unexplained)".to_string()
            }
        };
        table.push(format!(
            "{:<22} {:<36}\n    expected: {}\n    ours:     {}\n    {verdict}",
            sc.config,
            sc.dest,
            expected.join("; "),
            ours.join("; ")
        ));
    }
    let agreed = table.iter().filter(|l| l.ends_with("agree")).count();
    println!(
        "authentication_milter milter scenarios ({} runs; compared: spf, dkim, dmarc, reject):\n{}\nagree: {agreed} / {}",
        table.len(),
        table.join("\n"),
        table.len()
    );
    assert!(
        unexplained.is_empty(),
        "unexplained disagreements:\n{}",
        unexplained.join("\n")
    );
    assert!(
        stale.is_empty(),
        "listed differences that no longer occur: {stale:?}"
    );
    assert!(table.len() >= 30, "the corpus should have 33 milter runs");
    assert!(agreed >= 15, "too few agreements: {agreed}");
}

#[test]
fn zone_file_tokens() {
    assert_eq!(
        tokenize("x.\t3600\tIN\tTXT\t( \"v=DKIM1; k=rsa; \" p=AB )"),
        vec!["x.", "3600", "IN", "TXT", "v=DKIM1; k=rsa; ", "p=AB"]
    );
    assert_eq!(
        reverse_v4("171.82.125.74.in-addr.arpa."),
        Some("74.125.82.171".parse().unwrap())
    );
}
