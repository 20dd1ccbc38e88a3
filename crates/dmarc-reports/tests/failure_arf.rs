//! The AFRF failure report mail, read by an independent parser: Python's `email` package
//! (Debian's python3), with the RFC 6591 fields checked by value.

use chassis::mailauth::report::DeliveryResult;
use dmarc_policy::history::DkimEntry;
use dmarc_reports::failure::{message, Incident, Redaction};
use std::io::Write;
use std::process::{Command, Stdio};

const JUDGE: &str = r#"
import email, email.policy, json, sys
msg = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)
parts = list(msg.iter_parts())
fb = parts[1]
payload = fb.get_payload()
fields = {}
if isinstance(payload, list):
    for m in payload:
        for k, v in m.items():
            fields[k] = str(v)
else:
    for line in fb.get_payload(decode=True).decode().splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
headers = parts[2].get_content() if parts[2].get_content_type() == "text/rfc822-headers" else None
print(json.dumps({
    "content_type": msg.get_content_type(),
    "report_type": msg.get_param("report-type"),
    "subject": str(msg["subject"]),
    "to": str(msg["to"]),
    "auto_submitted": str(msg["auto-submitted"]),
    "part_types": [p.get_content_type() for p in parts],
    "fields": fields,
    "headers": headers if isinstance(headers, str) else headers.decode() if headers else None,
}))
"#;

fn judge(msg: &[u8]) -> serde_json::Value {
    let mut child = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(JUDGE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(msg).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python email could not read:\n{}",
        String::from_utf8_lossy(msg)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn afrf_report_parses_with_python_email_and_carries_the_rfc6591_fields() {
    let i = Incident {
        arrival: 1_728_000_000,
        source_ip: Some("198.51.100.7".parse().unwrap()),
        mail_from: "bounce@other.example".into(),
        rcpt_to: "bob@rx.test".into(),
        policy_domain: "example.com".into(),
        authentication_results:
            "rx.test; dkim=fail header.d=example.com; dmarc=fail header.from=example.com".into(),
        dkim: vec![DkimEntry {
            domain: "example.com".into(),
            selector: "s1".into(),
            result: "fail".into(),
        }],
        spf: Some(("other.example".into(), "mfrom".into(), "pass".into())),
        dkim_aligned: false,
        spf_aligned: false,
        headers: "From: Alice <alice@example.com>\r\nTo: bob@rx.test\r\nSubject: invoice\r\n"
            .into(),
        delivery: DeliveryResult::Delivered,
    };
    let msg = message(
        &i,
        "rx.test",
        "dmarc-noreply@rx.test",
        &["ruf@example.com".into()],
        Redaction::LocalParts,
        1_728_000_100,
    )
    .unwrap();
    let v = judge(&msg);
    assert_eq!(v["content_type"], "multipart/report");
    assert_eq!(v["report_type"], "feedback-report");
    assert_eq!(
        v["subject"],
        "DMARC failure report for example.com from 198.51.100.7"
    );
    assert_eq!(v["to"], "ruf@example.com");
    assert_eq!(v["auto_submitted"], "auto-generated");
    assert_eq!(
        v["part_types"],
        serde_json::json!([
            "text/plain",
            "message/feedback-report",
            "text/rfc822-headers"
        ])
    );
    let f = &v["fields"];
    for (k, want) in [
        ("Feedback-Type", "auth-failure"),
        ("Version", "1"),
        ("Auth-Failure", "dmarc"),
        ("Source-IP", "198.51.100.7"),
        ("Reported-Domain", "example.com"),
        ("Reporting-MTA", "dns;rx.test"),
        ("Original-Mail-From", "<redacted@other.example>"),
        ("Original-Rcpt-To", "<redacted@rx.test>"),
        ("DKIM-Domain", "example.com"),
        ("DKIM-Selector", "s1"),
        ("Identity-Alignment", "none"),
        ("Delivery-Result", "delivered"),
        (
            "Authentication-Results",
            "rx.test; dkim=fail header.d=example.com; dmarc=fail header.from=example.com",
        ),
    ] {
        assert_eq!(f[k].as_str(), Some(want), "{k} in {f:#}");
    }
    let text = String::from_utf8_lossy(&msg);
    assert!(!text.contains("quoted-printable"), "{text}");
    assert!(text.contains("Message-ID: <failure.1728000000."), "{text}");
    assert!(text.contains("@rx.test>\r\n"), "{text}");
    let headers = v["headers"].as_str().unwrap();
    assert!(
        headers.contains("From: Alice <redacted@example.com>"),
        "{headers}"
    );
    assert!(headers.contains("Subject: invoice"), "{headers}");
}
