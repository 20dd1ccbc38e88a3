//! `authmilter audit DOMAIN`: one report on a domain's mail DNS. Every check is DNS only; the
//! MTA-STS policy itself (an HTTPS fetch) is not retrieved.

use crate::dns::{bare, Answer, Dns};
use crate::report::{Finding, Report, Status};
use crate::testkey;
use chassis::mailauth::common::TxtRecordParser;
use chassis::mailauth::spf::{Macro, Mechanism, Qualifier, Spf};
use chassis::mailauth::SpfResult;
use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

/// What to audit.
#[derive(Debug, Clone, Default)]
pub struct AuditOptions {
    pub domain: String,
    /// DKIM selectors to look up (DKIM keys cannot be discovered from DNS).
    pub selectors: Vec<String>,
}

/// RFC 7208 §4.6.4: at most 10 terms that cause DNS lookups.
pub const SPF_LOOKUP_LIMIT: usize = 10;
/// RFC 7208 §4.6.4: at most 2 lookups that return nothing ("void lookups").
pub const SPF_VOID_LIMIT: usize = 2;

/// Runs every check.
pub async fn audit(dns: &Dns, opts: &AuditOptions) -> Report {
    let domain = bare(&opts.domain);
    let mut findings = Vec::new();
    let mx_addresses = check_mx(dns, &domain, &mut findings).await;
    check_spf(dns, &domain, &mx_addresses, &mut findings).await;
    for selector in &opts.selectors {
        let (f, _) = testkey::check_record(dns, &domain, selector, "dkim").await;
        findings.extend(f);
    }
    check_dmarc(dns, &domain, &mut findings).await;
    check_mta_sts(dns, &domain, &mut findings).await;
    check_tls_rpt(dns, &domain, &mut findings).await;
    Report::new("audit", &domain, findings)
}

/// MX hosts, their addresses, PTR and forward-confirmed reverse DNS. Returns (host, address) of
/// every MX address, for the SPF check.
async fn check_mx(dns: &Dns, domain: &str, out: &mut Vec<Finding>) -> Vec<(String, IpAddr)> {
    let hosts: Vec<(u16, String)> = match dns.mx(domain).await {
        Answer::Found(v) => {
            if v.len() == 1 && v[0].1.is_empty() {
                out.push(Finding::ok(
                    "mx",
                    domain,
                    "null MX (RFC 7505): the domain accepts no mail",
                ));
                return Vec::new();
            }
            let list: Vec<String> = v.iter().map(|(p, h)| format!("{p} {h}")).collect();
            out.push(Finding::ok(
                "mx",
                domain,
                format!("{} MX host(s): {}", v.len(), list.join(", ")),
            ));
            v
        }
        Answer::Empty => match dns.addresses(domain).await {
            Answer::Found(_) => {
                out.push(Finding::warn(
                    "mx",
                    domain,
                    "no MX record; senders fall back to the domain's own address (implicit MX)",
                    format!("publish an MX record ('{domain}. IN MX 10 mail.{domain}.'), or a null MX if the domain takes no mail"),
                ));
                vec![(0, domain.to_string())]
            }
            _ => {
                out.push(Finding::fail(
                    "mx",
                    domain,
                    "no MX record and no address: nobody can deliver mail to this domain",
                    format!("publish an MX record ('{domain}. IN MX 10 mail.{domain}.'), or a null MX ('{domain}. IN MX 0 .') if that is intended"),
                ));
                return Vec::new();
            }
        },
        Answer::Error(e) => {
            out.push(Finding::fail(
                "mx",
                domain,
                format!("MX lookup failed: {e}"),
                "check the domain's name servers (and the resolver settings)",
            ));
            return Vec::new();
        }
    };
    let mut addresses = Vec::new();
    for (_, host) in &hosts {
        if let Answer::Found(target) = dns.cname(host).await {
            out.push(Finding::warn(
                "mx.cname",
                host,
                format!("the MX target is an alias (CNAME to {target})"),
                format!("point the MX record at the canonical name {target} (RFC 2181 §10.3, RFC 5321 §5.1)"),
            ));
        }
        let addrs = match dns.addresses(host).await {
            Answer::Found(a) => a,
            Answer::Empty => {
                out.push(Finding::fail(
                    "mx.address",
                    host,
                    "MX host has no A or AAAA record",
                    "publish the mail server's address, or remove this MX record",
                ));
                continue;
            }
            Answer::Error(e) => {
                out.push(Finding::fail(
                    "mx.address",
                    host,
                    format!("address lookup failed: {e}"),
                    "check the name servers of the MX host's zone",
                ));
                continue;
            }
        };
        let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        out.push(Finding::ok("mx.address", host, list.join(", ")));
        for ip in addrs {
            check_rdns(dns, host, ip, out).await;
            addresses.push((host.clone(), ip));
        }
    }
    addresses
}

