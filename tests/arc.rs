//! ARC (RFC 8617, issue 19) through dkim-milter, judged by dkimpy's independent ARC
//! implementation (`tests/judges/dkimpy_arc.py`): chains we seal verify in dkimpy and chains
//! dkimpy seals verify here, over 1, 2 and 3 hops, RSA and Ed25519, relaxed and simple body
//! canonicalization; tampered, incomplete and oversized chains get RFC 8617's answer from both;
//! hostile chains cost bounded work (DNS queries counted at the test DNS server).
//!
//! Every hop is one dkim-milter instance with its own authserv-id and `[[arc.seal]]` entry,
//! driven over the milter protocol as an outside client (the forwarder case: verify and seal in
//! one pass). Keys are served by the loopback test DNS server.

use milter_client::{run, Outcome, Reply, Transaction};
use std::net::SocketAddr;
use testkit::daemons::{start_dkim, RunningMilter};
use testkit::dns::{TestDns, Zone};
use testkit::judges;
use testkit::keys::TestKey;
use testkit::logcapture::lines_with;
use testkit::outcome::{auth_results, delivered, inserted};

/// The sealers: domain, selector and key kind of hop 1, 2, 3.
struct Keys {
    rsa: TestKey,
    ed: TestKey,
}

fn zone(k: &Keys) -> Zone {
    let mut z = Zone::new();
    for d in [
        "hop1.example",
        "hop2.example",
        "hop3.example",
        "py1.example",
        "py2.example",
        "py3.example",
    ] {
        z = z
            .txt(&format!("rsa._domainkey.{d}"), &k.rsa.dns_record())
            .txt(&format!("ed._domainkey.{d}"), &k.ed.dns_record());
    }
    z.servfail("rsa._domainkey.down.example")
}

fn require_dkimpy_arc() {
    assert!(
        judges::judge_available("dkimpy-arc"),
        "dkimpy's ARC judge is required: apt-get install python3-dkim python3-authres \
         python3-dnspython python3-nacl"
    );
}

/// A dkim-milter that verifies and seals everything as `d=domain; s=selector` (`rsa` or `ed`),
/// with `body` canonicalization for its ARC-Message-Signature.
async fn sealer(
    dir: &std::path::Path,
    k: &Keys,
    dns: SocketAddr,
    domain: &str,
    selector: &str,
    body: &str,
    extra: &str,
) -> RunningMilter {
    let key_file = format!("{selector}-{domain}.pem");
    match selector {
        "rsa" => k.rsa.write_pem(dir, &key_file, true),
        _ => k.ed.write_pem(dir, &key_file, false),
    };
    let cfg = format!(
        "authserv_id = \"mx.{domain}\"\nmode = \"v\"\n{extra}\n\
         [[arc.seal]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey_file = \"{key_file}\"\n\
         senders = [\"*\"]\nbody_canonicalization = \"{body}\"\n\
         [resolver]\nnameservers = [\"{dns}\"]\ntimeout = 1.0\nattempts = 1\n"
    );
    start_dkim(dir, &cfg, "inet:0@127.0.0.1").await
}

/// A verify-only dkim-milter (no sealing).
async fn verifier(dir: &std::path::Path, dns: SocketAddr, extra: &str) -> RunningMilter {
    let cfg = format!(
        "authserv_id = \"mx.final.example\"\nmode = \"v\"\n{extra}\n\
         [resolver]\nnameservers = [\"{dns}\"]\ntimeout = 1.0\nattempts = 1\n"
    );
    start_dkim(dir, &cfg, "inet:0@127.0.0.1").await
}

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@author.example>\r\nTo: list@lists.example\r\nSubject: {subject}\r\n\
         Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@author.example>\r\n\r\n\
         Hello list,\r\n\r\nthis is a test.  With  spaces. \r\n\r\n"
    )
    .into_bytes()
}

