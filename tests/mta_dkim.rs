//! dkim-milter behind real MTAs (issue 4, DKIM half): every scenario runs against Postfix and
//! Sendmail ([`testkit::mta`]; the tests are `postfix::NAME` and `sendmail::NAME`).
//!
//! Each test starts a throwaway MTA whose milter is our dkim-milter (running in-process), sends
//! mail to it over SMTP ([`testkit::smtp`]) and judges the bytes the MTA delivers: with
//! independent verifiers (dkimpy, Mail::DKIM, the real OpenDKIM) for what we sign, and by value
//! for the Authentication-Results we add and the forgeries we remove. Everything our daemon
//! resolves comes from the test DNS server; the MTAs themselves do no DNS at all.
//!
//! Trust: dkim-milter is configured with `internal_hosts = ["192.0.2.1"]`, so the test client on
//! 127.0.0.1 is an outside host on the plain SMTP port (mail is verified), while the submission
//! port is made outgoing (signed) the way each MTA's users do it
//! ([`testkit::mta::MtaKind::dkim_submission_trust`]: Postfix's `{daemon_name}` ORIGINATING
//! matched by `macro_list`, Sendmail's MSA daemon named in `mta`).

use testkit::daemons::RunningMilter;
use testkit::dns::TestDns;
use testkit::judges::{self, require_judge};
use testkit::keys::{KeyKind, TestKey};
use testkit::mta::{header_fields, MtaKind, MtaOptions};
use testkit::opendkim::{miltertest_message, Opendkim};
use testkit::smtp::Reply;

#[macro_use]
mod mta_common;
use mta_common::*;

mta_tests!(
    submission_is_signed_and_judges_accept_delivered_mail,
    inbound_opendkim_signed_mail_passes,
    inbound_tampered_mail_fails,
    inbound_tampered_mail_is_rejected_with_reject_action,
    forged_authentication_results_are_removed,
    unix_socket_milter_signs_and_verifies;
    postfix only: submission_with_standard_postfix_setup_is_signed,
);

/// Starts everything, or returns None (after a loud message) when the MTA cannot run here.
/// Signing table: dual@example.com gets Ed25519 and RSA signatures (two matching rows), every
/// other example.com address RSA only. `extra` is appended to the top level of the TOML.
async fn rig(kind: MtaKind, extra: &str, socket: Socket, opts: MtaOptions) -> Option<Rig<Keys>> {
    if !kind.require() {
        return None;
    }
    let keys = Keys {
        rsa: TestKey::rsa(2048),
        ed: TestKey::ed25519(),
        od_rsa: TestKey::rsa(2048),
        od_ed: TestKey::ed25519(),
    };
    let dns = TestDns::start(&zone_for(&keys)).await.expect("dns");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keys.rsa.write_pem(d, "rsa.pem", true);
    keys.ed.write_pem(d, "ed.pem", false);
    std::fs::write(
        d.join("KeyTable"),
        "rsa example.com:rsa:rsa.pem\ned example.com:ed:ed.pem\n",
    )
    .unwrap();
    std::fs::write(
        d.join("SigningTable"),
        "dual@example.com ed\n*@example.com rsa\n",
    )
    .unwrap();
    let cfg = format!(
        "authserv_id = \"{AUTHSERV}\"\n\
         key_table = \"file:KeyTable\"\n\
         signing_table = \"refile:SigningTable\"\n\
         internal_hosts = [\"192.0.2.1\"]\n\
         {}\n\
         {extra}\n\
         [resolver]\nnameservers = [\"{}\"]\ntimeout = 1.0\nattempts = 1\n",
        kind.dkim_submission_trust(),
        dns.addr()
    );
    let (milter, spec): (RunningMilter, _) = start_milter(kind, d, &cfg, socket, "dkim").await;
    let mta = start_mta(kind, vec![spec], &opts);
    Some(Rig {
        kind,
        mta,
        milters: vec![Box::new(milter)],
        dns,
        keys,
        dir,
    })
}

