//! Addresses out of header fields (From, Sender): RFC 5322 mailbox lists with display names,
//! quoted strings, comments, angle brackets and groups. Both daemons need the author domain, and
//! DMARC must see *every* address in From, so this returns all of them.

/// One mailbox found in a header: local part and domain (domain lowercased, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub local: String,
    pub domain: String,
}

impl Mailbox {
    pub fn address(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

/// Every mailbox in an address-list header value. Entries without a usable `@domain` are
/// skipped (they carry no domain a policy can act on); the caller sees them as missing.
pub fn mailboxes(value: &str) -> Vec<Mailbox> {
    let mut out = Vec::new();
    for item in split_top_level(value) {
        if let Some(addr) = addr_spec_of(&item) {
            if let Some(mb) = split_addr(&addr) {
                out.push(mb);
            }
        }
    }
    out
}

/// Splits on commas and group punctuation that are not inside quotes, comments or brackets.
fn split_top_level(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut depth_comment = 0usize;
    let mut in_quote = false;
    let mut in_angle = false;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_quote || depth_comment > 0 => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' if depth_comment == 0 => {
                in_quote = !in_quote;
                cur.push(c);
            }
            '(' if !in_quote => {
                depth_comment += 1;
                cur.push(c);
            }
            ')' if !in_quote && depth_comment > 0 => {
                depth_comment -= 1;
                cur.push(c);
            }
            '<' if !in_quote && depth_comment == 0 => {
                in_angle = true;
                cur.push(c);
            }
            '>' if !in_quote && depth_comment == 0 => {
                in_angle = false;
                cur.push(c);
            }
            ',' | ';' if !in_quote && depth_comment == 0 && !in_angle => {
                items.push(std::mem::take(&mut cur));
            }
            ':' if !in_quote && depth_comment == 0 && !in_angle => {
                // A group name ends here ("undisclosed: a@b, c@d;"): drop what came before.
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    items.push(cur);
    items.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// The addr-spec of one mailbox: the content of `<...>` if present, else the bare text, with
/// comments and folding whitespace removed.
fn addr_spec_of(item: &str) -> Option<String> {
    let cleaned = strip_comments(item);
    let spec = match (find_unquoted(&cleaned, '<'), cleaned.rfind('>')) {
        (Some(open), Some(close)) if close > open => cleaned[open + 1..close].to_string(),
        (Some(open), None) => cleaned[open + 1..].to_string(),
        _ => cleaned,
    };
    // A source route (<@a,@b:user@c>) is obsolete syntax: keep what follows the colon.
    let spec = match (spec.starts_with('@'), spec.find(':')) {
        (true, Some(i)) => spec[i + 1..].to_string(),
        _ => spec,
    };
    let spec: String = spec.split_whitespace().collect::<Vec<_>>().join("");
    (!spec.is_empty()).then_some(spec)
}

fn find_unquoted(s: &str, wanted: char) -> Option<usize> {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            c if c == wanted && !in_quote => return Some(i),
            _ => {}
        }
    }
    None
}

fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    let mut in_quote = false;
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            if depth == 0 {
                out.push(c);
            }
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote || depth > 0 => {
                escaped = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '"' if depth == 0 => {
                in_quote = !in_quote;
                out.push(c);
            }
            '(' if !in_quote => depth += 1,
            ')' if !in_quote && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn split_addr(spec: &str) -> Option<Mailbox> {
    let at = spec.rfind('@')?;
    let local = spec[..at].trim();
    let domain = spec[at + 1..]
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if domain.is_empty()
        || !domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c) || !c.is_ascii())
    {
        return None;
    }
    if domain.starts_with('.') || domain.contains("..") {
        return None;
    }
    Some(Mailbox {
        local: local.to_string(),
        domain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(v: &str) -> Vec<String> {
        mailboxes(v).iter().map(Mailbox::address).collect()
    }

    #[test]
    fn common_forms() {
        assert_eq!(addrs(" user@Example.COM"), vec!["user@example.com"]);
        assert_eq!(
            addrs(" \"Doe, John\" <john@example.org>"),
            vec!["john@example.org"]
        );
        assert_eq!(
            addrs(" John (the boss) <john@example.org> (work)"),
            vec!["john@example.org"]
        );
        assert_eq!(
            addrs(" a@one.example, B <b@two.example>"),
            vec!["a@one.example", "b@two.example"]
        );
        assert_eq!(
            addrs(" team: a@x.example, b@y.example;"),
            vec!["a@x.example", "b@y.example"]
        );
        assert_eq!(addrs(" <@relay.example:u@d.example>"), vec!["u@d.example"]);
    }

    #[test]
    fn quoted_at_sign_in_display_name_is_not_the_address() {
        assert_eq!(
            addrs(" \"evil@attacker.example\" <user@good.example>"),
            vec!["user@good.example"]
        );
    }

    #[test]
    fn no_domain_yields_nothing() {
        assert!(mailboxes(" undisclosed-recipients:;").is_empty());
        assert!(mailboxes(" justaname").is_empty());
        assert!(mailboxes(" user@").is_empty());
        assert!(mailboxes("").is_empty());
        assert!(mailboxes(" a@b..c").is_empty());
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        for v in [
            "<", ">", "\"", "(((", ")", "\\", "@", "<@", "a@<b>", "\"\\", "(\\", ",,,,", ":::;;;",
        ] {
            let _ = mailboxes(v);
        }
    }
}
