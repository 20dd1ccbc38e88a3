//! OpenDMARC's milter behaviours that operators rely on, checked with an independent milter
//! client: Debian's `miltertest` runs our own Lua scenarios (tests/miltertest/*.lua, each
//! asserting replies and headers by value) against dmarc-milter on a loopback socket, with the
//! test DNS server answering its SPF and DMARC lookups. The Rust side checks the log lines.

use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::daemons::start_dmarc;
use testkit::dns::{TestDns, Zone};
use testkit::judges::{require_judge, run_bounded};
use testkit::logcapture::lines_with;
use testkit::opendkim::MILTERTEST;

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("miltertest")
}

fn zone() -> Zone {
    Zone::new()
        .txt("example.com", "v=spf1 ip4:192.0.2.10 -all")
        .txt("_dmarc.example.com", "v=DMARC1; p=reject")
}

/// Runs `script` against a dmarc-milter configured with `extra`; panics with miltertest's
/// output unless the script succeeds and prints its `OK` line.
async fn scenario(script: &str, extra: &str, env: &[(&str, &str)]) {
    let dns = TestDns::start(&zone()).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "authserv_id = \"mx.test.example\"\n{extra}\n\
         [resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
        dns.addr()
    );
    let milter = start_dmarc(dir.path(), &cfg, "inet:0@127.0.0.1").await;
    let mut cmd = std::process::Command::new(MILTERTEST);
    cmd.arg("-s")
        .arg(scripts().join(script))
        .env(
            "MT_SOCKET",
            format!("inet:{}@127.0.0.1", milter.addr.port()),
        )
        .env("MT_LIB", scripts().join("lib.lua"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || run_bounded(cmd, b"", Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("run miltertest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = format!("OK {}", script.trim_end_matches(".lua"));
    assert!(
        out.status.success() && text.contains(&ok),
        "{script} failed ({}):\n{text}",
        out.status
    );
}

/// SMFIA_UNKNOWN (Postfix's "unknown" client): served, no SPF, DMARC evaluated, two messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unspecified_protocol_family() {
    if !require_judge("miltertest") {
        return;
    }
    scenario("unspec_family.lua", "", &[]).await;
    for qid in ["MTUNSPEC1", "MTUNSPEC2"] {
        assert!(
            lines_with(qid)
                .iter()
                .any(|l| l.ends_with(&format!("{qid}: example.com fail"))),
            "{:?}",
            lines_with(qid)
        );
        assert!(
            !lines_with(qid).iter().any(|l| l.contains("SPF(")),
            "no SPF without a client address: {:?}",
            lines_with(qid)
        );
    }
}

/// RequiredHeaders: no Date, no From → rejected with OpenDMARC's reason; complete → passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_headers_and_missing_from() {
    if !require_judge("miltertest") {
        return;
    }
    scenario("required_headers.lua", "required_headers = true", &[]).await;
    assert!(lines_with("MTREQ1")
        .iter()
        .any(|l| l.ends_with("MTREQ1: RFC5322 requirement error: not exactly one Date field")));
    assert!(lines_with("MTREQ2")
        .iter()
        .any(|l| l.ends_with("MTREQ2: RFC5322 requirement error: not exactly one From field")));
    assert!(lines_with("MTREQ3")
        .iter()
        .any(|l| l.ends_with("MTREQ3: example.com pass")));
}

/// RejectMultiValueFrom: two From domains (one field or two) → rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_valued_from_rejected() {
    if !require_judge("miltertest") {
        return;
    }
    scenario(
        "multi_from_reject.lua",
        "reject_multi_value_from = true",
        &[],
    )
    .await;
    for qid in ["MTMULTI1", "MTMULTI2"] {
        assert!(
            lines_with(qid)
                .iter()
                .any(|l| l.ends_with(&format!("{qid}: multi-valued From field detected"))),
            "{:?}",
            lines_with(qid)
        );
    }
}

/// SPFSelfValidate off: an upstream Received-SPF for this sender is consumed; SPFIgnoreResults
/// ignores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_received_spf_when_not_self_validating() {
    if !require_judge("miltertest") {
        return;
    }
    scenario("received_spf.lua", "spf_self_validate = false", &[]).await;
    assert!(
        lines_with("MTRSPF1")
            .iter()
            .any(|l| l.ends_with("MTRSPF1: SPF(mailfrom): example.com pass (from Received-SPF)")),
        "{:?}",
        lines_with("MTRSPF1")
    );
    assert!(!lines_with("MTRSPF2").iter().any(|l| l.contains("SPF(")));
    scenario(
        "received_spf.lua",
        "spf_self_validate = false\nspf_ignore_results = true",
        &[("MT_IGNORE", "1")],
    )
    .await;
}