/// Every stage of a Postfix submission says ORIGINATING (see
/// `PostfixOptions::originating_cleanup`); what most scenarios use.
fn originating() -> MtaOptions {
    MtaOptions {
        originating_cleanup: true,
    }
}

/// Outbound: mail submitted on the submission port is signed (RSA; Ed25519 + RSA for the
/// address with two SigningTable rows), and dkimpy, Mail::DKIM and OpenDKIM all accept the bytes
/// the MTA delivered. The same mail on the plain port, from an outside client, is not signed.
async fn submission_is_signed_and_judges_accept_delivered_mail(kind: MtaKind) {
    if !require_judge("dkimpy")
        || !require_judge("mail-dkim")
        || !require_judge("opendkim")
        || !require_judge("miltertest")
    {
        return;
    }
    let Some(r) = rig(kind, "", Socket::Inet, originating()).await else {
        return;
    };
    let rsa_msg = message("user@example.com", "out-rsa");
    let dual_msg = message("dual@example.com", "out-dual");
    let outside_msg = message("user@example.com", "out-outside");
    let reply = r.send_submission("user@example.com", &rsa_msg);
    assert_eq!(reply.code, 250, "{reply}");
    let reply = r.send_submission("dual@example.com", &dual_msg);
    assert_eq!(reply.code, 250, "{reply}");
    let reply = r.send_inbound("user@example.com", &outside_msg);
    assert_eq!(reply.code, 250, "{reply}");
    let got = r.delivered(3);
    let verifier = blocking(|| Opendkim::start_verifier(r.dns.addr())).expect("opendkim verifier");

    // RSA.
    let (qid, msg) = by_subject(&got, "out-rsa");
    let sigs = fields(msg, "DKIM-Signature");
    assert_eq!(sigs.len(), 1, "{}", text(msg));
    assert_eq!(
        (tag(&sigs[0], "a"), tag(&sigs[0], "d"), tag(&sigs[0], "s")),
        ("rsa-sha256".into(), "example.com".into(), "rsa".into())
    );
    assert_eq!(tag(&sigs[0], "c"), "relaxed/relaxed");
    // We insert at index 0, which both MTAs put above their own Received header (Postfix hides
    // it from milters; Sendmail shows it and counts it).
    let names: Vec<String> = header_fields(msg).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names[..2], ["DKIM-Signature", "Received"], "{}", text(msg));
    assert!(
        fields(msg, "Authentication-Results").is_empty(),
        "signing adds no A-R"
    );
    let v = blocking(|| judges::dkimpy_verify(msg, r.dns.addr())).unwrap();
    assert_eq!(v.results, ["pass"], "dkimpy: {}", v.raw_output);
    let v = blocking(|| judges::mail_dkim_verify(msg, r.dns.addr())).unwrap();
    assert_eq!(v.results, ["pass"], "Mail::DKIM: {}", v.raw_output);
    let od = blocking(|| miltertest_message(&verifier.socket, msg, "192.0.2.9")).unwrap();
    let ar = od.header("Authentication-Results");
    assert_eq!(ar.len(), 1, "{}", od.raw_output);
    assert!(
        collapse(ar[0]).starts_with("opendkim.test; dkim=pass")
            && ar[0].contains("header.d=example.com"),
        "OpenDKIM: {}",
        ar[0]
    );
    assert_eq!(
        logged(qid),
        [format!(
            "{qid}: DKIM-Signature field added (s=rsa, d=example.com)"
        )]
    );

    // Ed25519 + RSA.
    let (qid, msg) = by_subject(&got, "out-dual");
    let sigs = fields(msg, "DKIM-Signature");
    let mut kinds: Vec<(String, String)> =
        sigs.iter().map(|s| (tag(s, "a"), tag(s, "s"))).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("ed25519-sha256".to_owned(), "ed".to_owned()),
            ("rsa-sha256".to_owned(), "rsa".to_owned())
        ],
        "{}",
        text(msg)
    );
    let v = blocking(|| judges::dkimpy_verify(msg, r.dns.addr())).unwrap();
    assert_eq!(v.results, ["pass", "pass"], "dkimpy: {}", v.raw_output);
    let v = blocking(|| judges::mail_dkim_verify(msg, r.dns.addr())).unwrap();
    let expected: Vec<&str> = sigs
        .iter()
        .map(|s| {
            if tag(s, "a") == "ed25519-sha256" && !judges::judge_supports_ed25519("mail-dkim") {
                "invalid" // Debian 12's Mail::DKIM predates RFC 8463.
            } else {
                "pass"
            }
        })
        .collect();
    assert_eq!(v.results, expected, "Mail::DKIM: {}", v.raw_output);
    let od = blocking(|| miltertest_message(&verifier.socket, msg, "192.0.2.9")).unwrap();
    let ar = od.header("Authentication-Results");
    assert_eq!(ar.len(), 1, "{}", od.raw_output);
    assert_eq!(collapse(ar[0]).matches("dkim=pass").count(), 2, "{}", ar[0]);
    assert_eq!(logged_sorted(qid), signed_ed_and_rsa(qid));

    // The same sender on the plain port is an outside host: verified (nothing to verify), not
    // signed, and logged as OpenDKIM logs it.
    let (qid, msg) = by_subject(&got, "out-outside");
    assert!(fields(msg, "DKIM-Signature").is_empty(), "{}", text(msg));
    let first = &header_fields(msg)[0];
    assert_eq!(
        (first.0.as_str(), collapse(&first.1)),
        ("Authentication-Results", format!("{AUTHSERV}; dkim=none"))
    );
    assert_eq!(logged(qid), [external_host(kind, qid)]);
}

