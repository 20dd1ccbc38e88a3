//! SPF (RFC 7208) for DMARC: the MAIL FROM identity, or the HELO identity when MAIL FROM is the
//! null sender, never mixed up (CVE-2019-20790: a HELO result must not count for MAIL FROM).
//!
//! `check_host()` is viaspf's (written against the openspf RFC 7208 suite; mail-auth's SPF
//! disagreed with a quarter of it, see docs/dmarc-milter.md "SPF conformance"). Its DNS goes
//! through [`Dns`] below, over the daemon's one resolver (the one mail-auth's DKIM and DMARC
//! use too), so SPF gets the same name servers, timeouts and cache as everything else. This
//! module is the only place that knows viaspf; the result is mapped to mail-auth's
//! [`SpfResult`], which the DMARC evaluation and our A-R and log words are written in.

use async_trait::async_trait;
use chassis::mailauth::hickory_resolver::net::NetError;
use chassis::mailauth::hickory_resolver::proto::rr::{Name as DnsName, RData, RecordType};
use chassis::mailauth::hickory_resolver::TokioResolver;
use chassis::mailauth::{MessageAuthenticator, SpfResult};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use viaspf::lookup::{Lookup, LookupError, LookupResult, Name};

/// RFC 7208 §4.6.3: at most ten terms that cause DNS lookups.
pub const LOOKUP_LIMIT: usize = 10;

/// RFC 7208 §4.6.4: at most two void lookups.
pub const VOID_LOOKUP_LIMIT: u32 = 2;

/// Which identity was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    MailFrom,
    Helo,
}

impl Scope {
    /// OpenDMARC's log word: `SPF(mailfrom)` / `SPF(helo)`.
    pub fn log_word(self) -> &'static str {
        match self {
            Scope::MailFrom => "mailfrom",
            Scope::Helo => "helo",
        }
    }

    /// The A-R property: `smtp.mailfrom` / `smtp.helo`.
    pub fn property(self) -> &'static str {
        match self {
            Scope::MailFrom => "smtp.mailfrom",
            Scope::Helo => "smtp.helo",
        }
    }

    /// RFC 9990 `spf/scope`.
    pub fn report_word(self) -> &'static str {
        match self {
            Scope::MailFrom => "mfrom",
            Scope::Helo => "helo",
        }
    }
}

/// The outcome of one SPF check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfCheck {
    pub scope: Scope,
    /// The domain checked: MAIL FROM's domain, or the HELO name.
    pub domain: String,
    pub result: SpfResult,
    /// Lookups that returned no records (void, or failed).
    pub unanswered: u32,
}

/// RFC 8601 result words.
pub fn result_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// viaspf's view of our resolver. Every name is queried as absolute (a resolv.conf search list
/// must never turn `example.com` into `example.com.corp.example`), and lookups that return no
/// records are counted for [`SpfCheck::unanswered`].
struct Dns<'a> {
    resolver: &'a TokioResolver,
    unanswered: AtomicU32,
}

impl Dns<'_> {
    /// A viaspf name as a DNS name. viaspf only checks lengths, so an SPF record can ask for a
    /// name the hostname syntax rejects (`foo:bar/baz.example`); DNS carries any octets in a
    /// label, so such a name is sent as raw labels rather than failed.
    fn name(&self, name: &Name) -> LookupResult<DnsName> {
        let s = name.as_str();
        DnsName::from_ascii(s)
            .or_else(|_| {
                let mut n =
                    DnsName::from_labels(s.trim_end_matches('.').split('.').map(str::as_bytes))?;
                n.set_fqdn(true);
                Ok::<_, chassis::mailauth::hickory_resolver::proto::ProtoError>(n)
            })
            .map_err(|_| self.none())
    }

    /// Our reading of a failed lookup: no records (NXDOMAIN or an empty answer) is what
    /// RFC 7208 §4.6.4 calls a void lookup; a timeout and anything else end in temperror.
    fn error(&self, e: NetError) -> LookupError {
        if e.is_no_records_found() {
            self.none()
        } else if matches!(e, NetError::Timeout) {
            self.unanswered.fetch_add(1, Ordering::Relaxed);
            LookupError::Timeout
        } else {
            self.unanswered.fetch_add(1, Ordering::Relaxed);
            LookupError::Dns(Some(Box::new(e)))
        }
    }

    fn none(&self) -> LookupError {
        self.unanswered.fetch_add(1, Ordering::Relaxed);
        LookupError::NoRecords
    }

    /// One query: the records `pick` takes from the answer (CNAMEs the resolver followed are
    /// left out), or viaspf's reading of the failure.
    async fn records<T>(
        &self,
        name: DnsName,
        kind: RecordType,
        pick: impl Fn(&RData) -> Option<T>,
    ) -> LookupResult<Vec<T>> {
        let answer = self.resolver.lookup(name, kind).await;
        let answer = answer.map_err(|e| self.error(e))?;
        self.found(
            answer
                .answers()
                .iter()
                .filter_map(|r| pick(&r.data))
                .collect(),
        )
    }

    /// Records found, or [`LookupError::NoRecords`] for an answer with none of the type asked
    /// (CNAMEs alone, say).
    fn found<T>(&self, v: Vec<T>) -> LookupResult<Vec<T>> {
        if v.is_empty() {
            Err(self.none())
        } else {
            Ok(v)
        }
    }
}

