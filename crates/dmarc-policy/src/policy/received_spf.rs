//! An upstream SPF result from a `Received-SPF` header (RFC 7208 §9.1), for sites where an
//! earlier hop checks SPF (a Postfix policy service such as policyd-spf) and dmarc-milter's own
//! check is off (`spf_self_validate = false`), as OpenDMARC does: only the topmost
//! `Received-SPF` counts (the one the receiving MTA prepended; anything below it came with the
//! message), and only when it speaks of the MAIL FROM identity and names exactly the envelope
//! sender of this transaction. `spf_ignore_results` turns this off.

use super::spf::{Scope, SpfCheck};
use chassis::mailauth::SpfResult;
use chassis::message::HeaderField;

/// RFC 7208 §8 result words (and RFC 4408's `error`/`unknown`).
fn result(word: &str) -> Option<SpfResult> {
    Some(match word.to_ascii_lowercase().as_str() {
        "pass" => SpfResult::Pass,
        "fail" => SpfResult::Fail,
        "softfail" => SpfResult::SoftFail,
        "neutral" => SpfResult::Neutral,
        "none" => SpfResult::None,
        "temperror" | "error" => SpfResult::TempError,
        "permerror" | "unknown" => SpfResult::PermError,
        _ => return None,
    })
}

/// The `key=value` pairs after the result and the comment.
fn pairs(rest: &str) -> Vec<(String, String)> {
    // Drop comments (nested parentheses included) before splitting.
    let mut plain = String::with_capacity(rest.len());
    let mut depth = 0usize;
    for c in rest.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    plain
        .split(';')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            let v = v.trim().trim_matches('"');
            (k.trim().to_ascii_lowercase(), v.to_string())
        })
        .collect()
}

fn bare_address(a: &str) -> String {
    a.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_ascii_lowercase()
}

/// The SPF result the topmost `Received-SPF` field states for `mail_from`, if it states one.
pub fn upstream(headers: &[HeaderField], mail_from: &str) -> Option<SpfCheck> {
    let top = headers.iter().find(|h| h.name_is("Received-SPF"))?;
    let value = top.value_str();
    let value = value.trim();
    let (word, rest) = value
        .split_once(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .unwrap_or((value, ""));
    let result = result(word)?;
    let kv = pairs(rest);
    let get = |k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if !get("identity").is_some_and(|i| i.eq_ignore_ascii_case("mailfrom")) {
        return None;
    }
    let sender = bare_address(mail_from);
    if sender.is_empty() || get("envelope-from").map(bare_address) != Some(sender.clone()) {
        return None;
    }
    let domain = sender.rsplit_once('@')?.1.trim_end_matches('.').to_string();
    Some(SpfCheck {
        scope: Scope::MailFrom,
        domain,
        result,
        unanswered: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> HeaderField {
        HeaderField::new(name, value)
    }

    const PASS: &str = " pass (mx.example.org: domain of a@example.com designates 192.0.2.1 as permitted sender) client-ip=192.0.2.1; envelope-from=\"a@example.com\"; helo=mail.example.com; receiver=mx.example.org; identity=mailfrom";

    #[test]
    fn topmost_mailfrom_result_for_this_sender() {
        let got = upstream(&[h("Received-SPF", PASS)], "<A@Example.com>").unwrap();
        assert_eq!(
            (got.scope, got.domain.as_str(), got.result),
            (Scope::MailFrom, "example.com", SpfResult::Pass)
        );
        let softfail = PASS.replace(" pass ", " SoftFail ");
        assert_eq!(
            upstream(&[h("Received-SPF", &softfail)], "a@example.com").map(|c| c.result),
            Some(SpfResult::SoftFail)
        );
    }

    #[test]
    fn anything_else_is_no_result() {
        // Another sender, the HELO identity, no identity, an unknown word, or a pass below a
        // fail (only the topmost field counts).
        assert!(upstream(&[h("Received-SPF", PASS)], "b@example.com").is_none());
        let helo = PASS.replace("identity=mailfrom", "identity=helo");
        assert!(upstream(&[h("Received-SPF", &helo)], "a@example.com").is_none());
        let no_id = PASS.replace("; identity=mailfrom", "");
        assert!(upstream(&[h("Received-SPF", &no_id)], "a@example.com").is_none());
        let odd = PASS.replace(" pass ", " great ");
        assert!(upstream(&[h("Received-SPF", &odd)], "a@example.com").is_none());
        let fail = PASS.replace(" pass ", " fail ");
        let got = upstream(
            &[h("Received-SPF", &fail), h("Received-SPF", PASS)],
            "a@example.com",
        );
        assert_eq!(got.map(|c| c.result), Some(SpfResult::Fail));
        assert!(upstream(&[h("Received-SPF", PASS)], "").is_none());
        // A comment cannot smuggle a key.
        let smuggled = " pass (identity=mailfrom; envelope-from=a@example.com) client-ip=192.0.2.1";
        assert!(upstream(&[h("Received-SPF", smuggled)], "a@example.com").is_none());
    }
}