/// `QID: external host NAME [127.0.0.1] attempted to send as example.com`, NAME being what the
/// MTA reports for the test client.
fn external_host(kind: MtaKind, qid: &str) -> String {
    format!(
        "{qid}: external host {} [127.0.0.1] attempted to send as example.com",
        kind.loopback_client_name()
    )
}

/// Our log lines for `qid`, sorted (two signatures are logged in no fixed order).
fn logged_sorted(qid: &str) -> Vec<String> {
    let mut lines = logged(qid);
    lines.sort();
    lines
}

/// What dkim-milter logs for dual@example.com's two signatures, sorted.
fn signed_ed_and_rsa(qid: &str) -> [String; 2] {
    [
        format!("{qid}: DKIM-Signature field added (s=ed, d=example.com)"),
        format!("{qid}: DKIM-Signature field added (s=rsa, d=example.com)"),
    ]
}

/// Inbound: mail signed by the real OpenDKIM (RSA and Ed25519) from an outside client is
/// delivered with our `dkim=pass` Authentication-Results as the very first header line, above
/// the MTA's Received.
async fn inbound_opendkim_signed_mail_passes(kind: MtaKind) {
    if !require_judge("opendkim") || !require_judge("miltertest") || !require_judge("dkimpy") {
        return;
    }
    let Some(r) = rig(kind, "", Socket::Inet, originating()).await else {
        return;
    };
    for (selector, key, bits) in [("od", &r.keys.od_rsa, 2048), ("oded", &r.keys.od_ed, 256)] {
        let subject = format!("in-{selector}");
        let signed = blocking(|| {
            opendkim_signed(
                r.dir.path(),
                key,
                selector,
                &message("alice@sender.example", &subject),
            )
        });
        let reply = r.send_inbound("alice@sender.example", &signed);
        let qid = queued(&reply);
        let msg = r.delivered_id(&qid);
        let raw = text(&msg);
        let sig = &fields(&msg, "DKIM-Signature")[0];
        let alg = if key.kind == KeyKind::Ed25519 {
            "ed25519-sha256"
        } else {
            "rsa-sha256"
        };
        let b8 = header_b(sig);
        assert!(
            raw.starts_with(&format!("Authentication-Results: {AUTHSERV};")),
            "{raw}"
        );
        let hdrs = header_fields(&msg);
        assert_eq!(
            (hdrs[0].0.as_str(), collapse(&hdrs[0].1)),
            (
                "Authentication-Results",
                format!(
                    "{AUTHSERV}; dkim=pass ({bits}-bit key) header.d=sender.example \
                     header.i=@sender.example header.a={alg} header.s={selector} header.b={b8}"
                )
            ),
            "{raw}"
        );
        let received = own_received(&msg, 1);
        assert!(
            received.starts_with(&r.mta.received_start(HELO, &qid)),
            "{raw}"
        );
        assert_eq!(
            logged(&qid),
            [format!("{qid}: DKIM verification successful")]
        );
        // The delivered bytes still verify for an independent judge.
        let v = blocking(|| judges::dkimpy_verify(&msg, r.dns.addr())).unwrap();
        assert_eq!(v.results, ["pass"], "dkimpy: {}", v.raw_output);
        r.mta.remove_delivery(&qid).unwrap();
    }
}