/// A DNS name as viaspf wants it: the labels as they are (hickory's display form escapes
/// octets such as `:` or `/`, which an MX or PTR target may hold and SPF must look up as is).
fn spf_name(n: &DnsName) -> Option<Name> {
    let labels: Vec<String> = n
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    Name::new(&labels.join(".")).ok()
}

/// viaspf 0.6 computes a CIDR mask as `MAX << (32 - len)`, which for `/0` overflows: the
/// shift wraps and `ip4:0.0.0.0/0` matches only 0.0.0.0 instead of every address (RFC 7208
/// §5.6). An `ip4:`/`ip6:` term with `/0` costs no lookup, so it is rewritten into the two
/// halves of the address space, `/1` each, with the same qualifier: the same match, the same
/// processing limits. Only terms with a valid address are rewritten, so a bad one is still a
/// permerror. (`a`/`mx` with `/0` cannot be rewritten this way; see docs/dmarc-milter.md.)
fn widen_zero_cidrs(record: &str) -> String {
    let is_spf = record.len() >= 7 && record[..7].eq_ignore_ascii_case("v=spf1 ");
    if !is_spf || !record.contains("/0") {
        return record.to_string();
    }
    let terms: Vec<String> = record
        .split(' ')
        .map(|term| {
            let (q, rest) = match term.as_bytes().first() {
                Some(b'+' | b'-' | b'~' | b'?') => term.split_at(1),
                _ => ("", term),
            };
            let Some(addr) = rest.strip_suffix("/0") else {
                return term.to_string();
            };
            let (kind, addr) = addr.split_at(addr.len().min(4));
            match kind.to_ascii_lowercase().as_str() {
                "ip4:" if addr.parse::<Ipv4Addr>().is_ok() => {
                    format!("{q}ip4:0.0.0.0/1 {q}ip4:128.0.0.0/1")
                }
                "ip6:" if addr.parse::<Ipv6Addr>().is_ok() => {
                    format!("{q}ip6:::/1 {q}ip6:8000::/1")
                }
                _ => term.to_string(),
            }
        })
        .collect();
    terms.join(" ")
}

