//! OpenDKIM-style host and address lists: `InternalHosts`, `PeerList`,
//! `ExternalIgnoreList` (OpenDKIM) and `IgnoreHosts` (OpenDMARC).
//!
//! These lists decide whether mail is signed or verified and whether a
//! client is ignored entirely, so existing list files must keep meaning what
//! they meant. The entry syntax is OpenDKIM's: an IPv4 or IPv6 address, a
//! CIDR network (`192.0.2.0/24`, `2001:db8::/32`, `[2001:db8::]/32`), a host
//! name (`mail.example.com`, exact), a domain suffix (`.example.com`, any
//! name below it) and `!` before any of these to exclude it.
//!
//! Where OpenDKIM silently did something surprising this module refuses the
//! entry instead, with a message naming it, because a list that quietly
//! fails to match is how mail gets signed (or not signed) by accident:
//!
//! * a CIDR entry with host bits set (`10.0.0.1/8`) never matched in
//!   OpenDKIM; here it is an error that suggests the network form;
//! * short `inet_addr` forms (`192.0.2/24`, `127.1`) meant something other
//!   than they look; here they are errors;
//! * IPv6 could not be written inline (`csl:127.0.0.1,::1`, or just `::1`);
//!   here it can.
//!
//! Matching follows OpenDKIM's "most precise entry wins" rule, made
//! explicit: see [`HostList::matches`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

/// A parsed host/address list.
///
/// The default value is the empty list, which matches nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostList {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    pattern: Pattern,
    negated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// An IPv4 network; `prefix == 32` is a single address.
    V4 { net: u32, prefix: u8 },
    /// An IPv6 network; `prefix == 128` is a single address.
    V6 { net: u128, prefix: u8 },
    /// An exact host name, lowercased, without a trailing dot.
    Host(String),
    /// A domain suffix without its leading dot; matches names strictly below
    /// it (`a.example.com` for `example.com`), not the domain itself.
    Suffix(String),
}

/// What was wrong with one list entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    /// `!` with nothing after it.
    #[error("'!' must be followed by an address, network or host name")]
    EmptyNegation,
    /// `!!entry`.
    #[error("only one '!' is allowed")]
    DoubleNegation,
    /// Spaces inside a single entry (for example in a TOML array item).
    #[error("an entry cannot contain whitespace; give each entry separately")]
    Whitespace,
    /// A `[` without `]` or the other way round.
    #[error("unbalanced brackets")]
    Brackets,
    /// Text before `/` that is not an IP address.
    #[error("not a valid IP address before the '/'")]
    BadNetworkAddress,
    /// The prefix length after `/` is not a number in range.
    #[error("the prefix length must be a number from 0 to {max}")]
    BadPrefix {
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
    /// `10.0.0.1/8`: OpenDKIM never matched such an entry.
    #[error(
        "the address has bits set beyond the /{prefix} prefix, so it is not a network; did you mean {suggestion}?"
    )]
    HostBitsSet {
        /// The prefix length as written.
        prefix: u8,
        /// The entry with the host bits cleared.
        suggestion: String,
    },
    /// Digits and dots that do not form a full dotted quad.
    #[error(
        "not a valid IPv4 address; write four decimal numbers 0-255 without leading zeros (short forms such as 192.0.2 mean something else to inet_addr and are refused)"
    )]
    BadIpv4,
    /// Contains `:` but is not an IPv6 address (a zone index such as
    /// `%eth0` is not supported either).
    #[error("not a valid IPv6 address")]
    BadIpv6,
    /// Not an acceptable host name or `.domain`.
    #[error("not a valid host name or .domain ({0})")]
    BadHostname(&'static str),
}

/// Why a host list could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum HostListError {
    /// An entry given inline (in a `csl:` list, a plain string or an array).
    #[error("invalid host list entry {entry:?}: {problem}")]
    BadEntry {
        /// The entry as written.
        entry: String,
        /// What was wrong with it.
        problem: EntryProblem,
    },
    /// An entry in a list file.
    #[error("{}:{line}: invalid host list entry {entry:?}: {problem}", path.display())]
    BadFileEntry {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The entry as written.
        entry: String,
        /// What was wrong with it.
        problem: EntryProblem,
    },
    /// The list file could not be read.
    #[error("cannot read host list file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An OpenDKIM data set type (db:, ldap:, ...) that is not implemented
    /// for host lists.
    #[error(
        "data set type {kind:?} is not supported for host lists; use file:, refile:, csl: or a list of entries"
    )]
    UnsupportedDataSet {
        /// The data set prefix, without the colon.
        kind: String,
    },
    /// The specification is empty (an empty list is written `csl:` or `[]`).
    #[error("empty host list specification (write \"csl:\" or [] for an empty list)")]
    EmptySpec,
    /// `file:` with no path.
    #[error("data set {spec:?} has no file name")]
    MissingPath {
        /// The specification as written.
        spec: String,
    },
}