/// PTR and forward-confirmed reverse DNS (the PTR name resolves back to the address).
async fn check_rdns(dns: &Dns, host: &str, ip: IpAddr, out: &mut Vec<Finding>) {
    let subject = ip.to_string();
    let names = match dns.ptr(ip).await {
        Answer::Found(n) => n,
        Answer::Empty => {
            out.push(Finding::fail(
                "mx.ptr",
                &subject,
                format!("no PTR record for this address of {host}"),
                format!("ask whoever runs the address (hosting provider) to set its PTR to {host}; many receivers refuse mail from addresses without reverse DNS"),
            ));
            return;
        }
        Answer::Error(e) => {
            out.push(Finding::warn(
                "mx.ptr",
                &subject,
                format!("PTR lookup failed: {e}"),
                "check the reverse zone's name servers",
            ));
            return;
        }
    };
    out.push(Finding::ok(
        "mx.ptr",
        &subject,
        format!("PTR {}", names.join(", ")),
    ));
    let mut confirmed = None;
    for n in &names {
        if let Answer::Found(back) = dns.addresses(n).await {
            if back.contains(&ip) {
                confirmed = Some(n.clone());
                break;
            }
        }
    }
    out.push(match confirmed {
        Some(n) => Finding::ok(
            "mx.fcrdns",
            &subject,
            format!("forward-confirmed: {n} resolves back to {ip}"),
        ),
        None => Finding::warn(
            "mx.fcrdns",
            &subject,
            format!("PTR name(s) {} do not resolve back to {ip}", names.join(", ")),
            format!("publish an A/AAAA record for the PTR name pointing at {ip}, or set the PTR to {host}"),
        ),
    });
}

/// What walking an SPF record found.
#[derive(Debug, Default)]
pub struct SpfWalk {
    /// Terms that cost a DNS lookup (include, a, mx, ptr, exists, redirect), at every level.
    pub lookups: usize,
    /// Lookups that returned no records.
    pub void: Vec<String>,
    /// Structural problems that make the record a permerror (or are deprecated).
    pub problems: Vec<Finding>,
    visited: HashSet<String>,
}

fn macro_target(m: &Macro, current: &str) -> Option<String> {
    match m {
        Macro::None => Some(current.to_string()),
        Macro::Literal(b) => Some(bare(&String::from_utf8_lossy(b))),
        _ => None,
    }
}

/// Fetches the one SPF record of `domain`.
async fn spf_record(dns: &Dns, domain: &str) -> Answer<String> {
    match dns.txt_with_prefix(domain, "v=spf1").await {
        Answer::Found(v) if v.len() > 1 => Answer::Error(format!(
            "{} SPF records (RFC 7208 §4.5: permerror)",
            v.len()
        )),
        Answer::Found(mut v) => Answer::Found(v.remove(0)),
        Answer::Empty => Answer::Empty,
        Answer::Error(e) => Answer::Error(e),
    }
}

