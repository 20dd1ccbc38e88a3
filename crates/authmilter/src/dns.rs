//! The lookups the tools make, on top of the daemons' resolver, with "no such record" told apart
//! from "the lookup failed" (a check must not report a missing record when DNS was down).

use chassis::dns::ResolverSettings;
use chassis::mailauth::hickory_resolver::proto::rr::{Name, RData, RecordType};
use chassis::mailauth::MessageAuthenticator;
use std::net::IpAddr;
use std::str::FromStr;

/// The outcome of one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    /// Records of the asked type.
    Found(T),
    /// NXDOMAIN or no records of that type (NODATA).
    Empty,
    /// Anything else (timeout, SERVFAIL, bad name): the answer is unknown.
    Error(String),
}

impl<T> Answer<T> {
    pub fn found(self) -> Option<T> {
        match self {
            Answer::Found(t) => Some(t),
            _ => None,
        }
    }
}

/// DNSSEC status of an answer, as far as we can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dnssec {
    /// The resolver set the AD (authentic data) bit.
    Secure,
    /// No AD bit: either unsigned, or the resolver does not validate; we cannot tell which.
    Unknown,
}

impl Dnssec {
    pub fn as_str(self) -> &'static str {
        match self {
            Dnssec::Secure => "secure (AD bit set by the resolver)",
            Dnssec::Unknown => "unknown (resolver did not set the AD bit)",
        }
    }
}

/// The resolver the tools use.
pub struct Dns {
    auth: MessageAuthenticator,
    /// Where queries go, for reports.
    pub description: String,
}

