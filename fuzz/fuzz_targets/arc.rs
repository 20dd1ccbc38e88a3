//! ARC header fields: our tag reader and set grouping (`chassis::arc::tags`, `instance`,
//! `collect_sets`, `next_instance`, `aar_results`), mail-auth's parse of the same fields
//! through the chassis (`dkimparse::parse_capped_with`, `arc::newest_ams_spec`), and our
//! sealer over whatever chain came out.
//!
//! Input: a header block, one field per line (`Name: value`; lines starting with a space or
//! a tab continue the previous field), optionally followed by an empty line and a body.
//!
//! Properties checked besides "never panics":
//! * a chain `collect_sets` accepts has instances 1..=n in order, each set with a parsable cv;
//! * `next_instance` is n + 1 for such a chain (the highest instance plus one);
//! * sealing a chain we accepted (with a fixed Ed25519 key, when the chain allows sealing)
//!   yields three fields that, added to the message, form a chain of n + 1 sets that
//!   `collect_sets` accepts again, with our domain as the newest sealer.
#![no_main]

use chassis::arc::{self, Cv, Sealer};
use chassis::mailauth::crypto::Ed25519Key;
use chassis::mailauth::dkim::Canonicalization;
use chassis::message::HeaderField;
use libfuzzer_sys::fuzz_target;

fn fields(head: &str) -> Vec<HeaderField> {
    let mut out: Vec<HeaderField> = Vec::new();
    for line in head.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.value.extend_from_slice(b"\r\n");
                last.value.extend_from_slice(line.as_bytes());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            out.push(HeaderField::new(name, value));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (head, body) = match text.split_once("\n\n") {
        Some((h, b)) => (h.to_string(), b.to_string()),
        None => (text.to_string(), String::new()),
    };
    let headers = fields(&head);
    for h in &headers {
        let _ = arc::tags(&h.value);
        if let Some(kind) = arc::ArcField::of(&h.name) {
            let _ = arc::instance(kind, &h.value);
        }
        let _ = arc::aar_results(&h.value);
    }
    // mail-auth's reading of the same block (the parse both daemons verify from).
    let mut raw = Vec::new();
    for h in &headers {
        raw.extend_from_slice(&h.name);
        raw.push(b':');
        raw.extend_from_slice(&h.value);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body.replace('\n', "\r\n").as_bytes());
    if let Some(capped) = chassis::dkimparse::parse_capped_with(&raw, 0, &[]) {
        let _ = arc::newest_ams_spec(&capped.message);
    }

    let Ok(sets) = arc::collect_sets(&headers) else {
        return;
    };
    for (n, s) in sets.iter().enumerate() {
        assert_eq!(s.instance as usize, n + 1);
    }
    if sets.is_empty() {
        return;
    }
    assert_eq!(arc::next_instance(&headers) as usize, sets.len() + 1);
    if sets.last().map(|s| s.cv) == Some(Cv::Fail) || sets.len() >= arc::MAX_SETS as usize {
        return;
    }
    // RFC 8032 §7.1 test 1.
    let seed: Vec<u8> = (0..32)
        .map(|i| {
            u8::from_str_radix(
                &"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"[i * 2..i * 2 + 2],
                16,
            )
            .unwrap()
        })
        .collect();
    let public: Vec<u8> = (0..32)
        .map(|i| {
            u8::from_str_radix(
                &"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"[i * 2..i * 2 + 2],
                16,
            )
            .unwrap()
        })
        .collect();
    let key = Ed25519Key::from_seed_and_public_key(&seed, &public).expect("key");
    let sign = ["From".to_string(), "Subject".to_string()];
    let sealer = Sealer {
        domain: "fuzz.example",
        selector: "s",
        key: &key,
        sign_headers: &sign,
        body_canon: Canonicalization::Relaxed,
        timestamp: 1,
    };
    let instance = arc::next_instance(&headers);
    let Ok(set) = arc::seal(&sealer, &headers, body.as_bytes(), "mx.fuzz.example; arc=pass", &sets, instance, Cv::Pass) else {
        return;
    };
    let mut more = vec![
        HeaderField::new("ARC-Seal", &format!(" {}", set.seal.replace('\n', "\r\n"))),
        HeaderField::new("ARC-Message-Signature", &format!(" {}", set.ams.replace('\n', "\r\n"))),
        HeaderField::new("ARC-Authentication-Results", &format!(" {}", set.aar.replace('\n', "\r\n"))),
    ];
    more.extend(headers);
    let again = arc::collect_sets(&more).unwrap_or_else(|e| panic!("our set breaks the chain: {e}"));
    assert_eq!(again.len(), sets.len() + 1);
    assert_eq!(again.last().map(|s| s.domain.as_str()), Some("fuzz.example"));
});
