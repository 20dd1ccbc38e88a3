//! ARC through real MTAs (issue 19): a message from an outside domain with `p=reject` goes
//! through a mailing list that changes Subject and body and seals (our dkim-milter is the
//! list's sealer), then reaches a receiver whose dmarc-milter trusts that sealer: delivered
//! with `dmarc=fail` and `arc=pass`, the override noted in the A-R and the history. Without the
//! trust entry the same message is rejected under `reject_failures`. Every scenario runs on
//! Postfix and Sendmail ([`testkit::mta`]).
//!
//! The list host is one MTA with dkim-milter: mail for the list arrives on the SMTP port (an
//! outside client: verified, our A-R written), the test plays the list software (it edits the
//! delivered message and resubmits it on the submission port as the list), and the outbound
//! pass seals as `d=lists.example`, recording the inbound pass's Authentication-Results in the
//! ARC-Authentication-Results. The receivers are two more MTAs with dmarc-milter.

use testkit::daemons::RunningMilter;
use testkit::dns::{TestDns, Zone};
use testkit::judges;
use testkit::keys::TestKey;
use testkit::mta::{MtaKind, MtaOptions};

#[macro_use]
mod mta_common;
use mta_common::*;

mta_tests!(list_sealed_mail_passes_only_a_receiver_that_trusts_the_sealer);

type DmarcMilter = RunningMilter<dmarc_policy::runtime::Runtime>;

const LIST_ID: &str = "mx.lists.example";
const RECEIVER_ID: &str = "mx.receiver.example";

fn resolver(dns: &TestDns) -> String {
    format!(
        "[resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
        dns.addr()
    )
}