/// A rig (`extra` added to dkim-milter's TOML) and the reply to a message signed by the real
/// OpenDKIM (RSA, selector od) and then changed in the body, sent inbound; with the signed,
/// untouched message. None (after a loud message) when a judge or the MTA is missing.
async fn send_tampered(
    kind: MtaKind,
    extra: &str,
    subject: &str,
) -> Option<(Rig<Keys>, Vec<u8>, Reply)> {
    if !require_judge("opendkim") || !require_judge("miltertest") {
        return None;
    }
    let r = rig(kind, extra, Socket::Inet, originating()).await?;
    let signed = blocking(|| {
        opendkim_signed(
            r.dir.path(),
            &r.keys.od_rsa,
            "od",
            &message("alice@sender.example", subject),
        )
    });
    let tampered = text(&signed).replace("Hello Bob", "Hello Eve").into_bytes();
    let reply = r.send_inbound("alice@sender.example", &tampered);
    Some((r, signed, reply))
}

/// Inbound tampered mail: with the default action it is delivered with `dkim=fail`.
async fn inbound_tampered_mail_fails(kind: MtaKind) {
    let Some((r, _, reply)) = send_tampered(kind, "", "tampered").await else {
        return;
    };
    assert_eq!(reply.code, 250, "{reply}");
    let (qid, msg) = r.delivered(1).remove(0);
    let b8 = header_b(&fields(&msg, "DKIM-Signature")[0]);
    let first = &header_fields(&msg)[0];
    assert_eq!(
        (first.0.as_str(), collapse(&first.1)),
        (
            "Authentication-Results",
            format!(
                "{AUTHSERV}; dkim=fail reason=\"body hash did not verify\" (2048-bit key) \
                 header.d=sender.example header.i=@sender.example header.a=rsa-sha256 \
                 header.s=od header.b={b8}"
            )
        ),
        "{}",
        text(&msg)
    );
    assert_eq!(logged(&qid), [bad_body_hash(&qid)]);
}

/// What dkim-milter logs for the tampered message signed with selector od.
fn bad_body_hash(qid: &str) -> String {
    format!("{qid}: bad signature data (s=od, d=sender.example): body hash did not verify")
}

