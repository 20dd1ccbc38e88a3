//! DMARC policy record discovery by the letter of the RFCs, ahead of mail-auth's tree walk.
//!
//! mail-auth takes the first TXT record that parses as DMARC at each name, accepts `v=dmarc1`
//! in any case and skips tokens it does not understand. The RFCs say otherwise, and each
//! difference is a wrong reject or a forged pass:
//!
//! * RFC 7489 §6.6.3 step 1 / RFC 9989 §4.10.1: records that do not start with `v=DMARC1` are
//!   discarded; the version value is case-sensitive (RFC 7489 §6.3: "MUST match precisely";
//!   the tag name is not, ABNF literals are case-insensitive);
//! * a record that breaks the record ABNF (a bare token such as `reject` with no `=`, a tag
//!   name that is no tag name) is discarded the same way: it is not a DMARC record, so the
//!   name counts as publishing nothing and the walk goes on (our reading; see
//!   docs/dmarc-milter.md);
//! * §6.6.3 step 2: when more than one DMARC record remains at the name that would supply the
//!   policy, discovery terminates and DMARC is not applied to the message.
//!
//! We look up every name the walk can visit (in parallel, through the same resolver and its
//! cache), decide each name as the RFCs say, and hand mail-auth a TXT cache holding exactly
//! those decisions, so its walk (org-domain rules, `psd=`, `np=`) sees only valid, single
//! records.