type BoxFut<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Counts lookups through includes and redirects (each distinct domain walked once).
pub fn walk_spf<'a>(dns: &'a Dns, domain: String, spf: Spf, w: &'a mut SpfWalk) -> BoxFut<'a> {
    Box::pin(async move {
        w.visited.insert(domain.clone());
        let has_all = spf
            .directives
            .iter()
            .any(|d| matches!(d.mechanism, Mechanism::All));
        let mut follow: Vec<(String, &'static str)> = Vec::new();
        for d in spf.directives.iter() {
            match &d.mechanism {
                Mechanism::Include { macro_string } => {
                    w.lookups += 1;
                    if let Some(t) = macro_target(macro_string, &domain) {
                        follow.push((t, "include"));
                    }
                }
                Mechanism::A { macro_string, .. } => {
                    w.lookups += 1;
                    if let Some(t) = macro_target(macro_string, &domain) {
                        if dns.addresses(&t).await == Answer::Empty {
                            w.void.push(format!("a:{t}"));
                        }
                    }
                }
                Mechanism::Mx { macro_string, .. } => {
                    w.lookups += 1;
                    if let Some(t) = macro_target(macro_string, &domain) {
                        match dns.mx(&t).await {
                            Answer::Empty => w.void.push(format!("mx:{t}")),
                            Answer::Found(hosts) if hosts.len() > 10 => {
                                w.problems.push(Finding::fail(
                                    "spf.mx",
                                    &t,
                                    format!("mx:{t} has {} MX hosts; SPF looks at no more than 10 (permerror)", hosts.len()),
                                    "use ip4:/ip6: for the sending hosts instead of mx",
                                ))
                            }
                            _ => {}
                        }
                    }
                }
                Mechanism::Ptr { .. } => {
                    w.lookups += 1;
                    w.problems.push(Finding::warn(
                        "spf.ptr",
                        &domain,
                        "the ptr mechanism is slow and deprecated (RFC 7208 §5.5)",
                        "replace ptr with ip4:/ip6: or a: terms",
                    ));
                }
                Mechanism::Exists { .. } => w.lookups += 1,
                Mechanism::Ip4 { .. } | Mechanism::Ip6 { .. } | Mechanism::All => {}
            }
        }
        if let Some(r) = &spf.redirect {
            w.lookups += 1;
            if !has_all {
                if let Some(t) = macro_target(r, &domain) {
                    follow.push((t, "redirect"));
                }
            }
        }
        for (target, how) in follow {
            if w.visited.contains(&target) {
                w.problems.push(Finding::fail(
                    "spf.include",
                    &target,
                    format!("{how}:{target} loops back to a record already included"),
                    "remove the circular include/redirect",
                ));
                continue;
            }
            match spf_record(dns, &target).await {
                Answer::Found(text) => match Spf::parse(text.as_bytes()) {
                    Ok(inner) => walk_spf(dns, target, inner, w).await,
                    Err(e) => w.problems.push(Finding::fail(
                        "spf.include",
                        &target,
                        format!("{how}:{target}: SPF record does not parse ({e})"),
                        format!(
                            "ask the operator of {target} to fix the record, or remove the {how}"
                        ),
                    )),
                },
                Answer::Empty => {
                    w.void.push(format!("{how}:{target}"));
                    w.problems.push(Finding::fail(
                        "spf.include",
                        &target,
                        format!("{how}:{target} has no SPF record (permerror)"),
                        format!("remove the {how} or fix the name"),
                    ));
                }
                Answer::Error(e) => w.problems.push(Finding::warn(
                    "spf.include",
                    &target,
                    format!("{how}:{target}: lookup failed: {e}"),
                    "retry; if it persists, the included domain's DNS is broken",
                )),
            }
        }
    })
}

async fn check_spf(
    dns: &Dns,
    domain: &str,
    mx_addresses: &[(String, IpAddr)],
    out: &mut Vec<Finding>,
) {
    let text = match spf_record(dns, domain).await {
        Answer::Found(t) => t,
        Answer::Empty => {
            out.push(Finding::fail(
                "spf.record",
                domain,
                "no SPF record",
                format!("publish '{domain}. IN TXT \"v=spf1 mx -all\"' (listing the hosts that send your mail)"),
            ));
            return;
        }
        Answer::Error(e) => {
            out.push(Finding::fail(
                "spf.record",
                domain,
                e,
                "publish exactly one TXT record starting with v=spf1",
            ));
            return;
        }
    };
    let spf = match Spf::parse(text.as_bytes()) {
        Ok(s) => s,
        Err(e) => {
            out.push(Finding::fail(
                "spf.record",
                domain,
                format!("syntax error ({e}) in \"{text}\""),
                "fix the record (RFC 7208 §12 grammar); receivers treat it as permerror",
            ));
            return;
        }
    };
    out.push(Finding::ok("spf.record", domain, format!("\"{text}\"")));

    let mut walk = SpfWalk::default();
    walk_spf(dns, domain.to_string(), spf.clone(), &mut walk).await;
    out.push(if walk.lookups > SPF_LOOKUP_LIMIT {
        Finding::fail(
            "spf.lookups",
            domain,
            format!(
                "{} DNS-querying terms, over the limit of {SPF_LOOKUP_LIMIT} (permerror)",
                walk.lookups
            ),
            "flatten includes into ip4:/ip6: terms or drop unused includes",
        )
    } else {
        Finding::ok(
            "spf.lookups",
            domain,
            format!("{} of {SPF_LOOKUP_LIMIT} DNS-querying terms", walk.lookups),
        )
    });
    out.push(match walk.void.len() {
        0 => Finding::ok("spf.void", domain, "no void lookups"),
        n if n <= SPF_VOID_LIMIT => Finding::warn(
            "spf.void",
            domain,
            format!("{n} void lookup(s): {}", walk.void.join(", ")),
            "remove terms that name domains without records",
        ),
        n => Finding::fail(
            "spf.void",
            domain,
            format!(
                "{n} void lookups, over the limit of {SPF_VOID_LIMIT} (permerror): {}",
                walk.void.join(", ")
            ),
            "remove terms that name domains without records",
        ),
    });
    out.extend(walk.problems);

    let all = spf
        .directives
        .iter()
        .find(|d| matches!(d.mechanism, Mechanism::All))
        .map(|d| d.qualifier.clone());
    out.push(match all {
        Some(Qualifier::Pass) => Finding::fail(
            "spf.all",
            domain,
            "+all: every host on the Internet may send as this domain",
            "end the record with -all (or ~all while testing)",
        ),
        Some(Qualifier::Neutral) => Finding::warn(
            "spf.all",
            domain,
            "?all: hosts not listed get a neutral result, which protects nothing",
            "end the record with -all (or ~all while testing)",
        ),
        Some(Qualifier::SoftFail) => {
            Finding::ok("spf.all", domain, "~all (softfail for hosts not listed)")
        }
        Some(Qualifier::Fail) => Finding::ok("spf.all", domain, "-all (fail for hosts not listed)"),
        None if spf.redirect.is_some() => {
            Finding::ok("spf.all", domain, "no all term; the redirect decides")
        }
        None => Finding::warn(
            "spf.all",
            domain,
            "no all term: hosts not listed get a neutral result",
            "end the record with -all (or ~all while testing)",
        ),
    });

    // Whether the MX hosts may send: many domains send from their MX hosts.
    let sender = format!("postmaster@{domain}");
    for (host, ip) in mx_addresses {
        let result = dns
            .authenticator()
            .verify_spf(chassis::mailauth::spf::SpfParameters::verify_mail_from(
                *ip,
                host,
                "authmilter-audit.invalid",
                &sender,
            ))
            .await
            .result();
        out.push(if result == SpfResult::Pass {
            Finding::ok(
                "spf.mx_pass",
                ip.to_string(),
                format!("MX host {host} passes SPF"),
            )
        } else {
            Finding::warn(
                "spf.mx_pass",
                ip.to_string(),
                format!("MX host {host} gets spf={}", spf_word(&result)),
                format!(
                    "if {host} sends mail for {domain}, add 'mx' or 'ip{}:{ip}' to the SPF record",
                    if ip.is_ipv4() { 4 } else { 6 }
                ),
            )
        });
    }
}

fn spf_word(r: &SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// Strict DMARC record syntax (RFC 7489 §6.3 / §6.4), with the reason of the first problem.
pub fn dmarc_syntax(record: &str) -> Result<Vec<(String, String)>, String> {
    let mut tags: Vec<(String, String)> = Vec::new();
    for (i, part) in record.split(';').enumerate() {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((n, v)) = part.split_once('=') else {
            return Err(format!("'{part}' is not a tag=value pair"));
        };
        let n = n.trim().to_ascii_lowercase();
        let v = v.trim().to_string();
        if i == 0 && (n != "v" || v != "DMARC1") {
            return Err("the record must start with v=DMARC1".into());
        }
        if tags.iter().any(|(t, _)| *t == n) {
            return Err(format!("tag {n}= appears twice"));
        }
        let ok = match n.as_str() {
            "v" => i == 0,
            "p" | "sp" | "np" => {
                ["none", "quarantine", "reject"].contains(&v.to_ascii_lowercase().as_str())
            }
            "adkim" | "aspf" => ["r", "s"].contains(&v.to_ascii_lowercase().as_str()),
            "pct" => v.parse::<u8>().is_ok_and(|p| p <= 100),
            "ri" => v.parse::<u32>().is_ok(),
            "fo" => v
                .split(':')
                .all(|f| ["0", "1", "d", "s"].contains(&f.trim())),
            "rf" => v.split(':').all(|f| f.trim().eq_ignore_ascii_case("afrf")),
            "rua" | "ruf" => v.split(',').all(|u| {
                let u = u.trim().to_ascii_lowercase();
                u.starts_with("mailto:") && u.contains('@') || u.starts_with("https:")
            }),
            "t" | "psd" => ["y", "n", "u"].contains(&v.to_ascii_lowercase().as_str()),
            _ => return Err(format!("unknown tag {n}=")),
        };
        if !ok {
            return Err(format!("bad value for {n}=: '{v}'"));
        }
        tags.push((n, v));
    }
    if !tags.iter().any(|(t, _)| t == "p") {
        return Err("the required p= tag is missing".into());
    }
    Ok(tags)
}

/// A rough Organizational Domain (RFC 7489 §3.2) without the Public Suffix List: the last two
/// labels, or three under common two-label public suffixes (co.uk, com.au, ...).
pub fn org_domain(domain: &str) -> String {
    let labels: Vec<&str> = domain.trim_end_matches('.').split('.').collect();
    let n = labels.len();
    if n <= 2 {
        return domain.to_ascii_lowercase();
    }
    let second = labels[n - 2];
    let take = if labels[n - 1].len() == 2
        && ["co", "com", "net", "org", "ac", "gov", "edu", "ne", "or"].contains(&second)
    {
        3
    } else {
        2
    };
    labels[n - take.min(n)..].join(".").to_ascii_lowercase()
}

async fn check_dmarc(dns: &Dns, domain: &str, out: &mut Vec<Finding>) {
    let name = format!("_dmarc.{domain}");
    let record = match dns.txt_with_prefix(&name, "v=DMARC1").await {
        Answer::Found(v) if v.len() == 1 => v[0].clone(),
        Answer::Found(v) => {
            out.push(Finding::fail(
                "dmarc.record",
                &name,
                format!("{} DMARC records (receivers ignore them all)", v.len()),
                "publish exactly one TXT record starting with v=DMARC1",
            ));
            return;
        }
        Answer::Empty => {
            out.push(Finding::fail(
                "dmarc.record",
                &name,
                "no DMARC record",
                format!("publish '_dmarc.{domain}. IN TXT \"v=DMARC1; p=none; rua=mailto:dmarc@{domain}\"' and tighten p= once reports look right"),
            ));
            return;
        }
        Answer::Error(e) => {
            out.push(Finding::fail(
                "dmarc.record",
                &name,
                format!("lookup failed: {e}"),
                "check the domain's name servers",
            ));
            return;
        }
    };
    let tags = match dmarc_syntax(&record) {
        Ok(t) => t,
        Err(e) => {
            out.push(Finding::fail(
                "dmarc.record",
                &name,
                format!("syntax error: {e} in \"{record}\""),
                "fix the record (RFC 7489 §6.4); receivers may ignore it",
            ));
            return;
        }
    };
    if let Err(e) = chassis::mailauth::dmarc::Dmarc::parse(record.as_bytes()) {
        out.push(Finding::fail(
            "dmarc.record",
            &name,
            format!("record rejected by the DMARC parser ({e}): \"{record}\""),
            "fix the record (RFC 7489 §6.4)",
        ));
        return;
    }
    out.push(Finding::ok("dmarc.record", &name, format!("\"{record}\"")));
    let get = |t: &str| {
        tags.iter()
            .find(|(n, _)| n == t)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let p = get("p").unwrap_or_default();
    let pct = get("pct").and_then(|v| v.parse::<u8>().ok()).unwrap_or(100);
    out.push(match (p.as_str(), pct) {
        ("none", _) => Finding::warn(
            "dmarc.policy",
            &name,
            "p=none: monitoring only, forged mail is still delivered",
            "move to p=quarantine, then p=reject, once the reports show your mail passes",
        ),
        (_, pct) if pct < 100 => Finding::warn(
            "dmarc.policy",
            &name,
            format!("p={p} applied to {pct}% of failing mail"),
            "raise pct= to 100 (or drop it) once the reports look right",
        ),
        _ => Finding::ok(
            "dmarc.policy",
            &name,
            format!(
                "p={p}{}",
                get("sp").map(|s| format!(" sp={s}")).unwrap_or_default()
            ),
        ),
    });
    let org = org_domain(domain);
    for which in ["rua", "ruf"] {
        let check = format!("dmarc.{which}");
        let Some(uris) = tags
            .iter()
            .find(|(n, _)| n == which)
            .map(|(_, v)| v.clone())
        else {
            if which == "rua" {
                out.push(Finding::warn(
                    &check,
                    &name,
                    "no rua=: you receive no aggregate reports",
                    format!("add rua=mailto:dmarc@{domain} to learn who sends as your domain"),
                ));
            }
            continue;
        };
        for uri in uris.split(',').map(str::trim) {
            let Some(addr) = uri
                .get(..7)
                .filter(|s| s.eq_ignore_ascii_case("mailto:"))
                .map(|_| &uri[7..])
            else {
                out.push(Finding::ok(
                    &check,
                    uri,
                    "non-mailto destination (not checked)",
                ));
                continue;
            };
            let addr = addr.split('!').next().unwrap_or(addr);
            let dest = bare(addr.rsplit('@').next().unwrap_or(""));
            if org_domain(&dest) == org {
                out.push(Finding::ok(
                    &check,
                    addr,
                    "destination in the same organizational domain",
                ));
                continue;
            }
            let auth = format!("{domain}._report._dmarc.{dest}");
            out.push(match dns.txt_with_prefix(&auth, "v=DMARC1").await {
                Answer::Found(_) => Finding::ok(
                    &check,
                    addr,
                    format!("external destination, authorized by {auth}"),
                ),
                Answer::Empty => Finding::fail(
                    &check,
                    addr,
                    format!("external destination without the authorization record {auth}"),
                    format!("ask the operator of {dest} to publish '{auth}. IN TXT \"v=DMARC1\"' (RFC 7489 §7.1); until then receivers send no reports there"),
                ),
                Answer::Error(e) => Finding::warn(
                    &check,
                    addr,
                    format!("cannot look up {auth}: {e}"),
                    "retry; receivers will not send reports while this lookup fails",
                ),
            });
        }
    }
}

async fn check_mta_sts(dns: &Dns, domain: &str, out: &mut Vec<Finding>) {
    let name = format!("_mta-sts.{domain}");
    match dns.txt_with_prefix(&name, "v=STSv1").await {
        Answer::Found(v) if v.len() > 1 => out.push(Finding::fail(
            "mta_sts.record",
            &name,
            format!("{} MTA-STS records (senders ignore them all)", v.len()),
            "publish exactly one TXT record starting with v=STSv1",
        )),
        Answer::Found(v) => {
            match chassis::mailauth::mta_sts::MtaSts::parse(v[0].as_bytes()) {
                Ok(sts) if !sts.id.is_empty() => out.push(Finding::ok(
                    "mta_sts.record",
                    &name,
                    format!("id={} (policy not fetched: DNS checks only)", sts.id),
                )),
                _ => out.push(Finding::fail(
                    "mta_sts.record",
                    &name,
                    format!("syntax error in \"{}\"", v[0]),
                    "publish 'v=STSv1; id=YYYYMMDDNN' (RFC 8461 §3.1)",
                )),
            }
            let host = format!("mta-sts.{domain}");
            match dns.addresses(&host).await {
                Answer::Found(a) => out.push(Finding::ok(
                    "mta_sts.host",
                    &host,
                    format!("policy host resolves ({} address(es))", a.len()),
                )),
                _ => out.push(Finding::fail(
                    "mta_sts.host",
                    &host,
                    "the policy host does not resolve",
                    format!("publish an address for {host} serving https://{host}/.well-known/mta-sts.txt"),
                )),
            }
        }
        Answer::Empty => out.push(Finding::warn(
            "mta_sts.record",
            &name,
            "no MTA-STS record: senders may deliver over unauthenticated TLS or plain text",
            "publish an MTA-STS policy (RFC 8461) once every MX has a valid certificate",
        )),
        Answer::Error(e) => out.push(Finding::warn(
            "mta_sts.record",
            &name,
            format!("lookup failed: {e}"),
            "check the domain's name servers",
        )),
    }
}

async fn check_tls_rpt(dns: &Dns, domain: &str, out: &mut Vec<Finding>) {
    let name = format!("_smtp._tls.{domain}");
    match dns.txt_with_prefix(&name, "v=TLSRPTv1").await {
        Answer::Found(v) if v.len() > 1 => out.push(Finding::fail(
            "tls_rpt.record",
            &name,
            format!("{} TLS-RPT records", v.len()),
            "publish exactly one TXT record starting with v=TLSRPTv1",
        )),
        Answer::Found(v) => match chassis::mailauth::mta_sts::TlsRpt::parse(v[0].as_bytes()) {
            Ok(r) => out.push(Finding::ok(
                "tls_rpt.record",
                &name,
                format!("{} report destination(s)", r.rua.len()),
            )),
            Err(_) => out.push(Finding::fail(
                "tls_rpt.record",
                &name,
                format!("syntax error or no rua= in \"{}\"", v[0]),
                format!("publish 'v=TLSRPTv1; rua=mailto:tls-reports@{domain}' (RFC 8460 §3)"),
            )),
        },
        Answer::Empty => out.push(Finding::warn(
            "tls_rpt.record",
            &name,
            "no TLS-RPT record: you hear nothing about TLS failures delivering to you",
            format!("publish '_smtp._tls.{domain}. IN TXT \"v=TLSRPTv1; rua=mailto:tls-reports@{domain}\"'"),
        )),
        Answer::Error(e) => out.push(Finding::warn(
            "tls_rpt.record",
            &name,
            format!("lookup failed: {e}"),
            "check the domain's name servers",
        )),
    }
}

/// The worst status in a list (for callers that build their own lists).
pub fn worst(findings: &[Finding]) -> Status {
    findings
        .iter()
        .map(|f| f.status)
        .max()
        .unwrap_or(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dmarc_syntax_checks() {
        assert!(dmarc_syntax("v=DMARC1; p=reject; rua=mailto:a@b.example").is_ok());
        assert!(dmarc_syntax("v=DMARC1; p=rejectt")
            .unwrap_err()
            .contains("p="));
        assert!(dmarc_syntax("v=DMARC1; rua=mailto:a@b.example")
            .unwrap_err()
            .contains("p="));
        assert!(dmarc_syntax("p=none; v=DMARC1").is_err());
        assert!(dmarc_syntax("v=DMARC1; p=none; foo=bar")
            .unwrap_err()
            .contains("foo"));
        assert!(dmarc_syntax("v=DMARC1; p=none; pct=101").is_err());
    }

    #[test]
    fn org_domains() {
        assert_eq!(org_domain("mail.example.com"), "example.com");
        assert_eq!(org_domain("example.com"), "example.com");
        assert_eq!(org_domain("a.b.example.co.uk"), "example.co.uk");
    }
}