/// Data set prefixes OpenDKIM knows but this implementation does not read.
const UNSUPPORTED_KINDS: &[&str] = &[
    "db", "dsn", "ldap", "ldaps", "ldapi", "lua", "memcache", "erlang", "mdb", "repute", "socket",
];

/// How one candidate match ranks; greater wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Best {
    exact: bool,
    specificity: usize,
    negated: bool,
}

impl Best {
    /// Keeps the most specific candidate; at equal specificity a negation
    /// wins, so an explicit exclusion is never overridden by an equally
    /// precise inclusion.
    fn offer(slot: &mut Option<Best>, cand: Best) {
        match slot {
            None => *slot = Some(cand),
            Some(cur) => {
                let c = (cand.exact, cand.specificity);
                let k = (cur.exact, cur.specificity);
                if c > k {
                    *cur = cand;
                } else if c == k {
                    cur.negated |= cand.negated;
                }
            }
        }
    }
}

impl HostList {
    /// The empty list; matches nothing.
    pub fn empty() -> HostList {
        HostList::default()
    }

    /// `127.0.0.1` and `::1`: OpenDKIM's `InternalHosts` default (what its
    /// code uses, though its manual mentions only 127.0.0.1) and OpenDMARC's
    /// `IgnoreHosts` default.
    pub fn default_internal() -> HostList {
        HostList {
            rules: vec![
                Rule {
                    pattern: Pattern::V4 {
                        net: u32::from(Ipv4Addr::LOCALHOST),
                        prefix: 32,
                    },
                    negated: false,
                },
                Rule {
                    pattern: Pattern::V6 {
                        net: u128::from(Ipv6Addr::LOCALHOST),
                        prefix: 128,
                    },
                    negated: false,
                },
            ],
        }
    }