/// With `bad_signature = "reject"` the SMTP client gets 550 5.7.0 at the end of DATA and
/// nothing is delivered or left queued; a good message sent right after is delivered alone.
async fn inbound_tampered_mail_is_rejected_with_reject_action(kind: MtaKind) {
    let extra = "[actions]\nbad_signature = \"reject\"";
    let Some((r, signed, reply)) = send_tampered(kind, extra, "reject").await else {
        return;
    };
    assert_eq!(
        reply,
        Reply {
            code: 550,
            text: "5.7.0 bad DKIM signature data".into()
        }
    );
    // The MTA logs the refusal with the queue id it had assigned, which our log line carries.
    // Sendmail's log goes to syslog only and its 5xx names no queue id, so there this part has
    // nothing to read (dkim-milter keeps no history row to find the id in instead).
    if let Some(rejection) = blocking(|| r.mta.rejection(DELIVERY)) {
        assert!(
            rejection.line.contains(
                "5.7.0 bad DKIM signature data; from=<alice@sender.example> to=<bob@test.example>"
            ),
            "{}",
            rejection.line
        );
        let qid = &rejection.qid;
        assert_eq!(logged(qid), [bad_body_hash(qid)]);
    }

    let reply = r.send_inbound("alice@sender.example", &signed);
    assert_eq!(reply.code, 250, "{reply}");
    let got = r.delivered(1);
    assert_eq!(Some(got[0].0.as_str()), reply.queue_id());
    assert!(
        fields(&got[0].1, "Authentication-Results")[0].contains("dkim=pass"),
        "{}",
        text(&got[0].1)
    );
    r.assert_only_delivered(1);
}

