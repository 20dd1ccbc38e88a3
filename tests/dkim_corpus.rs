//! The Mail::DKIM verifier corpus run through dkim-milter, with its fake DNS served by a real
//! DNS server on loopback. Prints an agreement table against Mail::DKIM's expectations; every
//! disagreement must be listed below with its reason, and every listed one must still occur.

use milter_client::{run, Modification, Transaction};
use testkit::corpus::{corpus_dir, load_expected, load_fake_dns, zone_from_fake_dns};
use testkit::daemons::start_dkim;
use testkit::dns::TestDns;

const SMALL_KEY: &str = "RFC 8301 §3.2: verifiers MUST NOT consider signatures with keys under 1024 bits valid (768/512-bit key) -> policy";
const RSA_SHA1: &str = "RFC 8301 §3.1: rsa-sha1 signatures MUST NOT be considered valid -> policy";
const DRAFT_00: &str = "draft-ietf-dkim-base-00 signature without v= (RFC 6376 §3.5: v=1 is required) cannot be processed -> neutral (upstream skips these too)";
const DRAFT_05: &str =
    "v=0.5 draft signature; RFC 6376 §3.5 requires v=1, so it cannot be processed -> neutral";
const BODY_FIRST: &str = "the body does not match bh= either; we check the body hash before fetching the key, so the body mismatch is reported (a permanent failure either way, RFC 6376 §6.1)";

/// Where we knowingly differ: (file, our result, reason).
const KNOWN_DIFFERENCES: &[(&str, &str, &str)] = &[
    ("good_ietf00_1.txt", "neutral", DRAFT_00),
    ("good_ietf00_2.txt", "neutral", DRAFT_00),
    ("good_ietf00_3.txt", "neutral", DRAFT_00),
    ("good_ietf00_4.txt", "neutral", DRAFT_00),
    ("good_ietf00_5.txt", "neutral", DRAFT_00),
    ("mine_ietf05_1.txt", "neutral", DRAFT_05),
    ("no_body_1.txt", "neutral", DRAFT_05),
    ("no_body_2.txt", "neutral", DRAFT_05),
    ("no_body_3.txt", "neutral", DRAFT_05),
    ("mine_ietf01_1.txt", "policy", RSA_SHA1),
    ("mine_ietf01_2.txt", "policy", RSA_SHA1),
    ("good_83176.txt", "policy", RSA_SHA1),
    ("good_ietf01_1.txt", "policy", SMALL_KEY),
    ("good_ietf01_2.txt", "policy", SMALL_KEY),
    ("good_rfc4871_3.txt", "policy", SMALL_KEY),
    ("good_rfc4871_4.txt", "policy", SMALL_KEY),
    ("good_1878523.txt", "policy", SMALL_KEY),
    ("multiple_1.txt", "policy", SMALL_KEY),
    ("good_qp_1.txt", "policy", SMALL_KEY),
    ("good_qp_2.txt", "policy", SMALL_KEY),
    ("good_qp_3.txt", "policy", SMALL_KEY),
    ("bad_ietf01_1.txt", "policy", SMALL_KEY),
    ("bad_ietf01_2.txt", "policy", SMALL_KEY),
    ("bad_ietf01_3.txt", "policy", SMALL_KEY),
    ("bad_1.txt", "policy", SMALL_KEY),
    ("goodkey_1.txt", "policy", SMALL_KEY),
    ("goodkey_2.txt", "policy", SMALL_KEY),
    ("goodkey_3.txt", "policy", SMALL_KEY),
    ("goodkey_4.txt", "policy", SMALL_KEY),
    ("multiple_2.txt", "neutral", "signature 1 has an unknown canonicalization (neutral), the one Mail::DKIM passes is rsa-sha1 (RFC 8301 §3.1 -> policy), the third fails"),
    ("badkey_14.txt", "fail", BODY_FIRST),
    ("badkey_15.txt", "fail", BODY_FIRST),
    ("badkey4_ed25519.txt", "fail", BODY_FIRST),
    ("badkey5_ed25519.txt", "fail", BODY_FIRST),
];