    /// True if the list has no entries.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The number of entries (negations included).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Parses individual entries, for example the items of a TOML array.
    ///
    /// Each item is one entry; text from `#` on is a comment, and items that
    /// are blank after removing it are skipped.
    pub fn parse_entries<'a, I>(entries: I) -> Result<HostList, HostListError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut rules = Vec::new();
        for raw in entries {
            let text = strip_comment(raw).trim();
            if text.is_empty() {
                continue;
            }
            let rule = parse_entry(text).map_err(|problem| HostListError::BadEntry {
                entry: text.to_string(),
                problem,
            })?;
            rules.push(rule);
        }
        Ok(HostList { rules })
    }

    /// Parses an OpenDKIM data set value naming a host list.
    ///
    /// * `file:/path`, `refile:/path` or a bare `/path`: a file with entries
    ///   separated by whitespace or newlines and `#` comments. (`refile:`
    ///   patterns mean nothing for host lists, so it reads the same way.)
    ///   A relative path is resolved against `base_dir` if given, otherwise
    ///   against the current directory.
    /// * `csl:a,b,c`, or any other string: a comma-separated list. IPv6
    ///   addresses work inline here, unlike in OpenDKIM.
    /// * Other OpenDKIM data set types (`db:`, `ldap:` ...) are refused.
    pub fn parse_spec(spec: &str, base_dir: Option<&Path>) -> Result<HostList, HostListError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(HostListError::EmptySpec);
        }
        let file = strip_prefix_ci(spec, "file:").or_else(|| strip_prefix_ci(spec, "refile:"));
        if let Some(path) = file {
            let path = path.trim();
            if path.is_empty() {
                return Err(HostListError::MissingPath {
                    spec: spec.to_string(),
                });
            }
            let path = Path::new(path);
            let full = match base_dir {
                Some(base) if path.is_relative() => base.join(path),
                _ => path.to_path_buf(),
            };
            return HostList::from_file(&full);
        }
        if spec.starts_with('/') {
            return HostList::from_file(Path::new(spec));
        }
        if let Some(list) = strip_prefix_ci(spec, "csl:") {
            return HostList::parse_entries(list.split(','));
        }
        if let Some((kind, _)) = spec.split_once(':') {
            let lower = kind.to_ascii_lowercase();
            // "db:8::1" is also an IPv6 address, so only call it a data set
            // if the first item is not a valid entry.
            let first = spec.split(',').next().unwrap_or(spec).trim();
            if UNSUPPORTED_KINDS.contains(&lower.as_str()) && parse_entry(first).is_err() {
                return Err(HostListError::UnsupportedDataSet {
                    kind: kind.to_string(),
                });
            }
        }
        HostList::parse_entries(spec.split(','))
    }

    /// Reads a list file; see [`HostList::parse_spec`].
    pub fn from_file(path: &Path) -> Result<HostList, HostListError> {
        let bytes = std::fs::read(path).map_err(|source| HostListError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // Invalid UTF-8 becomes U+FFFD, which then fails as a bad entry with
        // a line number instead of a bare "invalid data" for the whole file.
        let text = String::from_utf8_lossy(&bytes);
        let mut rules = Vec::new();
        for (idx, line) in text.lines().enumerate() {
            for word in strip_comment(line).split_whitespace() {
                let rule = parse_entry(word).map_err(|problem| HostListError::BadFileEntry {
                    path: path.to_path_buf(),
                    line: idx + 1,
                    entry: word.to_string(),
                    problem,
                })?;
                rules.push(rule);
            }
        }
        Ok(HostList { rules })
    }

    /// Whether an address is in the list; same as
    /// [`matches`](HostList::matches) with no host name.
    pub fn matches_ip(&self, ip: IpAddr) -> bool {
        self.matches(Some(ip), None)
    }

    /// Whether a client, known by address and/or host name, is in the list.
    ///
    /// The most specific matching entry decides:
    ///
    /// * among address entries, the longest prefix (a plain address is a
    ///   /32 or /128 and so beats any network containing it);
    /// * among name entries, an exact name beats any `.domain`, and a longer
    ///   `.domain` beats a shorter one;
    /// * between the best address entry and the best name entry, an exact
    ///   one (address or name) beats a network or `.domain`;
    /// * at equal rank a `!` entry wins: an exclusion is never cancelled by
    ///   an equally precise inclusion;
    /// * if nothing matches, the answer is no.
    ///
    /// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are matched as the
    /// IPv4 address. Host names compare case-insensitively and ignore one
    /// trailing dot; a name in brackets (`[192.0.2.1]`, how MTAs pass a
    /// client without reverse DNS) or an empty name counts as no name.
    pub fn matches(&self, ip: Option<IpAddr>, hostname: Option<&str>) -> bool {
        let by_ip = ip.and_then(|ip| self.best_ip(ip));
        let by_name = hostname
            .and_then(normalize_hostname)
            .and_then(|name| self.best_name(&name));
        match (by_ip, by_name) {
            (None, None) => false,
            (Some(b), None) | (None, Some(b)) => !b.negated,
            (Some(a), Some(b)) => {
                if a.exact != b.exact {
                    let winner = if a.exact { a } else { b };
                    !winner.negated
                } else {
                    !(a.negated || b.negated)
                }
            }
        }
    }

    fn best_ip(&self, ip: IpAddr) -> Option<Best> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let mut best = None;
        for rule in &self.rules {
            let hit = match (&rule.pattern, ip) {
                (Pattern::V4 { net, prefix }, IpAddr::V4(a)) => {
                    (u32::from(a) & mask32(*prefix) == *net).then_some((*prefix, 32))
                }
                (Pattern::V6 { net, prefix }, IpAddr::V6(a)) => {
                    (u128::from(a) & mask128(*prefix) == *net).then_some((*prefix, 128))
                }
                _ => None,
            };
            if let Some((prefix, width)) = hit {
                Best::offer(
                    &mut best,
                    Best {
                        exact: prefix == width,
                        specificity: usize::from(prefix),
                        negated: rule.negated,
                    },
                );
            }
        }
        best
    }

    fn best_name(&self, name: &str) -> Option<Best> {
        let mut best = None;
        for rule in &self.rules {
            let cand = match &rule.pattern {
                Pattern::Host(h) if h == name => Some(Best {
                    exact: true,
                    specificity: h.len(),
                    negated: rule.negated,
                }),
                Pattern::Suffix(s) if is_strictly_below(name, s) => Some(Best {
                    exact: false,
                    specificity: s.len(),
                    negated: rule.negated,
                }),
                _ => None,
            };
            if let Some(cand) = cand {
                Best::offer(&mut best, cand);
            }
        }
        best
    }
}