#[async_trait]
impl Lookup for Dns<'_> {
    async fn lookup_a<'l, 'a>(&'l self, name: &'a Name) -> LookupResult<Vec<Ipv4Addr>> {
        let name = self.name(name)?;
        self.records(name, RecordType::A, |r| match r {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .await
    }

    async fn lookup_aaaa<'l, 'a>(&'l self, name: &'a Name) -> LookupResult<Vec<Ipv6Addr>> {
        let name = self.name(name)?;
        self.records(name, RecordType::AAAA, |r| match r {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .await
    }

    async fn lookup_mx<'l, 'a>(&'l self, name: &'a Name) -> LookupResult<Vec<Name>> {
        let name = self.name(name)?;
        let mut mx = self
            .records(name, RecordType::MX, |r| match r {
                RData::MX(mx) => Some((mx.preference, mx.exchange.clone())),
                _ => None,
            })
            .await?;
        mx.sort_by_key(|(pref, _)| *pref);
        self.found(mx.iter().filter_map(|(_, n)| spf_name(n)).collect())
    }

    async fn lookup_txt<'l, 'a>(&'l self, name: &'a Name) -> LookupResult<Vec<String>> {
        let name = self.name(name)?;
        // RFC 7208 §3.3: the strings of one record are joined without a separator. Bytes that
        // are not UTF-8 become U+FFFD, which no SPF record may contain (§3.1: permerror).
        self.records(name, RecordType::TXT, |r| match r {
            RData::TXT(t) => Some(widen_zero_cidrs(&String::from_utf8_lossy(
                &t.txt_data.concat(),
            ))),
            _ => None,
        })
        .await
    }

    async fn lookup_ptr<'l>(&'l self, ip: IpAddr) -> LookupResult<Vec<Name>> {
        self.records(DnsName::from(ip), RecordType::PTR, |r| match r {
            RData::PTR(p) => spf_name(&p.0),
            _ => None,
        })
        .await
    }
}

/// The identity to check: MAIL FROM's domain, or HELO for the null sender (or a MAIL FROM
/// without a domain).
pub fn identity<'a>(mail_from: &'a str, helo: &'a str) -> (Scope, &'a str) {
    // Whitespace is no part of a domain; an MTA may pass `marc@ example.com` through.
    match mail_from.rsplit_once('@').map(|(_, d)| d.trim()) {
        Some(d) if !d.is_empty() => (Scope::MailFrom, d),
        _ => (Scope::Helo, helo.trim()),
    }
}

/// Runs SPF for the client at `ip`. `host_domain` is our own name (the `%{r}` macro).
pub async fn check(
    auth: &MessageAuthenticator,
    ip: IpAddr,
    helo: &str,
    mail_from: &str,
    host_domain: &str,
) -> SpfCheck {
    let (scope, domain) = identity(mail_from, helo);
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    // The sender as checked (and as %{s} expands): whitespace around the parts removed. A
    // local-part viaspf cannot take still leaves the domain to check, as postmaster@domain.
    let sender = match (scope, mail_from.rsplit_once('@')) {
        (Scope::MailFrom, Some((local, d))) => {
            viaspf::Sender::new(&format!("{}@{}", local.trim(), d.trim()))
                .or_else(|_| viaspf::Sender::from_domain(d.trim()))
        }
        _ => viaspf::Sender::from_domain(&domain),
    };
    let dns = Dns {
        resolver: auth.resolver(),
        unanswered: AtomicU32::new(0),
    };
    let result = match sender {
        // RFC 7208 §4.3: a domain that is not a valid FQDN (a domain literal, an empty or
        // over-long label) gives none before any lookup; nothing invalid is sent to DNS.
        Err(_) => SpfResult::None,
        Ok(sender) => {
            let config = viaspf::Config::builder()
                .max_lookups(LOOKUP_LIMIT)
                .max_void_lookups(VOID_LOOKUP_LIMIT as usize)
                .hostname(host_domain)
                .build();
            // A HELO that is no domain (an address literal) expands %{h} as viaspf's
            // "unknown" (RFC 7208 §7.3 leaves it to the checker).
            let helo_domain = helo.trim().parse::<viaspf::DomainName>().ok();
            let out =
                viaspf::evaluate_sender(&dns, &config, ip, &sender, helo_domain.as_ref()).await;
            match out.spf_result {
                viaspf::SpfResult::Pass => SpfResult::Pass,
                viaspf::SpfResult::Fail(_) => SpfResult::Fail,
                viaspf::SpfResult::Softfail => SpfResult::SoftFail,
                viaspf::SpfResult::Neutral => SpfResult::Neutral,
                viaspf::SpfResult::None => SpfResult::None,
                viaspf::SpfResult::Temperror => SpfResult::TempError,
                viaspf::SpfResult::Permerror => SpfResult::PermError,
            }
        }
    };
    SpfCheck {
        scope,
        domain,
        result,
        unanswered: dns.unanswered.load(Ordering::Relaxed),
    }
}

/// A `Received-SPF` value in RFC 7208 §9.1 form: the result, a comment in the wording of the
/// RFC's examples, then `client-ip`, `envelope-from`, `helo`, `receiver` and `identity`.
pub fn received_spf(
    check: &SpfCheck,
    receiver: &str,
    ip: IpAddr,
    mail_from: &str,
    helo: &str,
) -> String {
    let who = match check.scope {
        Scope::MailFrom => mail_from.trim(),
        Scope::Helo => check.domain.as_str(),
    };
    let comment = match check.result {
        SpfResult::Pass => format!("domain of {who} designates {ip} as permitted sender"),
        SpfResult::Fail => format!("domain of {who} does not designate {ip} as permitted sender"),
        SpfResult::SoftFail => {
            format!("transitioning domain of {who} does not designate {ip} as permitted sender")
        }
        SpfResult::Neutral => format!("{ip} is neither permitted nor denied by domain of {who}"),
        SpfResult::None => format!("domain of {who} does not designate permitted sender hosts"),
        SpfResult::TempError => format!("error in processing during lookup of {who}"),
        SpfResult::PermError => format!("permanent error in processing domain of {who}"),
    };
    let identity = match check.scope {
        Scope::MailFrom => "mailfrom",
        Scope::Helo => "helo",
    };
    format!(
        "{} ({receiver}: {}) client-ip={ip}; envelope-from={}; helo={}; receiver={}; identity={identity}",
        result_word(check.result),
        comment_safe(&comment),
        quoted(mail_from.trim()),
        token(helo.trim()),
        token(receiver),
    )
}

/// Text that cannot end or nest the comment it is put in.
fn comment_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '(' | ')' | '\\' => '_',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

/// An RFC 5322 quoted-string.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A dot-atom as is, anything else as a quoted-string.
fn token(s: &str) -> String {
    let atom = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
    if !s.is_empty() && s.chars().all(atom) && !s.starts_with('.') && !s.ends_with('.') {
        s.to_string()
    } else {
        quoted(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_spf_header() {
        let check = SpfCheck {
            scope: Scope::MailFrom,
            domain: "example.com".into(),
            result: SpfResult::Pass,
            unanswered: 0,
        };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            received_spf(&check, "mx.example.org", ip, "a@example.com", "foo.example.com"),
            "pass (mx.example.org: domain of a@example.com designates 192.0.2.1 as permitted sender) \
             client-ip=192.0.2.1; envelope-from=\"a@example.com\"; helo=foo.example.com; \
             receiver=mx.example.org; identity=mailfrom"
        );
        let helo = SpfCheck {
            scope: Scope::Helo,
            domain: "foo.example.com".into(),
            result: SpfResult::SoftFail,
            unanswered: 0,
        };
        assert_eq!(
            received_spf(&helo, "mx", ip, "", "[a\"b]"),
            "softfail (mx: transitioning domain of foo.example.com does not designate 192.0.2.1 as \
             permitted sender) client-ip=192.0.2.1; envelope-from=\"\"; helo=\"[a\\\"b]\"; \
             receiver=mx; identity=helo"
        );
    }

    #[test]
    fn zero_cidrs_become_two_halves() {
        assert_eq!(
            widen_zero_cidrs("v=spf1 -ip4:192.0.2.1/0 ip6:2001:db8::/0 -all"),
            "v=spf1 -ip4:0.0.0.0/1 -ip4:128.0.0.0/1 ip6:::/1 ip6:8000::/1 -all"
        );
        // Untouched: other lengths, bad addresses, a/mx, and text that is no SPF record.
        for r in [
            "v=spf1 ip4:192.0.2.1/00 -all",
            "v=spf1 ip4:192.0.2/0 -all",
            "v=spf1 a/0 mx:example.com/0 -all",
            "spf2.0/pra ip4:192.0.2.1/0",
        ] {
            assert_eq!(widen_zero_cidrs(r), r);
        }
    }

    #[test]
    fn null_sender_uses_helo() {
        assert_eq!(identity("", "mail.example"), (Scope::Helo, "mail.example"));
        assert_eq!(
            identity("a@b.example", "mail.example"),
            (Scope::MailFrom, "b.example")
        );
        assert_eq!(
            identity("a@ b.example ", "mail.example"),
            (Scope::MailFrom, "b.example")
        );
        assert_eq!(
            identity("postmaster", "mail.example"),
            (Scope::Helo, "mail.example")
        );
    }
}