/// Our A-R result words mapped onto Mail::DKIM's vocabulary.
fn as_mail_dkim(word: &str) -> &'static str {
    match word {
        "pass" => "pass",
        "fail" => "fail",
        "none" => "none",
        _ => "invalid",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_dkim_corpus_agreement() {
    let Some(dir) = corpus_dir("dkim-mail-dkim") else {
        return;
    };
    let dns_entries = load_fake_dns(&dir.join("t/FAKE_DNS.dat"));
    let dns = TestDns::start(&zone_from_fake_dns(&dns_entries))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Mail::DKIM accepts rsa-sha1 and tiny keys; RFC 8301 does not. Run both ways: strict (our
    // defaults) is what the table reports, so the RFC reasons below explain the differences.
    let cfg = format!(
        "authserv_id = \"mx.corpus.example\"\n[resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n\
         [actions]\ndns_error = \"accept\"\n",
        dns.addr()
    );
    let milter = start_dkim(tmp.path(), &cfg, "inet:0@127.0.0.1").await;
    let mut table = Vec::new();
    let mut unexplained = Vec::new();
    let mut stale: Vec<&str> = KNOWN_DIFFERENCES.iter().map(|k| k.0).collect();
    for exp in load_expected(&dir.join("EXPECTED_verifier.tsv")) {
        let path = dir.join("t/corpus").join(&exp.file);
        let Ok(raw) = std::fs::read(&path) else {
            unexplained.push(format!("{}: file missing", exp.file));
            continue;
        };
        let mut tx = Transaction::from_message(&raw).with_client(
            "mail.sender.example",
            Some("192.0.2.55:41000".parse().unwrap()),
        );
        tx.eom_macros
            .push(("i".into(), format!("CORPUS-{}", exp.file)));
        let out = run(&milter.endpoint(), &tx).await.unwrap();
        let ar: Vec<String> = out
            .modifications
            .iter()
            .filter_map(|m| match m {
                Modification::InsertHeader { name, value, .. }
                    if name == "Authentication-Results" =>
                {
                    Some(value.clone())
                }
                _ => None,
            })
            .collect();
        let results: Vec<String> = ar
            .first()
            .map(|v| {
                chassis::authres::parse(v)
                    .map(|p| p.results.iter().map(|r| r.result.clone()).collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        // A message passes when any signature passes; otherwise the first result speaks.
        let ours = if results.iter().any(|r| r == "pass") {
            "pass".to_string()
        } else {
            results.first().cloned().unwrap_or_else(|| "none".into())
        };
        let expected = if exp.sig_type == "DomainKeys" {
            "none".to_string()
        } else {
            exp.expected.clone()
        };
        let agree = as_mail_dkim(&ours) == expected;
        let verdict = if agree {
            "agree".to_string()
        } else {
            match KNOWN_DIFFERENCES.iter().find(|k| k.0 == exp.file) {
                Some(k) => format!("differs: {}", k.2),
                None => "DIFFERS (unexplained)".to_string(),
            }
        };
        table.push(format!(
            "{:<24} {:<8} {:<10} {verdict}",
            exp.file, expected, ours
        ));
        if !agree {
            match KNOWN_DIFFERENCES.iter().find(|k| k.0 == exp.file) {
                Some(k) if k.1 == ours => stale.retain(|f| *f != exp.file),
                _ => unexplained.push(format!(
                    "{}: Mail::DKIM {expected}, ours {ours} ({})",
                    exp.file,
                    ar.join(" | ").replace("\n\t", " ")
                )),
            }
        }
    }
    println!(
        "Mail::DKIM corpus agreement ({} messages):\n{:<24} {:<8} {:<10} verdict\n{}",
        table.len(),
        "file",
        "expected",
        "ours",
        table.join("\n")
    );
    let agreed = table.iter().filter(|l| l.ends_with("agree")).count();
    println!("agree: {agreed} / {}", table.len());
    assert!(
        unexplained.is_empty(),
        "unexplained disagreements:\n{}",
        unexplained.join("\n")
    );
    assert!(
        stale.is_empty(),
        "listed differences that no longer occur: {stale:?}"
    );
    assert!(
        table.len() > 50,
        "the corpus should have more than 50 expectations"
    );
}