impl FromStr for HostList {
    type Err = HostListError;

    /// Same as [`HostList::parse_spec`] with no base directory.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostList::parse_spec(s, None)
    }
}

impl<'de> Deserialize<'de> for HostList {
    /// Accepts a data set string (`"file:/etc/opendkim/TrustedHosts"`,
    /// `"csl:127.0.0.1,::1"`, relative files resolved against the current
    /// directory) or an array of entries (`["127.0.0.1", "!192.0.2.66"]`).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = HostList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a host list: a data set string such as \"file:/etc/opendkim/TrustedHosts\" \
                     or \"csl:127.0.0.1,::1\", or an array of address, network and host name entries",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<HostList, E> {
                HostList::parse_spec(v, None).map_err(E::custom)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HostList, A::Error> {
                let mut items: Vec<String> = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                HostList::parse_entries(items.iter().map(String::as_str))
                    .map_err(<A::Error as de::Error>::custom)
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

fn strip_comment(s: &str) -> &str {
    s.split_once('#').map_or(s, |(before, _)| before)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn mask32(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

fn mask128(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p.min(128))),
    }
}

/// `name` ends with `.suffix` and has at least one more label.
fn is_strictly_below(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len() + 1
        && name.ends_with(suffix)
        && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
}

fn normalize_hostname(name: &str) -> Option<String> {
    let name = name.trim();
    if name.starts_with('[') {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// Parses one entry (already trimmed, comment removed, non-empty).
fn parse_entry(text: &str) -> Result<Rule, EntryProblem> {
    if text.chars().any(char::is_whitespace) {
        return Err(EntryProblem::Whitespace);
    }
    let (negated, body) = match text.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if body.is_empty() {
        return Err(EntryProblem::EmptyNegation);
    }
    if body.starts_with('!') {
        return Err(EntryProblem::DoubleNegation);
    }
    Ok(Rule {
        pattern: parse_pattern(body)?,
        negated,
    })
}

fn parse_pattern(body: &str) -> Result<Pattern, EntryProblem> {
    let (addr_text, prefix_text) = match body.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (body, None),
    };
    let (addr_text, bracketed) = match addr_text.strip_prefix('[') {
        Some(inner) => (inner.strip_suffix(']').ok_or(EntryProblem::Brackets)?, true),
        None if addr_text.contains(['[', ']']) => return Err(EntryProblem::Brackets),
        None => (addr_text, false),
    };
    if let Ok(ip) = addr_text.parse::<IpAddr>() {
        return network(ip, prefix_text, body);
    }
    if looks_like_ipv4(addr_text) {
        return Err(EntryProblem::BadIpv4);
    }
    if addr_text.contains(':') {
        return Err(EntryProblem::BadIpv6);
    }
    if bracketed || prefix_text.is_some() {
        return Err(EntryProblem::BadNetworkAddress);
    }
    parse_name(addr_text)
}

/// Digits and dots only: someone meant an IPv4 address.
fn looks_like_ipv4(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && s.bytes().any(|b| b.is_ascii_digit())
}

fn network(ip: IpAddr, prefix_text: Option<&str>, written: &str) -> Result<Pattern, EntryProblem> {
    let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix_text {
        None => max,
        Some(p) => {
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(EntryProblem::BadPrefix { max });
            }
            match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(EntryProblem::BadPrefix { max }),
            }
        }
    };
    let pattern = match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let net = bits & mask32(prefix);
            if net != bits {
                return Err(EntryProblem::HostBitsSet {
                    prefix,
                    suggestion: format!("{}/{prefix}", Ipv4Addr::from(net)),
                });
            }
            Pattern::V4 { net, prefix }
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let net = bits & mask128(prefix);
            if net != bits {
                let shown = Ipv6Addr::from(net);
                let suggestion = if written.starts_with('[') {
                    format!("[{shown}]/{prefix}")
                } else {
                    format!("{shown}/{prefix}")
                };
                return Err(EntryProblem::HostBitsSet { prefix, suggestion });
            }
            // An IPv4-mapped entry (::ffff:192.0.2.0/120) is the same thing
            // as the IPv4 network; store it that way so it matches clients
            // reported either way.
            match Ipv6Addr::from(net).to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => Pattern::V4 {
                    net: u32::from(v4),
                    prefix: prefix - 96,
                },
                _ => Pattern::V6 { net, prefix },
            }
        }
    };
    Ok(pattern)
}

