//! rua destinations: `mailto:` URIs with an optional `!SIZE` limit (RFC 7489 §6.2: `k`, `m`,
//! `g`, `t` units, bytes when none), and which of them may be sent to.

/// One parsed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The address, as published.
    pub address: String,
    /// The largest report the destination takes, in bytes.
    pub limit: Option<u64>,
}

impl Destination {
    pub fn domain(&self) -> &str {
        self.address.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

/// Parses one URI; `Err` says why it cannot be used (unsupported scheme, bad address, bad size).
pub fn parse(uri: &str) -> Result<Destination, String> {
    let uri = uri.trim();
    let Some(rest) = uri
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("mailto:"))
        .map(|_| &uri[7..])
    else {
        return Err(format!("'{uri}': only mailto: destinations are supported"));
    };
    let (addr, size) = match rest.rsplit_once('!') {
        Some((a, s)) => (a, Some(s)),
        None => (rest, None),
    };
    // A query (`?subject=`) is not for us; percent-escapes in the address are decoded.
    let addr = addr.split('?').next().unwrap_or_default();
    let addr = percent_decode(addr).ok_or_else(|| format!("'{uri}': bad %-escape"))?;
    let valid = match addr.rsplit_once('@') {
        Some((l, d)) => {
            !l.is_empty()
                && !d.is_empty()
                && d.contains('.')
                && !addr
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
        }
        None => false,
    };
    if !valid {
        return Err(format!("'{uri}': not a mail address"));
    }
    let limit = match size {
        None => None,
        Some(s) => Some(parse_size(s).ok_or_else(|| format!("'{uri}': bad size limit '{s}'"))?),
    };
    Ok(Destination {
        address: addr,
        limit,
    })
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `address` is on the ignore list (`user@domain`, or `@domain` for a whole domain).
pub fn ignored(address: &str, ignore: &[String]) -> bool {
    let a = address.to_ascii_lowercase();
    let domain = a.rsplit_once('@').map_or("", |(_, d)| d);
    ignore.iter().any(|i| {
        if let Some(d) = i.strip_prefix('@') {
            d == domain
        } else {
            *i == a
        }
    })
}

/// Whether a report for `policy_domain` may go to `dest_domain` without asking the destination
/// (RFC 7489 §7.1): the same domain, or one is a parent of the other (then they share an
/// organizational domain). Anything else is verified with a `_report._dmarc` record; erring
/// towards asking costs one DNS query.
pub fn same_organization(policy_domain: &str, dest_domain: &str) -> bool {
    let p = policy_domain.trim_end_matches('.').to_ascii_lowercase();
    let d = dest_domain.trim_end_matches('.').to_ascii_lowercase();
    p == d || p.ends_with(&format!(".{d}")) || d.ends_with(&format!(".{p}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let d = parse("mailto:dmarc@example.com!10m").unwrap();
        assert_eq!(d.address, "dmarc@example.com");
        assert_eq!(d.limit, Some(10 * 1024 * 1024));
        assert_eq!(
            parse("MAILTO:a%2Bb@x.example").unwrap().address,
            "a+b@x.example"
        );
        assert_eq!(parse("mailto:a@x.example!500").unwrap().limit, Some(500));
        assert!(parse("https://x.example/r").is_err());
        assert!(parse("mailto:nobody").is_err());
        assert!(parse("mailto:a@x.example!10q").is_err());
        assert!(parse("mailto:a@x.example!99999999999999999999t").is_err());
    }

    #[test]
    fn ignore_and_org() {
        let ig = vec!["abuse@x.example".to_string(), "@loop.example".to_string()];
        assert!(ignored("Abuse@X.example", &ig));
        assert!(ignored("any@loop.example", &ig));
        assert!(!ignored("any@x.example", &ig));
        assert!(same_organization("mail.example.com", "example.com"));
        assert!(same_organization("example.com", "reports.example.com"));
        assert!(!same_organization("example.com", "example.net"));
        assert!(!same_organization("badexample.com", "example.com"));
    }
}