async fn list_sealed_mail_passes_only_a_receiver_that_trusts_the_sealer(kind: MtaKind) {
    if !kind.require() {
        return;
    }
    assert!(
        judges::judge_available("dkimpy-arc"),
        "dkimpy's ARC judge is required (python3-dkim, python3-authres)"
    );
    let author_key = TestKey::ed25519();
    let list_key = TestKey::rsa(2048);
    let zone = Zone::new()
        .txt("author.example", "v=spf1 -all")
        .txt("_dmarc.author.example", "v=DMARC1; p=reject")
        .txt("ed._domainkey.author.example", &author_key.dns_record())
        .txt("arc._domainkey.lists.example", &list_key.dns_record());
    let dns = TestDns::start(&zone).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    list_key.write_pem(dir.path(), "lists-arc.pem", true);

    // The list host: mail on the SMTP port is from outside (internal_hosts names another host);
    // the submission port is the list software's (trusted), and mail sent as the list is sealed.
    let list_cfg = format!(
        "authserv_id = \"{LIST_ID}\"\nmode = \"v\"\ninternal_hosts = [\"192.0.2.1\"]\n{}\n\
         [[arc.seal]]\ndomain = \"lists.example\"\nselector = \"arc\"\nkey_file = \"lists-arc.pem\"\n{}",
        kind.dkim_submission_trust(),
        resolver(&dns)
    );
    let (list_milter, list_spec): (RunningMilter, _) =
        start_milter(kind, dir.path(), &list_cfg, Socket::Inet, "dkim").await;
    let list_mta = start_mta(
        kind,
        vec![list_spec],
        &MtaOptions {
            originating_cleanup: true,
        },
    );

    // 1. The author's message reaches the list.
    let original = author_key.sign_ed25519(
        &message("alice@author.example", "arc-list-post"),
        "author.example",
        "ed",
    );
    let reply = blocking(|| {
        testkit::smtp::send(
            list_mta.smtp_addr(),
            HELO,
            "alice@author.example",
            &["bob@test.example"],
            &original,
            None,
        )
    })
    .expect("SMTP");
    let inbound_qid = queued(&reply);
    let inbound = blocking(|| {
        testkit::mta::poll(DELIVERY, || {
            list_mta
                .deliveries()
                .into_iter()
                .find_map(|(q, m)| (q == inbound_qid).then_some(m))
        })
    })
    .expect("inbound delivered");
    let ar = fields(&inbound, "Authentication-Results");
    assert!(
        ar.iter()
            .any(|a| a.starts_with(&format!("{LIST_ID};")) && a.contains("dkim=pass")),
        "{ar:?}"
    );

    // 2. The list software tags the subject, adds a footer, and resends as the list.
    let edited = text(&inbound)
        .replace("Subject: arc-list-post", "Subject: [list] arc-list-post")
        .replace(
            ".leading dot\r\n",
            ".leading dot\r\n-- \r\nlist footer: unsubscribe at lists.example\r\n",
        )
        .into_bytes();
    assert_ne!(edited, inbound, "the list changed the message");
    let reply = blocking(|| {
        testkit::smtp::send(
            list_mta.submission_addr(),
            HELO,
            "list-bounces@lists.example",
            &["bob@test.example"],
            &edited,
            None,
        )
    })
    .expect("SMTP");
    let outbound_qid = queued(&reply);
    let sealed = blocking(|| {
        testkit::mta::poll(DELIVERY, || {
            list_mta
                .deliveries()
                .into_iter()
                .find_map(|(q, m)| (q == outbound_qid).then_some(m))
        })
    })
    .expect("outbound delivered");
    let seals = fields(&sealed, "ARC-Seal");
    assert_eq!(seals.len(), 1, "{}", text(&sealed));
    assert!(
        seals[0].starts_with("i=1; a=rsa-sha256; cv=none; d=lists.example; s=arc;"),
        "{}",
        seals[0]
    );
    let aar = fields(&sealed, "ARC-Authentication-Results");
    assert!(
        aar[0].starts_with(&format!(
            "i=1; {LIST_ID}; dkim=pass (256-bit key) header.d=author.example"
        )),
        "the AAR records what the list saw on arrival: {}",
        aar[0]
    );
    assert!(logged(&outbound_qid).iter().any(|l| l
        == &format!(
            "{outbound_qid}: ARC-Seal field added (s=arc, d=lists.example, i=1, cv=none)"
        )));
    // An independent verifier agrees with the seal the MTA delivered.
    let (cv, reason) = judges::dkimpy_arc_verify(&sealed, dns.addr()).expect("dkimpy");
    assert_eq!(cv, "pass", "{reason}");
    drop(list_mta);
    drop(list_milter);

    // 3. A receiver that trusts lists.example: delivered, the failure overridden.
    let receiver_cfg = |trusted: &str, history: &str| {
        format!(
            "authserv_id = \"{RECEIVER_ID}\"\nhistory = \"{history}\"\nignore_hosts = []\n\
             reject_failures = true\n{trusted}\n{}",
            resolver(&dns)
        )
    };
    let rdir = tempfile::tempdir().unwrap();
    let (trusting, spec): (DmarcMilter, _) = start_milter(
        kind,
        rdir.path(),
        &receiver_cfg(
            "trusted_arc_sealers = [\"lists.example\"]",
            "trusting.sqlite",
        ),
        Socket::Inet,
        "dmarc",
    )
    .await;
    let receiver = start_mta(kind, vec![spec], &MtaOptions::default());
    let reply = send(receiver.smtp_addr(), "list-bounces@lists.example", &sealed);
    let qid = queued(&reply);
    let got = blocking(|| {
        testkit::mta::poll(DELIVERY, || {
            receiver
                .deliveries()
                .into_iter()
                .find_map(|(q, m)| (q == qid).then_some(m))
        })
    })
    .expect("delivered at the trusting receiver");
    let ar: Vec<String> = fields(&got, "Authentication-Results")
        .into_iter()
        .filter(|a| a.starts_with(&format!("{RECEIVER_ID};")))
        .collect();
    assert_eq!(ar.len(), 1, "{ar:?}");
    assert!(
        ar[0].contains(
            "dmarc=fail (p=reject dis=none; local_policy override: ARC sealed by lists.example) header.from=author.example"
        ),
        "{}",
        ar[0]
    );
    assert!(
        ar[0].contains("arc=pass smtp.remote-ip=127.0.0.1 arc.chain=lists.example"),
        "{}",
        ar[0]
    );
    assert!(logged(&qid).iter().any(|l| l
        == &format!("{qid}: ARC pass, policy pass > overriding DMARC fail (author.example, sealer lists.example, instance 1)")));
    let (reason, comment, disposition): (String, String, String) = rusqlite::Connection::open(
        rdir.path().join("trusting.sqlite"),
    )
    .unwrap()
    .query_row(
        "SELECT override_reason, override_comment, disposition FROM messages WHERE job_id = ?1",
        [&qid],
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
    drop(receiver);
    drop(trusting);

    // 4. A receiver without the trust entry: rejected under reject_failures.
    let sdir = tempfile::tempdir().unwrap();
    let (strict, spec): (DmarcMilter, _) = start_milter(
        kind,
        sdir.path(),
        &receiver_cfg("", "strict.sqlite"),
        Socket::Inet,
        "dmarc",
    )
    .await;
    let strict_mta = start_mta(kind, vec![spec], &MtaOptions::default());
    let reply = send(
        strict_mta.smtp_addr(),
        "list-bounces@lists.example",
        &sealed,
    );
    assert_eq!(reply.code, 550, "{reply}");
    assert!(
        reply
            .text
            .contains("rejected by DMARC policy for author.example"),
        "{reply}"
    );
    blocking(|| std::thread::sleep(std::time::Duration::from_millis(500)));
    assert!(
        strict_mta.deliveries().is_empty(),
        "{}",
        strict_mta.diagnostics()
    );
    drop(strict_mta);
    drop(strict);
}