/// A transaction from an outside client with queue id `qid`.
fn external(raw: &[u8], qid: &str) -> Transaction {
    let mut tx = Transaction::from_message(raw).with_client(
        "mail.sender.example",
        Some("192.0.2.55:41000".parse().unwrap()),
    );
    tx.mail_macros.push(("i".into(), qid.into()));
    tx.eom_macros.push(("i".into(), qid.into()));
    tx.mail_from = "alice@author.example".into();
    tx
}

/// Runs `raw` through `milter` as an outside client; the reply, A-R and delivered message.
async fn pass_through(milter: &RunningMilter, raw: &[u8], qid: &str) -> (Outcome, Vec<u8>) {
    let tx = external(raw, qid);
    let out = run(&milter.endpoint(), &tx).await.expect("milter session");
    let msg = delivered(&tx, &out);
    (out, msg)
}

fn dkimpy(msg: &[u8], dns: SocketAddr) -> (String, String) {
    judges::dkimpy_arc_verify(msg, dns).expect("dkimpy runs")
}

/// A property value as RFC 8601 writes it: a token bare, anything with a `:` quoted.
fn quoted(v: &str) -> String {
    if v.contains(':') {
        format!("\"{v}\"")
    } else {
        v.to_string()
    }
}

/// The `arc=` clause of an A-R (up to the next `;`).
fn arc_clause(ar: &str) -> String {
    ar.split(';')
        .map(str::trim)
        .find(|c| c.starts_with("arc="))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_we_seal_verify_in_dkimpy_over_three_hops() {
    require_dkimpy_arc();
    let k = Keys {
        rsa: TestKey::rsa(2048),
        ed: TestKey::ed25519(),
    };
    let dns = TestDns::start(&zone(&k)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hops = [
        ("hop1.example", "rsa", "relaxed"),
        ("hop2.example", "ed", "simple"),
        ("hop3.example", "rsa", "simple"),
    ];
    let final_check = verifier(dir.path(), dns.addr(), "").await;
    let mut msg = message("three-hops");
    let mut chain = Vec::new();
    for (n, (domain, selector, body)) in hops.iter().enumerate() {
        let m = sealer(dir.path(), &k, dns.addr(), domain, selector, body, "").await;
        let qid = format!("QSEAL{n}");
        let (out, next) = pass_through(&m, &msg, &qid).await;
        assert_eq!(out.reply, Reply::Accept);
        let seals = inserted(&out, "ARC-Seal");
        assert_eq!(seals.len(), 1, "one ARC-Seal per hop");
        let want_cv = if n == 0 { "cv=none" } else { "cv=pass" };
        assert!(
            seals[0].starts_with(&format!("i={}; ", n + 1)),
            "{}",
            seals[0]
        );
        assert!(seals[0].contains(want_cv), "{}", seals[0]);
        let algorithm = if *selector == "ed" {
            "a=ed25519-sha256"
        } else {
            "a=rsa-sha256"
        };
        assert!(seals[0].contains(algorithm), "{}", seals[0]);
        let aar = inserted(&out, "ARC-Authentication-Results");
        assert!(
            aar[0].starts_with(&format!("i={}; mx.{domain};", n + 1)),
            "the AAR records this hop's own A-R: {}",
            aar[0]
        );
        assert!(
            lines_with(&qid).iter().any(|l| l.starts_with(&format!(
                "{qid}: ARC-Seal field added (s={selector}, d={domain}, i={}, {want_cv})",
                n + 1
            ))),
            "{:?}",
            lines_with(&qid)
        );
        chain.push(*domain);
        msg = next;
        let (cv, reason) = dkimpy(&msg, dns.addr());
        assert_eq!(cv, "pass", "dkimpy after hop {}: {reason}", n + 1);
        let (out, _) = pass_through(&final_check, &msg, &format!("QFIN{n}")).await;
        assert_eq!(
            arc_clause(&auth_results(&out)),
            format!(
                "arc=pass smtp.remote-ip=192.0.2.55 arc.chain={}",
                quoted(&chain.join(":"))
            )
        );
    }
    // A changed body after the last seal: dkimpy and we both say fail.
    let text = String::from_utf8(msg.clone()).unwrap();
    let changed = text.replace("Hello list", "Hello all").into_bytes();
    assert_eq!(dkimpy(&changed, dns.addr()).0, "fail");
    let (out, _) = pass_through(&final_check, &changed, "QFINX").await;
    assert_eq!(
        arc_clause(&auth_results(&out)),
        "arc=fail reason=\"body hash did not verify\" smtp.remote-ip=192.0.2.55 \
         arc.chain=\"hop1.example:hop2.example:hop3.example\""
    );
}

/// Builds a chain with dkimpy: each hop adds its own A-R (with the `arc=` result of the
/// chain so far) and dkimpy seals as `d=pyN.example`.
fn dkimpy_chain(k: &Keys, hops: &[(&str, bool)], base: &[u8]) -> Vec<u8> {
    let mut msg = base.to_vec();
    for (n, (domain, ed)) in hops.iter().enumerate() {
        let arc = if n == 0 { "" } else { "; arc=pass" };
        let mut next = format!(
            "Authentication-Results: mx.{domain}; dkim=pass header.d=author.example{arc}\r\n"
        )
        .into_bytes();
        next.extend_from_slice(&msg);
        let (key, selector) = if *ed { (&k.ed, "ed") } else { (&k.rsa, "rsa") };
        msg = judges::dkimpy_arc_seal(&next, key, domain, selector, &format!("mx.{domain}"))
            .expect("dkimpy seals");
    }
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_dkimpy_seals_verify_here_and_tampering_fails_in_both() {
    require_dkimpy_arc();
    let k = Keys {
        rsa: TestKey::rsa(2048),
        ed: TestKey::ed25519(),
    };
    let dns = TestDns::start(&zone(&k)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(dir.path(), dns.addr(), "").await;
    let base = message("from-dkimpy");
    for hops in [
        &[("py1.example", false)][..],
        &[("py1.example", true), ("py2.example", false)][..],
        &[
            ("py1.example", false),
            ("py2.example", true),
            ("py3.example", true),
        ][..],
    ] {
        let msg = dkimpy_chain(&k, hops, &base);
        assert_eq!(dkimpy(&msg, dns.addr()).0, "pass", "dkimpy's own chain");
        let (out, _) = pass_through(&v, &msg, &format!("QPY{}", hops.len())).await;
        let domains: Vec<&str> = hops.iter().map(|h| h.0).collect();
        assert_eq!(
            arc_clause(&auth_results(&out)),
            format!(
                "arc=pass smtp.remote-ip=192.0.2.55 arc.chain={}",
                quoted(&domains.join(":"))
            )
        );
    }

    // Tampering with a two-hop chain; both implementations must say fail.
    let two = dkimpy_chain(&k, &[("py1.example", false), ("py2.example", true)], &base);
    let text = String::from_utf8(two).unwrap();
    let lines: Vec<&str> = text.split("\r\n").collect();
    // The header fields as (start line, end line) of each field, unfolded by index.
    let field_at = |name: &str, instance: u32| -> (usize, usize) {
        let start = lines
            .iter()
            .position(|l| {
                l.to_ascii_lowercase()
                    .starts_with(&format!("{}:", name.to_ascii_lowercase()))
                    && l.replace(' ', "").contains(&format!(":i={instance};"))
            })
            .unwrap_or_else(|| panic!("{name} i={instance} in {text}"));
        let mut end = start + 1;
        while lines[end].starts_with([' ', '\t']) {
            end += 1;
        }
        (start, end)
    };
    let without = |ranges: &[(usize, usize)]| -> Vec<u8> {
        lines
            .iter()
            .enumerate()
            .filter(|(i, _)| !ranges.iter().any(|(s, e)| i >= s && i < e))
            .map(|(_, l)| *l)
            .collect::<Vec<_>>()
            .join("\r\n")
            .into_bytes()
    };
    let tamper = |name: &str, instance: u32, from: &str, to: &str| -> Vec<u8> {
        let (s, e) = field_at(name, instance);
        let field = lines[s..e].join("\r\n");
        assert!(field.contains(from), "{from} in {field}");
        text.replacen(&field, &field.replacen(from, to, 1), 1)
            .into_bytes()
    };
    let set_of = |instance: u32| {
        [
            field_at("ARC-Seal", instance),
            field_at("ARC-Message-Signature", instance),
            field_at("ARC-Authentication-Results", instance),
        ]
    };
    let duplicate = {
        let mut extra = String::new();
        for (s, e) in set_of(2) {
            extra.push_str(&lines[s..e].join("\r\n"));
            extra.push_str("\r\n");
        }
        format!("{extra}{text}").into_bytes()
    };
    let i51 = text
        .replace("i=2;", "i=51;")
        .replace("i=2 ;", "i=51 ;")
        .into_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "tampered AMS (newest)",
            tamper("ARC-Message-Signature", 2, "d=py2.example", "d=py1.example"),
            "arc=fail",
        ),
        (
            "tampered AS (oldest)",
            tamper("ARC-Seal", 1, "cv=none", "cv=none; x=1"),
            "arc=fail reason=\"signature verification failed\"",
        ),
        (
            "tampered AS (newest)",
            tamper("ARC-Seal", 2, "cv=pass", "cv=pass; x=1"),
            "arc=fail reason=\"signature verification failed\"",
        ),
        (
            "missing instance 1",
            without(&set_of(1)),
            "arc=fail reason=\"instance 1 has no ARC-Seal\"",
        ),
        (
            "duplicate instance 2",
            duplicate,
            "arc=fail reason=\"instance 2 has more than one ARC-Seal\"",
        ),
        (
            "i=51",
            i51,
            "arc=fail reason=\"ARC-Seal field without a usable instance (i=)\"",
        ),
    ];
    for (n, (what, msg, want)) in cases.into_iter().enumerate() {
        let (cv, reason) = dkimpy(&msg, dns.addr());
        assert_eq!(cv, "fail", "dkimpy on {what}: {reason}");
        let (out, _) = pass_through(&v, &msg, &format!("QTAMP{n}")).await;
        assert_eq!(out.reply, Reply::Accept, "{what}");
        let got = arc_clause(&auth_results(&out));
        assert!(got.starts_with(want), "{what}: {got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_chain_is_sealed_as_rfc_8617_says() {
    require_dkimpy_arc();
    let k = Keys {
        rsa: TestKey::rsa(2048),
        ed: TestKey::ed25519(),
    };
    let dns = TestDns::start(&zone(&k)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let two = dkimpy_chain(
        &k,
        &[("py1.example", false), ("py2.example", true)],
        &message("cvfail"),
    );
    // The list changed the body: the chain fails here, so hop 3 seals cv=fail over its own set.
    let broken = String::from_utf8(two)
        .unwrap()
        .replace("Hello list", "[list] Hello list")
        .into_bytes();
    let m = sealer(
        dir.path(),
        &k,
        dns.addr(),
        "hop3.example",
        "rsa",
        "relaxed",
        "",
    )
    .await;
    let (out, sealed) = pass_through(&m, &broken, "QCVF1").await;
    let seals = inserted(&out, "ARC-Seal");
    assert_eq!(seals.len(), 1);
    assert!(
        seals[0].starts_with("i=3; ") && seals[0].contains("cv=fail"),
        "{}",
        seals[0]
    );
    // dkimpy reads a chain whose newest seal says cv=fail as terminated (fail); so do we.
    assert_eq!(dkimpy(&sealed, dns.addr()).0, "fail");
    let v = verifier(dir.path(), dns.addr(), "").await;
    let (out, _) = pass_through(&v, &sealed, "QCVF2").await;
    assert!(
        arc_clause(&auth_results(&out)).starts_with("arc=fail reason=\"ARC-Seal i=3 has cv=fail\""),
        "{}",
        auth_results(&out)
    );
    // Nobody seals over cv=fail (RFC 8617 §5.1 step 1).
    let m4 = sealer(
        dir.path(),
        &k,
        dns.addr(),
        "hop1.example",
        "ed",
        "relaxed",
        "",
    )
    .await;
    let (out, _) = pass_through(&m4, &sealed, "QCVF3").await;
    assert!(inserted(&out, "ARC-Seal").is_empty());
    assert!(lines_with("QCVF3")
        .iter()
        .any(|l| l == "QCVF3: not ARC sealing: the newest ARC set already says cv=fail"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_chains_cost_bounded_work() {
    let k = Keys {
        rsa: TestKey::rsa(2048),
        ed: TestKey::ed25519(),
    };
    let dns = TestDns::start(&zone(&k)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(
        dir.path(),
        dns.addr(),
        "[limits]\nmax_header_bytes = 2097152\nmax_headers = 5000",
    )
    .await;
    let body = "\r\nbody\r\n";
    let head = "From: a@author.example\r\nSubject: s\r\n";
    let set = |i: u32, d: &str| {
        format!(
            "ARC-Seal: i={i}; a=rsa-sha256; cv={}; d={d}; s=rsa; b=AAAA\r\n\
             ARC-Message-Signature: i={i}; a=rsa-sha256; c=relaxed/relaxed; d={d}; s=rsa; h=from; bh=AAAA; b=AAAA\r\n\
             ARC-Authentication-Results: i={i}; mx.{d}; dkim=pass\r\n",
            if i == 1 { "none" } else { "pass" }
        )
    };
    let run_case = |raw: String, qid: &'static str| {
        let v = &v;
        let dns = &dns;
        async move {
            let before = dns.query_count();
            let started = std::time::Instant::now();
            let (out, _) = pass_through(v, raw.as_bytes(), qid).await;
            let queries = dns.query_count() - before;
            (out, queries, started.elapsed())
        }
    };
    // 1,000 ARC sets: fail before any lookup.
    let many: String = (1..=1000).map(|i| set(i, "hop1.example")).collect();
    let (out, queries, took) = run_case(format!("{many}{head}{body}"), "QHOST1").await;
    assert_eq!(out.reply, Reply::Accept);
    assert!(
        arc_clause(&auth_results(&out)).starts_with("arc=fail reason=\"more than 50 ARC sets\""),
        "{}",
        auth_results(&out)
    );
    assert_eq!(queries, 0, "no DNS query for a chain that is too long");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    // 50 well-formed sets with bogus signatures, distinct sealers: the newest AMS is checked
    // first and fails; at most 51 key lookups (one per seal plus the AMS) whatever happens.
    let fifty: String = (1..=50)
        .rev()
        .map(|i| set(i, &format!("s{i}.hop1.example")))
        .collect();
    let (out, queries, _) = run_case(format!("{fifty}{head}{body}"), "QHOST2").await;
    assert!(
        arc_clause(&auth_results(&out)).starts_with("arc=fail"),
        "{}",
        auth_results(&out)
    );
    assert!(queries <= 51, "{queries} DNS queries");
    // A giant ARC-Seal (100 KB b=): over the 16 KiB field limit, malformed, no lookup.
    let giant = format!(
        "ARC-Seal: i=1; a=rsa-sha256; cv=none; d=hop1.example; s=rsa; b={}\r\n{}",
        "A".repeat(100_000),
        &set(1, "hop1.example")[set(1, "hop1.example").find("ARC-Message").unwrap()..]
    );
    let (out, queries, _) = run_case(format!("{giant}{head}{body}"), "QHOST3").await;
    assert!(
        arc_clause(&auth_results(&out))
            .starts_with("arc=fail reason=\"ARC-Seal field without a usable instance (i=)\""),
        "{}",
        auth_results(&out)
    );
    assert_eq!(queries, 0);
    // Giant ARC-Message-Signatures: h= naming 50,000 fields (about 300 KB) is over our 16 KiB
    // field limit (malformed, no lookup); 2,500 fields (about 14 KB) under a sealer whose key
    // exists, with the body's real bh=, is checked by mail-auth: one key lookup, bounded time.
    let bh = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(chassis::arc::body_hash(
            b"body\r\n",
            chassis::mailauth::dkim::Canonicalization::Relaxed,
        ))
    };
    let big = |n: usize| {
        let names: Vec<String> = (0..n).map(|n| format!("x{n}")).collect();
        format!(
            "ARC-Seal: i=1; a=rsa-sha256; cv=none; d=hop1.example; s=rsa; b=AAAA\r\n\
             ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d=hop1.example; s=rsa; h={}; bh={bh}; b=AAAA\r\n\
             ARC-Authentication-Results: i=1; mx.hop1.example; dkim=pass\r\n",
            names.join(":")
        )
    };
    let (out, queries, _) = run_case(format!("{}{head}{body}", big(50_000)), "QHOST4").await;
    assert_eq!(
        arc_clause(&auth_results(&out)),
        "arc=fail reason=\"ARC-Message-Signature field without a usable instance (i=)\" smtp.remote-ip=192.0.2.55"
    );
    assert_eq!(queries, 0);
    let (out, queries, took) = run_case(format!("{}{head}{body}", big(2_500)), "QHOST5").await;
    assert_eq!(
        arc_clause(&auth_results(&out)),
        "arc=fail reason=\"signature verification failed\" smtp.remote-ip=192.0.2.55 arc.chain=hop1.example",
        "the signature was checked (the body hash matched)"
    );
    assert_eq!(queries, 1, "one key lookup");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    // Malformed tags: no '=', repeated tags, a bad cv=, binary junk.
    for (n, seal) in [
        "ARC-Seal: x",
        "ARC-Seal: i=1; i=1; cv=none; d=hop1.example; s=rsa; b=AAAA",
        "ARC-Seal: i=1; a=rsa-sha256; cv=maybe; d=hop1.example; s=rsa; b=AAAA",
        "ARC-Seal: i=1; a=rsa-sha256; cv=none; d=hop1.example; s=rsa; b=AAAA; \u{1}\u{7f}",
    ]
    .iter()
    .enumerate()
    {
        let rest = &set(1, "hop1.example")[set(1, "hop1.example").find("ARC-Message").unwrap()..];
        let qid: &'static str = ["QMAL0", "QMAL1", "QMAL2", "QMAL3"][n];
        let (out, queries, _) = run_case(format!("{seal}\r\n{rest}{head}{body}"), qid).await;
        assert_eq!(out.reply, Reply::Accept);
        assert!(
            arc_clause(&auth_results(&out)).starts_with("arc=fail"),
            "{seal}: {}",
            auth_results(&out)
        );
        assert_eq!(queries, 0, "{seal}");
    }
    // The daemon still serves an ordinary message.
    let (out, _, _) = run_case(format!("{head}{body}"), "QHOST9").await;
    assert_eq!(out.reply, Reply::Accept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_failure_is_temperror_with_the_dns_error_action() {
    require_dkimpy_arc();
    let k = Keys {
        rsa: TestKey::rsa(2048),
        ed: TestKey::ed25519(),
    };
    let dns = TestDns::start(&zone(&k)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A chain sealed by down.example, whose key lookup gets SERVFAIL.
    let mut pre =
        b"Authentication-Results: mx.down.example; dkim=pass header.d=author.example\r\n".to_vec();
    pre.extend_from_slice(&message("dnsdown"));
    let sealed = judges::dkimpy_arc_seal(&pre, &k.rsa, "down.example", "rsa", "mx.down.example")
        .expect("dkimpy seals");
    let v = verifier(dir.path(), dns.addr(), "").await;
    let (out, _) = pass_through(&v, &sealed, "QDNS1").await;
    assert_eq!(
        out.reply,
        Reply::ReplyCode("451 4.7.5 ARC key retrieval failed".into())
    );
    assert!(lines_with("QDNS1")
        .iter()
        .any(|l| l.starts_with("QDNS1: ARC key retrieval failed: key retrieval failed")));
    let v2 = verifier(dir.path(), dns.addr(), "[actions]\ndns_error = \"accept\"").await;
    let (out, _) = pass_through(&v2, &sealed, "QDNS2").await;
    assert_eq!(out.reply, Reply::Accept);
    assert_eq!(
        arc_clause(&auth_results(&out)),
        "arc=temperror reason=\"key retrieval failed\" smtp.remote-ip=192.0.2.55 arc.chain=down.example"
    );
}

/// The mailing-list flow over the milter protocol: our inbound pass verifies the author's DKIM
/// signature; the list changes Subject and body and sends the message out again from a
/// trusted client; our outbound pass seals, recording the inbound A-R. The receiver's
/// dmarc-milter sees DMARC fail (the list broke the signature), and overrides `p=reject` only
/// when it trusts the list as a sealer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_sealed_mail_passes_dmarc_only_with_a_trusted_sealer() {
    let k = Keys {
        rsa: TestKey::rsa(2048),
        ed: TestKey::ed25519(),
    };
    let z = zone(&k)
        .txt("ed._domainkey.author.example", &k.ed.dns_record())
        .txt("author.example", "v=spf1 -all")
        .txt("_dmarc.author.example", "v=DMARC1; p=reject")
        .txt("rsa._domainkey.lists.example", &k.rsa.dns_record());
    let dns = TestDns::start(&z).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    k.rsa.write_pem(dir.path(), "lists.pem", true);
    let list_cfg = format!(
        "authserv_id = \"mx.lists.example\"\nmode = \"v\"\n\
         [[arc.seal]]\ndomain = \"lists.example\"\nselector = \"rsa\"\nkey_file = \"lists.pem\"\n\
         [resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
        dns.addr()
    );
    let list = start_dkim(dir.path(), &list_cfg, "inet:0@127.0.0.1").await;
    let original =
        k.ed.sign_ed25519(&message("list-post"), "author.example", "ed");
    // Inbound: from outside, verified (no seal: the author's mail is not the list's).
    let (out, inbound) = pass_through(&list, &original, "QLIST1").await;
    assert!(
        auth_results(&out).contains("dkim=pass"),
        "{}",
        auth_results(&out)
    );
    assert!(inserted(&out, "ARC-Seal").is_empty());
    // The list software: tag the subject, add a footer, resend as the list.
    let text = String::from_utf8(inbound).unwrap();
    let resent = text
        .replace("Subject: list-post", "Subject: [list] list-post")
        .replace("this is a test.", "this is a test.\r\n-- \r\nlist footer")
        .into_bytes();
    let mut tx = Transaction::from_message(&resent)
        .with_client("localhost", Some("127.0.0.1:40001".parse().unwrap()));
    tx.mail_macros.push(("i".into(), "QLIST2".into()));
    tx.eom_macros.push(("i".into(), "QLIST2".into()));
    tx.mail_from = "list-bounces@lists.example".into();
    let out = run(&list.endpoint(), &tx).await.unwrap();
    let seals = inserted(&out, "ARC-Seal");
    assert_eq!(seals.len(), 1, "{:?}", out.modifications);
    let aar = inserted(&out, "ARC-Authentication-Results");
    assert!(
        aar[0].starts_with("i=1; mx.lists.example;") && aar[0].contains("dkim=pass"),
        "the AAR records the inbound pass: {}",
        aar[0]
    );
    let sealed = delivered(&tx, &out);
    assert_eq!(dkimpy(&sealed, dns.addr()).0, "pass");

    // The receiver.
    let receiver = |trusted: &str, name: &str| {
        format!(
            "authserv_id = \"mx.receiver.example\"\nignore_hosts = []\nreject_failures = true\n\
             history = \"{name}.sqlite\"\n{trusted}\n\
             [resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
            dns.addr()
        )
    };
    let rdir = tempfile::tempdir().unwrap();
    let trusting = testkit::daemons::start_dmarc(
        rdir.path(),
        &receiver("trusted_arc_sealers = [\"lists.example\"]", "trusting"),
        "inet:0@127.0.0.1",
    )
    .await;
    let (out, _) = pass_through_dmarc(&trusting, &sealed, "QRCV1").await;
    assert_eq!(out.reply, Reply::Accept);
    let ar = auth_results(&out);
    assert!(
        ar.contains("dmarc=fail (p=reject dis=none; local_policy override: ARC sealed by lists.example) header.from=author.example"),
        "{ar}"
    );
    assert!(
        ar.contains("arc=pass smtp.remote-ip=192.0.2.55 arc.chain=lists.example"),
        "{ar}"
    );
    assert!(lines_with("QRCV1").iter().any(|l| l.starts_with(
        "QRCV1: ARC pass, policy pass > overriding DMARC fail (author.example, sealer lists.example, instance 1)"
    )));
    let (reason, comment, disposition): (String, String, String) =
        rusqlite::Connection::open(rdir.path().join("trusting.sqlite"))
            .unwrap()
            .query_row(
                "SELECT override_reason, override_comment, disposition FROM messages WHERE job_id = 'QRCV1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
    assert_eq!(
        (reason.as_str(), comment.as_str(), disposition.as_str()),
        (
            "local_policy",
            "arc=pass as[1].d=lists.example aar dkim=pass",
            "none"
        )
    );

    // The same without the trust entry, and with a different trusted sealer: rejected.
    for (n, trusted) in ["", "trusted_arc_sealers = [\"other.example\"]"]
        .iter()
        .enumerate()
    {
        let d = tempfile::tempdir().unwrap();
        let strict = testkit::daemons::start_dmarc(
            d.path(),
            &receiver(trusted, "strict"),
            "inet:0@127.0.0.1",
        )
        .await;
        let qid = format!("QRCV{}", n + 2);
        let (out, _) = pass_through_dmarc(&strict, &sealed, &qid).await;
        assert_eq!(
            out.reply,
            Reply::ReplyCode("550 5.7.1 rejected by DMARC policy for author.example".into()),
            "{trusted}"
        );
    }
}

async fn pass_through_dmarc(
    milter: &RunningMilter<dmarc_policy::runtime::Runtime>,
    raw: &[u8],
    qid: &str,
) -> (Outcome, Vec<u8>) {
    let mut tx = external(raw, qid);
    tx.mail_from = "list-bounces@lists.example".into();
    let out = run(&milter.endpoint(), &tx).await.expect("milter session");
    let msg = delivered(&tx, &out);
    (out, msg)
}

/// A trusted sealer whose key cannot be looked up (SERVFAIL): the override cannot be decided,
/// so a reject becomes a tempfail (the retry decides); an untrusted sealer changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_sealer_behind_a_dns_failure_tempfails_instead_of_rejecting() {
    require_dkimpy_arc();
    let k = Keys {
        rsa: TestKey::rsa(2048),
        ed: TestKey::ed25519(),
    };
    let z = zone(&k)
        .txt("author.example", "v=spf1 -all")
        .txt("_dmarc.author.example", "v=DMARC1; p=reject");
    let dns = TestDns::start(&z).await.unwrap();
    let mut pre =
        b"Authentication-Results: mx.down.example; dkim=pass header.d=author.example\r\n".to_vec();
    pre.extend_from_slice(&message("dns-trouble"));
    let sealed = judges::dkimpy_arc_seal(&pre, &k.rsa, "down.example", "rsa", "mx.down.example")
        .expect("dkimpy seals");
    for (n, (trusted, want)) in [
        (
            "trusted_arc_sealers = [\"down.example\"]",
            "451 4.7.5 temporary ARC evaluation error for author.example",
        ),
        (
            "trusted_arc_sealers = [\"lists.example\"]",
            "550 5.7.1 rejected by DMARC policy for author.example",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let d = tempfile::tempdir().unwrap();
        let cfg = format!(
            "authserv_id = \"mx.receiver.example\"\nignore_hosts = []\nreject_failures = true\n{trusted}\n\
             [resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
            dns.addr()
        );
        let m = testkit::daemons::start_dmarc(d.path(), &cfg, "inet:0@127.0.0.1").await;
        let (out, _) = pass_through_dmarc(&m, &sealed, &format!("QDT{n}")).await;
        assert_eq!(out.reply, Reply::ReplyCode(want.into()), "{trusted}");
    }
}
