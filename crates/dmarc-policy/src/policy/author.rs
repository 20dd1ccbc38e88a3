//! The RFC5322.From domain DMARC is about, and the RFC 5322 header-count rules.
//!
//! Done here, before mail-auth sees the message, so that every odd case has a defined result:
//! mail-auth silently returns "none" for no From and for several From domains, which is the
//! CVE-2019-16378 class of bypass (OpenDMARC evaluated only the first address).

use chassis::address::mailboxes;
use chassis::message::HeaderField;

/// What the From header(s) name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Author {
    /// No From header at all.
    Missing,
    /// A From header without a single usable `local@domain`.
    Unparseable,
    /// One author domain (several addresses in the same domain count as one).
    Domain(String),
    /// Addresses in different domains (sorted, deduplicated).
    Multiple(Vec<String>),
}

/// The author domain(s) over every From field of the message.
pub fn author(headers: &[HeaderField]) -> Author {
    let froms: Vec<&HeaderField> = headers.iter().filter(|h| h.name_is("From")).collect();
    if froms.is_empty() {
        return Author::Missing;
    }
    let mut domains: Vec<String> = froms
        .iter()
        .flat_map(|h| mailboxes(&h.value_str()))
        .map(|m| m.domain)
        .filter(|d| !d.is_empty())
        .collect();
    domains.sort();
    domains.dedup();
    match domains.len() {
        0 => Author::Unparseable,
        1 => Author::Domain(domains.remove(0)),
        _ => Author::Multiple(domains),
    }
}

/// OpenDMARC's RequiredHeaders check (RFC 5322 §3.6): exactly one From and one Date, at most
/// one of the singleton fields. Returns OpenDMARC's reason text for the first violation.
pub fn header_violation(headers: &[HeaderField]) -> Option<String> {
    let count = |name: &str| headers.iter().filter(|h| h.name_is(name)).count();
    for name in ["From", "Date"] {
        if count(name) != 1 {
            return Some(format!("not exactly one {name} field"));
        }
    }
    for name in [
        "Reply-To",
        "To",
        "Cc",
        "Bcc",
        "Message-Id",
        "In-Reply-To",
        "References",
        "Subject",
    ] {
        if count(name) > 1 {
            return Some(format!("multiple {name} fields"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> HeaderField {
        HeaderField::new(name, value)
    }

    #[test]
    fn author_cases() {
        assert_eq!(author(&[h("To", "a@b.example")]), Author::Missing);
        assert_eq!(author(&[h("From", "undisclosed")]), Author::Unparseable);
        assert_eq!(
            author(&[h("From", "A <a@Example.COM>, b@example.com")]),
            Author::Domain("example.com".into())
        );
        assert_eq!(
            author(&[h("From", "a@example.com"), h("From", "b@evil.example")]),
            Author::Multiple(vec!["evil.example".into(), "example.com".into()])
        );
    }

    #[test]
    fn header_rules() {
        let ok = [h("From", "a@b.example"), h("Date", "x"), h("To", "c@d")];
        assert_eq!(header_violation(&ok), None);
        assert_eq!(
            header_violation(&[h("From", "a@b.example")]).as_deref(),
            Some("not exactly one Date field")
        );
        let two_subjects = [
            h("From", "a@b"),
            h("Date", "x"),
            h("Subject", "1"),
            h("subject", "2"),
        ];
        assert_eq!(
            header_violation(&two_subjects).as_deref(),
            Some("multiple Subject fields")
        );
    }
}