/// Absolute form of a name: `example.com` -> `example.com.`.
pub fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// A name without its trailing dot, lower-cased.
pub fn bare(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn classify(e: &chassis::mailauth::hickory_resolver::net::NetError) -> Option<String> {
    if e.is_no_records_found() {
        None
    } else {
        Some(e.to_string())
    }
}

impl Dns {
    /// A resolver from the daemons' `[resolver]` settings.
    pub fn from_settings(settings: &ResolverSettings) -> Result<Dns, String> {
        let auth = settings.build()?;
        let description = if settings.nameservers.is_empty() {
            "system resolver (/etc/resolv.conf)".to_string()
        } else {
            settings.nameservers.join(", ")
        };
        Ok(Dns { auth, description })
    }

    /// The underlying mail-auth authenticator (for SPF evaluation and DKIM verification).
    pub fn authenticator(&self) -> &MessageAuthenticator {
        &self.auth
    }

    fn name(name: &str) -> Result<Name, String> {
        Name::from_str(&fqdn(name)).map_err(|e| format!("bad DNS name '{name}': {e}"))
    }

    /// TXT records at `name`, each record's strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2),
    /// plus the DNSSEC status of the answer.
    pub async fn txt(&self, name: &str) -> (Answer<Vec<String>>, Dnssec) {
        let n = match Self::name(name) {
            Ok(n) => n,
            Err(e) => return (Answer::Error(e), Dnssec::Unknown),
        };
        match self.auth.resolver().txt_lookup(n).await {
            Ok(lookup) => {
                let dnssec = if lookup.message().metadata.authentic_data {
                    Dnssec::Secure
                } else {
                    Dnssec::Unknown
                };
                let records: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => {
                            let mut v = Vec::new();
                            for s in txt.txt_data.iter() {
                                v.extend_from_slice(s);
                            }
                            Some(String::from_utf8_lossy(&v).into_owned())
                        }
                        _ => None,
                    })
                    .collect();
                if records.is_empty() {
                    (Answer::Empty, dnssec)
                } else {
                    (Answer::Found(records), dnssec)
                }
            }
            Err(e) => match classify(&e) {
                None => (Answer::Empty, Dnssec::Unknown),
                Some(msg) => (Answer::Error(msg), Dnssec::Unknown),
            },
        }
    }

    /// TXT records at `name` that start with `prefix` (case-insensitive), e.g. `v=spf1`.
    pub async fn txt_with_prefix(&self, name: &str, prefix: &str) -> Answer<Vec<String>> {
        match self.txt(name).await.0 {
            Answer::Found(all) => {
                let p = prefix.to_ascii_lowercase();
                let matching: Vec<String> = all
                    .into_iter()
                    .filter(|r| {
                        let l = r.trim_start().to_ascii_lowercase();
                        l == p
                            || l.strip_prefix(&p)
                                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with(';'))
                    })
                    .collect();
                if matching.is_empty() {
                    Answer::Empty
                } else {
                    Answer::Found(matching)
                }
            }
            Answer::Empty => Answer::Empty,
            Answer::Error(e) => Answer::Error(e),
        }
    }

    /// MX records: (preference, exchange without trailing dot), sorted by preference.
    pub async fn mx(&self, name: &str) -> Answer<Vec<(u16, String)>> {
        let n = match Self::name(name) {
            Ok(n) => n,
            Err(e) => return Answer::Error(e),
        };
        match self.auth.resolver().mx_lookup(n).await {
            Ok(lookup) => {
                let mut v: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, bare(&mx.exchange.to_ascii()))),
                        _ => None,
                    })
                    .collect();
                v.sort();
                if v.is_empty() {
                    Answer::Empty
                } else {
                    Answer::Found(v)
                }
            }
            Err(e) => match classify(&e) {
                None => Answer::Empty,
                Some(msg) => Answer::Error(msg),
            },
        }
    }

    /// A and AAAA addresses of `name` (following CNAMEs, as an MTA would).
    pub async fn addresses(&self, name: &str) -> Answer<Vec<IpAddr>> {
        let n = match Self::name(name) {
            Ok(n) => n,
            Err(e) => return Answer::Error(e),
        };
        let mut out = Vec::new();
        let mut errors = Vec::new();
        match self.auth.resolver().ipv4_lookup(n.clone()).await {
            Ok(l) => out.extend(l.answers().iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })),
            Err(e) => errors.extend(classify(&e)),
        }
        match self.auth.resolver().ipv6_lookup(n).await {
            Ok(l) => out.extend(l.answers().iter().filter_map(|r| match &r.data {
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })),
            Err(e) => errors.extend(classify(&e)),
        }
        if !out.is_empty() {
            Answer::Found(out)
        } else if let Some(e) = errors.into_iter().next() {
            Answer::Error(e)
        } else {
            Answer::Empty
        }
    }

    /// PTR names of `ip`, without trailing dots.
    pub async fn ptr(&self, ip: IpAddr) -> Answer<Vec<String>> {
        match self.auth.resolver().reverse_lookup(ip).await {
            Ok(l) => {
                let v: Vec<String> = l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::PTR(p) => Some(bare(&p.0.to_ascii())),
                        _ => None,
                    })
                    .collect();
                if v.is_empty() {
                    Answer::Empty
                } else {
                    Answer::Found(v)
                }
            }
            Err(e) => match classify(&e) {
                None => Answer::Empty,
                Some(msg) => Answer::Error(msg),
            },
        }
    }

    /// The CNAME target of `name`, when `name` is an alias.
    pub async fn cname(&self, name: &str) -> Answer<String> {
        let n = match Self::name(name) {
            Ok(n) => n,
            Err(e) => return Answer::Error(e),
        };
        match self.auth.resolver().lookup(n, RecordType::CNAME).await {
            Ok(l) => match l.answers().iter().find_map(|r| match &r.data {
                RData::CNAME(c) => Some(bare(&c.0.to_ascii())),
                _ => None,
            }) {
                Some(t) => Answer::Found(t),
                None => Answer::Empty,
            },
            Err(e) => match classify(&e) {
                None => Answer::Empty,
                Some(msg) => Answer::Error(msg),
            },
        }
    }
}