/// Forged `Authentication-Results: <our id>; ...` headers (several, folded, upper case, mixed
/// with other fields and with another authserv-id's A-R) are all gone from the delivered
/// message; every other field is kept, in order. The MTAs count header indexes differently
/// (Postfix hides its own Received from milters, Sendmail shows it): this checks our deletions
/// land on the right fields in both.
async fn forged_authentication_results_are_removed(kind: MtaKind) {
    let Some(r) = rig(kind, "", Socket::Inet, originating()).await else {
        return;
    };
    let upper = AUTHSERV.to_uppercase();
    let raw = format!(
        "Received: from upstream.example (upstream.example [192.0.2.7])\r\n\tby relay.example; Wed, 25 Nov 2026 11:59:00 +0000\r\n\
         Authentication-Results: {AUTHSERV}; dkim=pass header.d=forged1.example\r\n\
         Authentication-Results: other.example; spf=pass smtp.mailfrom=keep1.example\r\n\
         X-Filler: one\r\n\
         Authentication-Results: {AUTHSERV};\r\n\tdkim=pass header.d=forged2.example\r\n\
         X-Authentication-Results: {AUTHSERV}; dkim=pass header.d=keep2.example\r\n\
         Authentication-Results: other.example; dkim=pass header.d=keep3.example\r\n\
         Authentication-Results: {upper}; dkim=pass header.d=forged3.example\r\n\
         X-Filler: two\r\n\
         Authentication-Results: {AUTHSERV}; dkim=pass header.d=forged4.example\r\n\
         {}",
        text(&message("alice@sender.example", "forged"))
    );
    let reply = r.send_inbound("alice@sender.example", raw.as_bytes());
    assert_eq!(reply.code, 250, "{reply}");
    let (qid, msg) = r.delivered(1).remove(0);
    let got: Vec<(String, String)> = header_fields(&msg)
        .into_iter()
        .map(|(n, v)| (n, collapse(&v)))
        .collect();
    let expected: Vec<(String, String)> = [
        ("Authentication-Results", format!("{AUTHSERV}; dkim=none")),
        ("Received", String::new()),
        ("Received", "from upstream.example (upstream.example [192.0.2.7]) by relay.example; Wed, 25 Nov 2026 11:59:00 +0000".to_owned()),
        ("Authentication-Results", "other.example; spf=pass smtp.mailfrom=keep1.example".to_owned()),
        ("X-Filler", "one".to_owned()),
        ("X-Authentication-Results", format!("{AUTHSERV}; dkim=pass header.d=keep2.example")),
        ("Authentication-Results", "other.example; dkim=pass header.d=keep3.example".to_owned()),
        ("X-Filler", "two".to_owned()),
        ("From", "Someone <alice@sender.example>".to_owned()),
        ("To", "Bob <bob@test.example>".to_owned()),
        ("Subject", "forged".to_owned()),
        ("Date", "Wed, 25 Nov 2026 12:00:00 +0000".to_owned()),
        ("Message-ID", "<forged@test.example>".to_owned()),
        ("MIME-Version", "1.0".to_owned()),
        ("Content-Type", "text/plain; charset=us-ascii".to_owned()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect();
    // The MTA's own Received (second) has a time stamp: compare its start only.
    let received = own_received(&msg, 1);
    assert!(
        received.starts_with(&r.mta.received_start(HELO, &qid)),
        "{received}"
    );
    let mut got_cmp = got.clone();
    got_cmp[1].1 = String::new();
    assert_eq!(got_cmp, expected, "{}", text(&msg));
    assert!(!text(&msg).contains("header.d=forged"), "{}", text(&msg));
    assert_eq!(
        logged(&qid),
        [format!(
            "{qid}: removed 4 Authentication-Results header(s) claiming to be from {AUTHSERV}"
        )]
    );
}

/// The milter on a unix socket signs on submission and verifies the signed mail when it comes
/// back in on the plain port.
async fn unix_socket_milter_signs_and_verifies(kind: MtaKind) {
    if !require_judge("dkimpy") {
        return;
    }
    let Some(r) = rig(kind, "", Socket::Unix, originating()).await else {
        return;
    };
    let reply = r.send_submission("dual@example.com", &message("dual@example.com", "unix"));
    assert_eq!(reply.code, 250, "{reply}");
    let (qid, signed) = r.delivered(1).remove(0);
    assert_eq!(
        fields(&signed, "DKIM-Signature").len(),
        2,
        "{}",
        text(&signed)
    );
    let v = blocking(|| judges::dkimpy_verify(&signed, r.dns.addr())).unwrap();
    assert_eq!(v.results, ["pass", "pass"], "dkimpy: {}", v.raw_output);
    assert_eq!(logged_sorted(&qid), signed_ed_and_rsa(&qid));

    // Back in from outside: both signatures verify.
    r.mta.remove_delivery(&qid).unwrap();
    let reply = r.send_inbound("dual@example.com", &signed);
    assert_eq!(reply.code, 250, "{reply}");
    let (qid2, msg) = r.delivered(1).remove(0);
    let ar = &fields(&msg, "Authentication-Results")[0];
    assert_eq!(ar.matches("dkim=pass").count(), 2, "{ar}");
    assert!(ar.starts_with(&format!("{AUTHSERV}; dkim=pass")), "{ar}");
    assert_eq!(
        logged(&qid2),
        [
            external_host(kind, &qid2),
            format!("{qid2}: DKIM verification successful"),
        ]
    );
}

/// Postfix only (Sendmail has no such split between smtpd and cleanup): the usual
/// OpenDKIM-style Postfix set-up, `-o milter_macro_daemon_name=ORIGINATING` on the submission
/// smtpd only. OpenDKIM signs here (it reads `{daemon_name}` from CONNECT, the only stage whose
/// default macro list has it). Regression: cleanup(8) sends the end-of-header and
/// end-of-message macros with its own `{daemon_name}`; the connect-time value must win.
async fn submission_with_standard_postfix_setup_is_signed(kind: MtaKind) {
    assert_eq!(kind, MtaKind::Postfix, "a Postfix scenario");
    let Some(r) = rig(kind, "", Socket::Inet, MtaOptions::default()).await else {
        return;
    };
    let reply = r.send_submission("user@example.com", &message("user@example.com", "std"));
    assert_eq!(reply.code, 250, "{reply}");
    let (qid, msg) = r.delivered(1).remove(0);
    assert_eq!(
        fields(&msg, "DKIM-Signature").len(),
        1,
        "not signed: {:?}\n{}",
        logged(&qid),
        text(&msg)
    );
    assert_eq!(
        logged(&qid),
        [format!(
            "{qid}: DKIM-Signature field added (s=rsa, d=example.com)"
        )]
    );
}