use chassis::mailauth::dmarc::{Dmarc, Psd};
use chassis::mailauth::hickory_resolver::proto::op::ResponseCode;
use chassis::mailauth::{DnsError, Error, MessageAuthenticator, ResolverCache, Txt};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long decisions stay in the per-message cache (one message's evaluation).
const LIFETIME: Duration = Duration::from_secs(60);

/// What one name publishes, after the RFC's filtering.
#[derive(Debug, Clone, PartialEq)]
pub enum Published {
    /// No DMARC record (none at all, or only discarded ones).
    Nothing,
    /// Exactly one valid record: its text and its parse.
    One(String, Arc<Dmarc>),
    /// Several valid records (RFC 7489 §6.6.3: DMARC is not applied).
    Several(usize),
    /// The lookup failed (SERVFAIL, timeout): mail-auth looks again and reports temperror.
    Unknown,
}

/// The names of the RFC 9989 §4.10.1 walk for `domain`, in walk order: the domain itself, then
/// (for 8 labels or more) its last 7 labels, then one label fewer at a time down to the TLD.
pub fn walk_names(domain: &str) -> Vec<String> {
    let labels: Vec<&str> = domain.split('.').filter(|l| !l.is_empty()).collect();
    let total = labels.len();
    let mut names = Vec::new();
    if total < 2 {
        return names;
    }
    let mut count = total;
    loop {
        names.push(labels[total - count..].join("."));
        if count == 1 {
            break;
        }
        count = if count >= 8 { 7 } else { count - 1 };
    }
    names
}

/// True when `text` follows the DMARC record ABNF closely enough to be a DMARC record: it
/// starts with `v=DMARC1` (value case-sensitive) and every further part is empty or
/// `tagname = value` with a tag name of letters, digits and `_`.
pub fn is_dmarc_record(text: &str) -> bool {
    let mut parts = text.split(';');
    let Some((v, version)) = parts.next().and_then(|p| p.split_once('=')) else {
        return false;
    };
    if !v.trim().eq_ignore_ascii_case("v") || version.trim() != "DMARC1" {
        return false;
    }
    parts.all(|part| {
        let part = part.trim_matches([' ', '\t', '\r', '\n']);
        if part.is_empty() {
            return true;
        }
        let Some((name, _value)) = part.split_once('=') else {
            return false;
        };
        let name = name.trim_end_matches([' ', '\t']);
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Decides what one name publishes from its TXT records (each already joined from its strings).
pub fn decide(records: &[Vec<u8>]) -> Published {
    use chassis::mailauth::common::TxtRecordParser;
    let valid: Vec<(String, Arc<Dmarc>)> = records
        .iter()
        .filter_map(|r| std::str::from_utf8(r).ok())
        .filter(|t| is_dmarc_record(t))
        .filter_map(|t| Some((t.to_string(), Arc::new(Dmarc::parse(t.as_bytes()).ok()?))))
        .collect();
    match valid.len() {
        0 => Published::Nothing,
        1 => {
            let (text, record) = valid.into_iter().next().expect("one");
            Published::One(text, record)
        }
        n => Published::Several(n),
    }
}

async fn lookup(auth: &MessageAuthenticator, name: &str) -> Published {
    use chassis::mailauth::hickory_resolver::proto::rr::RData;
    let fqdn = format!("_dmarc.{name}.");
    let Ok(qname) = chassis::mailauth::hickory_resolver::proto::rr::Name::from_ascii(&fqdn) else {
        return Published::Nothing;
    };
    match auth.resolver().txt_lookup(qname).await {
        Ok(answer) => {
            let records: Vec<Vec<u8>> = answer
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(txt.txt_data.iter().flatten().copied().collect()),
                    _ => None,
                })
                .collect();
            decide(&records)
        }
        Err(e) if e.is_no_records_found() => Published::Nothing,
        Err(_) => Published::Unknown,
    }
}

/// The outcome of discovery for one author domain.
#[derive(Debug)]
pub struct Discovery {
    /// (name, what it publishes) in walk order, up to where mail-auth's walk stops.
    pub names: Vec<(String, Published)>,
}

impl Discovery {
    /// The name whose several records stop DMARC (RFC 7489 §6.6.3 step 2): the first name in
    /// walk order that publishes anything, when it publishes several records.
    pub fn conflicting(&self) -> Option<(&str, usize)> {
        self.names.iter().find_map(|(n, p)| match p {
            Published::Nothing => None,
            Published::Several(k) => Some(Some((n.as_str(), *k))),
            _ => Some(None),
        })?
    }

    /// The record text published at `name`, if exactly one.
    pub fn text_at(&self, name: &str) -> Option<&str> {
        self.names.iter().find_map(|(n, p)| match p {
            Published::One(text, _) if n == name => Some(text.as_str()),
            _ => None,
        })
    }

    /// The nearest name (author domain first) publishing `record`.
    pub fn located(&self, record: &Dmarc) -> Option<&str> {
        self.names.iter().find_map(|(n, p)| match p {
            Published::One(_, r) if **r == *record => Some(n.as_str()),
            _ => None,
        })
    }

    /// The TXT cache for mail-auth's walk: every decided name, as a record or as not found.
    pub fn cache(&self) -> DecidedTxt {
        let until = Instant::now() + LIFETIME;
        let mut map = HashMap::new();
        for (name, p) in &self.names {
            let txt = match p {
                Published::One(_, r) => Txt::Dmarc(r.clone()),
                // Several records above the policy's name only matter to the org-domain walk,
                // where a name without one usable record publishes nothing.
                Published::Nothing | Published::Several(_) => {
                    Txt::Error(Error::Dns(DnsError::RecordNotFound(ResponseCode::NXDomain)))
                }
                Published::Unknown => continue,
            };
            map.insert(format!("_dmarc.{name}.").into_boxed_str(), (txt, until));
        }
        DecidedTxt(Mutex::new(map))
    }
}

/// Looks up and decides every name of the walk for `domain`, in parallel; stops the list where
/// mail-auth's walk stops (a record with `psd=y` or `psd=n`).
pub async fn discover(auth: &MessageAuthenticator, domain: &str) -> Discovery {
    let names = walk_names(domain);
    let answers = futures_util::future::join_all(names.iter().map(|n| lookup(auth, n))).await;
    let mut out = Vec::new();
    for (name, p) in names.into_iter().zip(answers) {
        let stop = matches!(&p, Published::One(_, r) if matches!(r.psd, Psd::Yes | Psd::No));
        out.push((name, p));
        if stop {
            break;
        }
    }
    Discovery { names: out }
}

/// A TXT cache holding discovery's decisions (and whatever mail-auth adds to it).
pub struct DecidedTxt(Mutex<HashMap<Box<str>, (Txt, Instant)>>);

impl ResolverCache<Box<str>, Txt> for DecidedTxt {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(t, _)| t.clone())
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(name).map(|(t, _)| t)
    }

    fn insert(&self, name: Box<str>, value: Txt, valid_until: Instant) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(name, (value, valid_until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_order_follows_rfc9989() {
        assert_eq!(
            walk_names("a.mail.example.com"),
            [
                "a.mail.example.com",
                "mail.example.com",
                "example.com",
                "com"
            ]
        );
        let long = "a.b.c.d.e.f.g.h.example.com";
        let names = walk_names(long);
        assert_eq!(names[0], long);
        // 8 labels or more: the second query is for the last 7, then one fewer each time.
        assert_eq!(names[1], "d.e.f.g.h.example.com");
        assert_eq!(names[2], "e.f.g.h.example.com");
        assert_eq!(names.last().map(String::as_str), Some("com"));
        assert_eq!(names.len(), 8);
        assert!(walk_names("localhost").is_empty());
    }

    #[test]
    fn record_syntax() {
        assert!(is_dmarc_record("v=DMARC1; p=none"));
        assert!(is_dmarc_record("V = DMARC1 ;p=reject;"));
        assert!(is_dmarc_record("v=DMARC1"));
        assert!(is_dmarc_record("v=DMARC1; p=none; future_tag=1"));
        // RFC 7489 §6.3: the version value must match precisely.
        assert!(!is_dmarc_record("v=dmarc1; p=reject"));
        assert!(!is_dmarc_record("v=DMARC2; p=reject"));
        assert!(!is_dmarc_record("p=reject; v=DMARC1"));
        // A bare token breaks the record ABNF.
        assert!(!is_dmarc_record("v=DMARC1; p=none; reject"));
        assert!(!is_dmarc_record("v=DMARC1; p=none; 1x=y"));
        assert!(!is_dmarc_record("v=spf1 -all"));
    }

    #[test]
    fn several_records_and_discarded_ones() {
        let r = |s: &str| s.as_bytes().to_vec();
        assert_eq!(decide(&[]), Published::Nothing);
        assert_eq!(
            decide(&[r("v=spf1 -all"), r("v=dmarc1; p=reject")]),
            Published::Nothing
        );
        assert!(matches!(
            decide(&[r("v=DMARC1; p=reject"), r("v=spf1 -all")]),
            Published::One(..)
        ));
        assert_eq!(
            decide(&[r("v=DMARC1; p=reject"), r("v=DMARC1; p=none")]),
            Published::Several(2)
        );
        // An invalid second record is discarded, not counted.
        assert!(matches!(
            decide(&[r("v=DMARC1; p=reject"), r("v=DMARC1; p=none; bad")]),
            Published::One(..)
        ));
    }

    #[test]
    fn conflict_only_where_the_policy_would_come_from() {
        let one = |t: &str| {
            use chassis::mailauth::common::TxtRecordParser;
            Published::One(t.into(), Arc::new(Dmarc::parse(t.as_bytes()).unwrap()))
        };
        let d = Discovery {
            names: vec![
                ("a.example.com".into(), Published::Nothing),
                ("example.com".into(), Published::Several(2)),
                ("com".into(), Published::Nothing),
            ],
        };
        assert_eq!(d.conflicting(), Some(("example.com", 2)));
        let d = Discovery {
            names: vec![
                ("a.example.com".into(), one("v=DMARC1; p=none")),
                ("example.com".into(), Published::Several(2)),
            ],
        };
        assert_eq!(d.conflicting(), None);
        assert_eq!(d.text_at("a.example.com"), Some("v=DMARC1; p=none"));
    }
}