fn parse_name(text: &str) -> Result<Pattern, EntryProblem> {
    let (suffix, rest) = match text.strip_prefix('.') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let name = rest.strip_suffix('.').unwrap_or(rest);
    if name.is_empty() {
        return Err(EntryProblem::BadHostname("empty name"));
    }
    if name.len() > 253 {
        return Err(EntryProblem::BadHostname("longer than 253 characters"));
    }
    if name.contains('*') {
        return Err(EntryProblem::BadHostname(
            "wildcards are not supported; write .example.com for every name below example.com",
        ));
    }
    if name.contains('@') {
        return Err(EntryProblem::BadHostname(
            "an address such as user@example.com is not a host",
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(EntryProblem::BadHostname("empty label (two dots in a row)"));
        }
        if label.len() > 63 {
            return Err(EntryProblem::BadHostname(
                "a label is longer than 63 characters",
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(EntryProblem::BadHostname(
                "only letters, digits, '-', '_' and '.' are allowed",
            ));
        }
    }
    let name = name.to_ascii_lowercase();
    Ok(if suffix {
        Pattern::Suffix(name)
    } else {
        Pattern::Host(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn list(entries: &[&str]) -> HostList {
        HostList::parse_entries(entries.iter().copied()).unwrap()
    }

    fn problem(entry: &str) -> EntryProblem {
        match HostList::parse_entries([entry]) {
            Err(HostListError::BadEntry { problem, .. }) => problem,
            other => panic!("{entry:?}: expected a bad entry, got {other:?}"),
        }
    }

    /// A unique file under the system temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &str) -> TempFile {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "authmilter-hostlist-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn exact_addresses() {
        let l = list(&["192.0.2.1", "2001:DB8:0::1"]);
        assert!(l.matches_ip(ip("192.0.2.1")));
        assert!(!l.matches_ip(ip("192.0.2.2")));
        assert!(l.matches_ip(ip("2001:db8::1")));
        assert!(l.matches_ip(ip("2001:0db8:0000:0000:0000:0000:0000:0001")));
        assert!(!l.matches_ip(ip("2001:db8::2")));
        assert!(l.matches_ip(ip("::ffff:192.0.2.1")));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn defaults() {
        let d = HostList::default_internal();
        assert!(d.matches_ip(ip("127.0.0.1")));
        assert!(d.matches_ip(ip("::1")));
        assert!(d.matches_ip(ip("::ffff:127.0.0.1")));
        assert!(!d.matches_ip(ip("127.0.0.2")));
        assert!(!d.matches_ip(ip("192.0.2.1")));
        assert_eq!(d.len(), 2);
        let e = HostList::empty();
        assert!(e.is_empty());
        assert!(!e.matches(Some(ip("127.0.0.1")), Some("localhost")));
        assert!(!d.matches(None, None));
    }

    #[test]
    fn cidr_and_negation_precedence() {
        let l = list(&["192.0.2.0/24", "!192.0.2.66"]);
        assert!(l.matches_ip(ip("192.0.2.1")));
        assert!(l.matches_ip(ip("192.0.2.255")));
        assert!(!l.matches_ip(ip("192.0.2.66")));
        assert!(!l.matches_ip(ip("192.0.3.1")));
        // Order of entries does not matter.
        let l = list(&["!192.0.2.66", "192.0.2.0/24"]);
        assert!(!l.matches_ip(ip("192.0.2.66")));
        assert!(l.matches_ip(ip("192.0.2.65")));
        // A narrower inclusion inside a wider exclusion.
        let l = list(&["!10.0.0.0/8", "10.1.0.0/16"]);
        assert!(l.matches_ip(ip("10.1.2.3")));
        assert!(!l.matches_ip(ip("10.2.0.1")));
        // Equal specificity: the negation wins.
        let l = list(&["192.0.2.0/24", "!192.0.2.0/24"]);
        assert!(!l.matches_ip(ip("192.0.2.7")));
        // /0 matches everything of that family only.
        let l = list(&["0.0.0.0/0"]);
        assert!(l.matches_ip(ip("203.0.113.9")));
        assert!(l.matches_ip(ip("::ffff:203.0.113.9")));
        assert!(!l.matches_ip(ip("2001:db8::1")));
    }

    #[test]
    fn ipv6_cidr() {
        for form in ["2001:db8::/32", "[2001:db8::]/32"] {
            let l = list(&[form, "![2001:db8:1::]/48"]);
            assert!(l.matches_ip(ip("2001:db8::1")), "{form}");
            assert!(l.matches_ip(ip("2001:db8:ffff::1")), "{form}");
            assert!(!l.matches_ip(ip("2001:db8:1::5")), "{form}");
            assert!(!l.matches_ip(ip("2001:db9::1")), "{form}");
            assert!(!l.matches_ip(ip("192.0.2.1")), "{form}");
        }
        let l = list(&["[::1]"]);
        assert!(l.matches_ip(ip("::1")));
        let l = list(&["[192.0.2.9]"]);
        assert!(l.matches_ip(ip("192.0.2.9")));
        // An IPv4-mapped network entry covers plain IPv4 clients.
        let l = list(&["::ffff:192.0.2.0/120"]);
        assert!(l.matches_ip(ip("192.0.2.200")));
        assert!(l.matches_ip(ip("::ffff:192.0.2.200")));
        assert!(!l.matches_ip(ip("192.0.3.1")));
        let l = list(&["::/0"]);
        assert!(l.matches_ip(ip("2001:db8::1")));
        assert!(!l.matches_ip(ip("192.0.2.1")));
    }

    #[test]
    fn host_names_and_suffixes() {
        let l = list(&[
            "mail.example.com",
            ".example.net",
            "!.bad.example.net",
            "example.org",
        ]);
        assert!(l.matches(None, Some("mail.example.com")));
        assert!(l.matches(None, Some("MAIL.Example.COM.")));
        assert!(!l.matches(None, Some("other.example.com")));
        assert!(!l.matches(None, Some("example.com")));
        assert!(l.matches(None, Some("a.example.net")));
        assert!(l.matches(None, Some("b.a.example.net")));
        assert!(!l.matches(None, Some("example.net")));
        assert!(!l.matches(None, Some("badexample.net")));
        assert!(!l.matches(None, Some("x.bad.example.net")));
        assert!(l.matches(None, Some("bad.example.net")));
        assert!(l.matches(None, Some("example.org")));
        assert!(!l.matches(None, Some("www.example.org")));
        // Unresolved clients come as "[address]": no name.
        let l = list(&[".example.com", "192.0.2.1"]);
        assert!(!l.matches(None, Some("[192.0.2.7]")));
        assert!(l.matches(Some(ip("192.0.2.1")), Some("[192.0.2.1]")));
        assert!(!l.matches(None, Some("")));
        assert!(!l.matches(None, Some(".")));
        // An exact name beats an inclusive .domain.
        let l = list(&[".example.com", "!mx.example.com"]);
        assert!(!l.matches(None, Some("mx.example.com")));
        assert!(l.matches(None, Some("mx2.example.com")));
        // Trailing dot in the entry is ignored too.
        let l = list(&["mx.example.com."]);
        assert!(l.matches(None, Some("mx.example.com")));
    }

    #[test]
    fn address_and_name_together() {
        // Exact address exclusion beats a .domain inclusion.
        let l = list(&[".example.com", "!192.0.2.66"]);
        assert!(!l.matches(Some(ip("192.0.2.66")), Some("mx.example.com")));
        assert!(l.matches(Some(ip("192.0.2.67")), Some("mx.example.com")));
        // Exact name inclusion beats a network exclusion.
        let l = list(&["mail.example.com", "!192.0.2.0/24"]);
        assert!(l.matches(Some(ip("192.0.2.3")), Some("mail.example.com")));
        assert!(!l.matches(Some(ip("192.0.2.3")), Some("other.example.com")));
        // Both partial and disagreeing: the exclusion wins.
        let l = list(&["192.0.2.0/24", "!.evil.example"]);
        assert!(!l.matches(Some(ip("192.0.2.5")), Some("host.evil.example")));
        assert!(l.matches(Some(ip("192.0.2.5")), Some("host.good.example")));
        // Only one side matching decides alone.
        let l = list(&["192.0.2.0/24"]);
        assert!(l.matches(Some(ip("192.0.2.5")), Some("anything.example")));
        assert!(!l.matches(Some(ip("198.51.100.1")), Some("anything.example")));
    }

    #[test]
    fn entry_errors() {
        assert_eq!(
            problem("10.0.0.1/8"),
            EntryProblem::HostBitsSet {
                prefix: 8,
                suggestion: "10.0.0.0/8".into()
            }
        );
        assert_eq!(
            problem("[2001:db8::1]/32"),
            EntryProblem::HostBitsSet {
                prefix: 32,
                suggestion: "[2001:db8::]/32".into()
            }
        );
        assert_eq!(problem("192.0.2/24"), EntryProblem::BadIpv4);
        assert_eq!(problem("127.1"), EntryProblem::BadIpv4);
        assert_eq!(problem("256.1.1.1"), EntryProblem::BadIpv4);
        assert_eq!(problem("010.0.0.1"), EntryProblem::BadIpv4);
        assert_eq!(problem("192.0.2.0/33"), EntryProblem::BadPrefix { max: 32 });
        assert_eq!(problem("192.0.2.0/"), EntryProblem::BadPrefix { max: 32 });
        assert_eq!(problem("192.0.2.0/x"), EntryProblem::BadPrefix { max: 32 });
        assert_eq!(
            problem("2001:db8::/129"),
            EntryProblem::BadPrefix { max: 128 }
        );
        assert_eq!(
            problem("192.0.2.0/24/1"),
            EntryProblem::BadPrefix { max: 32 }
        );
        assert_eq!(problem("2001:db8::g"), EntryProblem::BadIpv6);
        assert_eq!(problem("fe80::1%eth0"), EntryProblem::BadIpv6);
        assert_eq!(problem("[::1"), EntryProblem::Brackets);
        assert_eq!(problem("::1]"), EntryProblem::Brackets);
        assert_eq!(
            problem("[mail.example.com]"),
            EntryProblem::BadNetworkAddress
        );
        assert_eq!(problem("example.com/24"), EntryProblem::BadNetworkAddress);
        assert_eq!(problem("!"), EntryProblem::EmptyNegation);
        assert_eq!(problem("!!192.0.2.1"), EntryProblem::DoubleNegation);
        assert_eq!(problem("a b"), EntryProblem::Whitespace);
        assert!(matches!(
            problem("*.example.com"),
            EntryProblem::BadHostname(_)
        ));
        assert!(matches!(
            problem("a..example.com"),
            EntryProblem::BadHostname(_)
        ));
        assert!(matches!(problem("."), EntryProblem::BadHostname(_)));
        assert!(matches!(
            problem("user@example.com"),
            EntryProblem::BadHostname(_)
        ));
        assert!(matches!(problem("ex ample"), EntryProblem::Whitespace));
        assert!(matches!(
            problem("exa$mple.com"),
            EntryProblem::BadHostname(_)
        ));
        // The message names the entry and says what to write instead.
        let msg = HostList::parse_entries(["10.0.0.1/8"])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"10.0.0.1/8\""), "{msg}");
        assert!(msg.contains("10.0.0.0/8?"), "{msg}");
    }

    #[test]
    fn comments_and_blanks() {
        let l =
            HostList::parse_entries(["", "  ", "# just a comment", "192.0.2.1 # office", " ::1 "])
                .unwrap();
        assert_eq!(l.len(), 2);
        assert!(l.matches_ip(ip("192.0.2.1")));
        assert!(l.matches_ip(ip("::1")));
    }

    #[test]
    fn csl_and_plain_specs() {
        let l = HostList::parse_spec("csl:127.0.0.1,::1", None).unwrap();
        assert_eq!(l, HostList::default_internal());
        let l = HostList::parse_spec("::1", None).unwrap();
        assert!(l.matches_ip(ip("::1")));
        let l = HostList::parse_spec("127.0.0.1, ::1 ,192.0.2.0/24,!192.0.2.66", None).unwrap();
        assert_eq!(l.len(), 4);
        assert!(!l.matches_ip(ip("192.0.2.66")));
        let l = HostList::parse_spec("CSL:", None).unwrap();
        assert!(l.is_empty());
        let l = HostList::parse_spec("localhost", None).unwrap();
        assert!(l.matches(None, Some("LOCALHOST")));
        // "db" is also a valid IPv6 group.
        let l = HostList::parse_spec("db:8::1", None).unwrap();
        assert!(l.matches_ip(ip("db:8::1")));
        assert!(matches!(
            HostList::parse_spec("db:/etc/hosts.db", None),
            Err(HostListError::UnsupportedDataSet { .. })
        ));
        assert!(matches!(
            HostList::parse_spec("ldap://ldap.example.com/dc=example", None),
            Err(HostListError::UnsupportedDataSet { .. })
        ));
        assert!(matches!(
            HostList::parse_spec("  ", None),
            Err(HostListError::EmptySpec)
        ));
        assert!(matches!(
            HostList::parse_spec("file:", None),
            Err(HostListError::MissingPath { .. })
        ));
        let err = HostList::parse_spec("csl:127.0.0.1,10.0.0.1/8", None).unwrap_err();
        assert!(matches!(&err, HostListError::BadEntry { entry, .. } if entry == "10.0.0.1/8"));
        let l: HostList = "csl:127.0.0.1".parse().unwrap();
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn files() {
        let f = TempFile::new(
            "# trusted hosts\n127.0.0.1\n::1   # loopback v6\n\n192.0.2.0/24 !192.0.2.66\n.example.com\r\nmx.example.org\n",
        );
        for spec in [
            format!("file:{}", f.0.display()),
            format!("refile:{}", f.0.display()),
            f.0.display().to_string(),
        ] {
            let l = HostList::parse_spec(&spec, None).unwrap();
            assert_eq!(l.len(), 6, "{spec}");
            assert!(l.matches_ip(ip("::1")));
            assert!(!l.matches_ip(ip("192.0.2.66")));
            assert!(l.matches_ip(ip("192.0.2.65")));
            assert!(l.matches(None, Some("a.example.com")));
            assert!(l.matches(None, Some("mx.example.org")));
        }
        // Relative paths resolve against base_dir.
        let dir = f.0.parent().unwrap();
        let name = f.0.file_name().unwrap().to_str().unwrap();
        let l = HostList::parse_spec(&format!("file:{name}"), Some(dir)).unwrap();
        assert_eq!(l.len(), 6);
    }

    #[test]
    fn file_errors_name_file_and_line() {
        let f = TempFile::new("127.0.0.1\n# comment\n\n192.0.2.0/24 10.0.0.1/8\n");
        let err = HostList::parse_spec(&format!("file:{}", f.0.display()), None).unwrap_err();
        match &err {
            HostListError::BadFileEntry {
                path, line, entry, ..
            } => {
                assert_eq!(path, &f.0);
                assert_eq!(*line, 4);
                assert_eq!(entry, "10.0.0.1/8");
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&format!("{}:4:", f.0.display())), "{msg}");

        let bad = TempFile::new("127.0.0.1\n\u{fffd}bad\n");
        std::fs::write(&bad.0, b"127.0.0.1\n\xffbad\n").unwrap();
        let err = HostList::from_file(&bad.0).unwrap_err();
        assert!(
            matches!(err, HostListError::BadFileEntry { line: 2, .. }),
            "{err:?}"
        );

        let missing = std::env::temp_dir().join("authmilter-hostlist-test-does-not-exist");
        let err = HostList::parse_spec(&format!("file:{}", missing.display()), None).unwrap_err();
        assert!(matches!(err, HostListError::Io { .. }));
        assert!(err.to_string().contains("does-not-exist"));
    }

    #[derive(Debug, serde::Deserialize)]
    struct Cfg {
        internal_hosts: HostList,
    }

    #[test]
    fn serde_forms() {
        let cfg: Cfg = toml::from_str(
            r#"internal_hosts = ["127.0.0.1", "::1", "192.0.2.0/24", "!192.0.2.66"]"#,
        )
        .unwrap();
        assert_eq!(cfg.internal_hosts.len(), 4);
        assert!(!cfg.internal_hosts.matches_ip(ip("192.0.2.66")));
        assert!(cfg.internal_hosts.matches_ip(ip("::1")));

        let cfg: Cfg = toml::from_str(r#"internal_hosts = "csl:127.0.0.1,::1""#).unwrap();
        assert_eq!(cfg.internal_hosts, HostList::default_internal());

        let f = TempFile::new("192.0.2.1\n");
        let text = format!("internal_hosts = \"file:{}\"", f.0.display());
        let cfg: Cfg = toml::from_str(&text).unwrap();
        assert!(cfg.internal_hosts.matches_ip(ip("192.0.2.1")));

        let cfg: Cfg = toml::from_str("internal_hosts = []").unwrap();
        assert!(cfg.internal_hosts.is_empty());

        let err = toml::from_str::<Cfg>(r#"internal_hosts = ["127.0.0.1", "10.0.0.1/8"]"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("10.0.0.1/8"), "{err}");
        let err = toml::from_str::<Cfg>(r#"internal_hosts = "192.0.2/24""#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("192.0.2/24"), "{err}");
        assert!(toml::from_str::<Cfg>("internal_hosts = 5").is_err());
        assert!(toml::from_str::<Cfg>("internal_hosts = [5]").is_err());
    }
}
