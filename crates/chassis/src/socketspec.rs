//! Milter socket specifications in the form OpenDKIM and OpenDMARC accept.
//!
//! Existing installations carry lines such as `Socket inet:8891@localhost`
//! or `Socket local:/run/opendkim/opendkim.sock` in their configuration,
//! and packaging scripts pass the same strings with `-p`. Accepting exactly
//! those spellings lets a replacement drop into an existing setup without
//! anyone rewriting socket paths or Postfix settings.
//!
//! The grammar (libmilter's, slightly widened where that is harmless):
//!
//! | Written                       | Meaning                                   |
//! |-------------------------------|-------------------------------------------|
//! | `inet:PORT`                   | TCP on every IPv4 address (`0.0.0.0`)     |
//! | `inet:PORT@192.0.2.1`         | TCP on one IPv4 address                   |
//! | `inet:PORT@localhost`         | TCP on a host name, resolved when binding |
//! | `inet:PORT@[::1]`, `inet:PORT@::1` | TCP on an IPv6 address               |
//! | `inet6:PORT`                  | TCP on every IPv6 address (`::`)          |
//! | `inet6:PORT@::1`, `inet6:PORT@[::1]` | TCP on one IPv6 address            |
//! | `unix:/path`, `local:/path`, `/path` | a Unix-domain socket               |
//!
//! Port 0 is accepted on purpose: it asks the kernel for any free port,
//! which is what tests want.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::{Serialize, Serializer};

/// Where a milter listens (or where a client connects).
///
/// Host names are kept unresolved ([`SocketSpec::InetHost`]) so that
/// parsing a configuration never touches DNS: a config check must not hang
/// on a resolver, and the address should be looked up when the socket is
/// actually bound (see [`SocketSpec::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SocketSpec {
    /// A TCP socket on a literal address.
    Inet(SocketAddr),
    /// A TCP socket on a host name, written `inet:PORT@HOST`.
    ///
    /// Only the `inet:` scheme produces this; `inet6:` requires a literal
    /// address because the variant has no room to remember the family.
    InetHost {
        /// The host name as written (validated, not resolved).
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// A Unix-domain socket at an absolute path.
    Unix(PathBuf),
}

/// Why a socket specification was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocketSpecError {
    /// Nothing was given.
    #[error("empty socket specification")]
    Empty,
    /// The part before the first `:` is not a known socket type.
    #[error(
        "unknown socket type {scheme:?} in {spec:?}; expected inet:, inet6:, unix:, local: or an absolute path"
    )]
    UnknownScheme {
        /// The whole specification.
        spec: String,
        /// The unrecognised prefix.
        scheme: String,
    },
    /// The port is missing, not a decimal number, or above 65535.
    #[error(
        "bad port {port:?} in socket specification {spec:?}; expected a decimal number 0-65535"
    )]
    BadPort {
        /// The whole specification.
        spec: String,
        /// The text that should have been a port.
        port: String,
    },
    /// The specification looks like Postfix's `inet:HOST:PORT` form.
    #[error(
        "socket specification {spec:?} is written the Postfix way; milter sockets are written inet:PORT@HOST (for example inet:8891@127.0.0.1)"
    )]
    PostfixForm {
        /// The whole specification.
        spec: String,
    },
    /// The address after `@` is neither an IP address nor a valid host name.
    #[error("bad address {addr:?} in socket specification {spec:?}: {reason}")]
    BadAddress {
        /// The whole specification.
        spec: String,
        /// The text that should have been an address.
        addr: String,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// A Unix-domain socket path that is empty, relative or contains NUL.
    #[error("bad unix socket path in {spec:?}: {reason}")]
    BadPath {
        /// The whole specification.
        spec: String,
        /// What was wrong with it.
        reason: &'static str,
    },
}

impl SocketSpec {
    /// The string to put in Postfix's `smtpd_milters` / `non_smtpd_milters`
    /// for a milter listening here.
    ///
    /// Postfix writes `inet:HOST:PORT` (IPv6 in brackets) and `unix:PATH`.
    /// A wildcard listener (`0.0.0.0` or `::`) cannot be connected to as
    /// such, so it is given as the loopback address of the same family,
    /// which is what a local MTA would use. A Unix path is given as is: if
    /// Postfix's smtpd runs chrooted the path must be made relative to the
    /// chroot by hand.
    pub fn postfix_form(&self) -> String {
        match self {
            SocketSpec::Inet(sa) => match sa.ip() {
                IpAddr::V4(v4) => {
                    let ip = if v4.is_unspecified() {
                        Ipv4Addr::LOCALHOST
                    } else {
                        v4
                    };
                    format!("inet:{ip}:{}", sa.port())
                }
                IpAddr::V6(v6) => {
                    let ip = if v6.is_unspecified() {
                        Ipv6Addr::LOCALHOST
                    } else {
                        v6
                    };
                    format!("inet:[{ip}]:{}", sa.port())
                }
            },
            SocketSpec::InetHost { host, port } => format!("inet:{host}:{port}"),
            SocketSpec::Unix(path) => format!("unix:{}", path.display()),
        }
    }

    /// Turns an [`SocketSpec::InetHost`] into an [`SocketSpec::Inet`] by
    /// looking the name up; other variants are returned unchanged.
    ///
    /// libmilter binds `inet:` sockets to the IPv4 address of the name, and
    /// Postfix configured with `inet:localhost:PORT` tries IPv4 first too,
    /// so an IPv4 address is preferred when the name has both kinds;
    /// otherwise the first address returned is used.
    pub async fn resolve(&self) -> io::Result<SocketSpec> {
        match self {
            SocketSpec::InetHost { host, port } => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                    .await?
                    .collect();
                addrs
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or_else(|| addrs.first())
                    .copied()
                    .map(SocketSpec::Inet)
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("host name {host:?} has no addresses"),
                        )
                    })
            }
            other => Ok(other.clone()),
        }
    }

    /// True for a Unix-domain socket.
    pub fn is_unix(&self) -> bool {
        matches!(self, SocketSpec::Unix(_))
    }
}

impl fmt::Display for SocketSpec {
    /// Writes the canonical OpenDKIM spelling, which parses back to the same
    /// value: the address is always written out (`inet:8891@0.0.0.0`), IPv6
    /// uses `inet6:` without brackets, and `local:` becomes `unix:`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketSpec::Inet(SocketAddr::V4(sa)) => write!(f, "inet:{}@{}", sa.port(), sa.ip()),
            SocketSpec::Inet(SocketAddr::V6(sa)) => write!(f, "inet6:{}@{}", sa.port(), sa.ip()),
            SocketSpec::InetHost { host, port } => write!(f, "inet:{port}@{host}"),
            SocketSpec::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl FromStr for SocketSpec {
    type Err = SocketSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let spec = s.trim();
        if spec.is_empty() {
            return Err(SocketSpecError::Empty);
        }
        if spec.starts_with('/') {
            return parse_unix(spec, spec);
        }
        let Some((scheme, rest)) = spec.split_once(':') else {
            return Err(SocketSpecError::UnknownScheme {
                spec: spec.to_string(),
                scheme: spec.to_string(),
            });
        };
        // libmilter compares the type case-insensitively.
        match scheme.to_ascii_lowercase().as_str() {
            "unix" | "local" => parse_unix(spec, rest),
            "inet" => parse_inet(spec, rest, false),
            "inet6" => parse_inet(spec, rest, true),
            _ => Err(SocketSpecError::UnknownScheme {
                spec: spec.to_string(),
                scheme: scheme.to_string(),
            }),
        }
    }
}

fn parse_unix(spec: &str, path: &str) -> Result<SocketSpec, SocketSpecError> {
    let bad = |reason| SocketSpecError::BadPath {
        spec: spec.to_string(),
        reason,
    };
    if path.is_empty() {
        return Err(bad("the path is empty"));
    }
    if !path.starts_with('/') {
        // A relative path would depend on the daemon's working directory,
        // which changes when it daemonises or chroots.
        return Err(bad("the path must be absolute"));
    }
    if path.contains('\0') {
        return Err(bad("the path contains a NUL byte"));
    }
    Ok(SocketSpec::Unix(PathBuf::from(path)))
}

fn parse_inet(spec: &str, rest: &str, v6: bool) -> Result<SocketSpec, SocketSpecError> {
    let (port_text, host) = match rest.split_once('@') {
        Some((p, h)) => (p, Some(h)),
        None => (rest, None),
    };
    let port = parse_port(spec, port_text)?;
    let bad_addr = |addr: &str, reason| SocketSpecError::BadAddress {
        spec: spec.to_string(),
        addr: addr.to_string(),
        reason,
    };
    let Some(host) = host else {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        return Ok(SocketSpec::Inet(SocketAddr::new(ip, port)));
    };
    if host.is_empty() {
        return Err(bad_addr(host, "the address after '@' is empty"));
    }
    let (inner, bracketed) = match host.strip_prefix('[') {
        Some(inner) => match inner.strip_suffix(']') {
            Some(inner) => (inner, true),
            None => return Err(bad_addr(host, "'[' without a matching ']'")),
        },
        None => (host, false),
    };
    if let Ok(ip) = inner.parse::<IpAddr>() {
        if v6 && ip.is_ipv4() {
            return Err(bad_addr(
                host,
                "an inet6: socket needs an IPv6 address; use inet: for IPv4",
            ));
        }
        return Ok(SocketSpec::Inet(SocketAddr::new(ip, port)));
    }
    if bracketed {
        return Err(bad_addr(host, "not a valid IP address inside brackets"));
    }
    if inner.contains(':') {
        return Err(bad_addr(host, "not a valid IPv6 address"));
    }
    if v6 {
        return Err(bad_addr(
            host,
            "an inet6: socket needs a literal IPv6 address; use inet:PORT@HOST for a host name",
        ));
    }
    if let Some(reason) = hostname_problem(inner) {
        return Err(bad_addr(host, reason));
    }
    Ok(SocketSpec::InetHost {
        host: inner.to_string(),
        port,
    })
}

fn parse_port(spec: &str, text: &str) -> Result<u16, SocketSpecError> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(port) = text.parse::<u16>() {
            return Ok(port);
        }
    }
    // `inet:127.0.0.1:8891` is the most likely mistake: someone copied the
    // Postfix side of the configuration.
    if text.contains('.') || text.contains(':') || text.contains('[') {
        return Err(SocketSpecError::PostfixForm {
            spec: spec.to_string(),
        });
    }
    Err(SocketSpecError::BadPort {
        spec: spec.to_string(),
        port: text.to_string(),
    })
}

/// Checks RFC 1123 host name syntax (underscores tolerated); returns what is
/// wrong, or `None` if the name is acceptable.
fn hostname_problem(name: &str) -> Option<&'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Some("not a valid host name (wrong length)");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Some("not a valid host name (empty or over-long label)");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Some("not a valid host name (only letters, digits, '-' and '.' are allowed)");
        }
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Some("not a valid IPv4 address (write all four parts, e.g. 127.0.0.1)");
    }
    None
}

impl<'de> Deserialize<'de> for SocketSpec {
    /// Accepts the same strings as [`FromStr`], so a TOML config can say
    /// `socket = "inet:8891@localhost"`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl Visitor<'_> for SpecVisitor {
            type Value = SocketSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a milter socket such as \"inet:8891@127.0.0.1\" or \"unix:/run/milter.sock\"",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketSpec, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(SpecVisitor)
    }
}

impl Serialize for SocketSpec {
    /// Writes the canonical form (see [`fmt::Display`]), for config dumps.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddrV4, SocketAddrV6};

    fn p(s: &str) -> Result<SocketSpec, SocketSpecError> {
        s.parse()
    }

    fn v4(a: [u8; 4], port: u16) -> SocketSpec {
        SocketSpec::Inet(SocketAddr::V4(SocketAddrV4::new(a.into(), port)))
    }

    fn v6(a: &str, port: u16) -> SocketSpec {
        SocketSpec::Inet(SocketAddr::V6(SocketAddrV6::new(
            a.parse().unwrap(),
            port,
            0,
            0,
        )))
    }

    #[test]
    fn inet_forms() {
        assert_eq!(p("inet:8891@127.0.0.1").unwrap(), v4([127, 0, 0, 1], 8891));
        assert_eq!(p("inet:8891").unwrap(), v4([0, 0, 0, 0], 8891));
        assert_eq!(
            p("  INET:8891@127.0.0.1 ").unwrap(),
            v4([127, 0, 0, 1], 8891)
        );
        assert_eq!(p("inet:8891@[::1]").unwrap(), v6("::1", 8891));
        assert_eq!(p("inet:8891@::1").unwrap(), v6("::1", 8891));
        assert_eq!(p("inet:0@127.0.0.1").unwrap(), v4([127, 0, 0, 1], 0));
        assert_eq!(p("inet:65535").unwrap(), v4([0, 0, 0, 0], 65535));
        assert_eq!(
            p("inet:8891@localhost").unwrap(),
            SocketSpec::InetHost {
                host: "localhost".into(),
                port: 8891
            }
        );
        assert_eq!(
            p("inet:12345@mail-filter.example.com").unwrap(),
            SocketSpec::InetHost {
                host: "mail-filter.example.com".into(),
                port: 12345
            }
        );
    }

    #[test]
    fn inet6_forms() {
        assert_eq!(p("inet6:8891@::1").unwrap(), v6("::1", 8891));
        assert_eq!(p("inet6:8891@[::1]").unwrap(), v6("::1", 8891));
        assert_eq!(p("inet6:8891").unwrap(), v6("::", 8891));
        assert_eq!(
            p("inet6:8891@2001:DB8:0:0::1").unwrap(),
            v6("2001:db8::1", 8891)
        );
    }

    #[test]
    fn unix_forms() {
        let want = SocketSpec::Unix(PathBuf::from("/run/opendkim/opendkim.sock"));
        assert_eq!(p("unix:/run/opendkim/opendkim.sock").unwrap(), want);
        assert_eq!(p("local:/run/opendkim/opendkim.sock").unwrap(), want);
        assert_eq!(p("/run/opendkim/opendkim.sock").unwrap(), want);
        assert_eq!(p("LOCAL:/run/opendkim/opendkim.sock").unwrap(), want);
    }

    #[test]
    fn errors() {
        assert_eq!(p(""), Err(SocketSpecError::Empty));
        assert_eq!(p("   "), Err(SocketSpecError::Empty));
        assert!(matches!(
            p("tcp:8891"),
            Err(SocketSpecError::UnknownScheme { .. })
        ));
        assert!(matches!(
            p("8891"),
            Err(SocketSpecError::UnknownScheme { .. })
        ));
        assert!(matches!(p("inet:"), Err(SocketSpecError::BadPort { .. })));
        assert!(matches!(
            p("inet:@127.0.0.1"),
            Err(SocketSpecError::BadPort { .. })
        ));
        assert!(matches!(
            p("inet:65536"),
            Err(SocketSpecError::BadPort { .. })
        ));
        assert!(matches!(p("inet:-1"), Err(SocketSpecError::BadPort { .. })));
        assert!(matches!(p("inet:+1"), Err(SocketSpecError::BadPort { .. })));
        assert!(matches!(
            p("inet:smtp"),
            Err(SocketSpecError::BadPort { .. })
        ));
        assert!(matches!(
            p("inet:127.0.0.1:8891"),
            Err(SocketSpecError::PostfixForm { .. })
        ));
        assert!(matches!(
            p("inet:8891@"),
            Err(SocketSpecError::BadAddress { .. })
        ));
        assert!(matches!(
            p("inet:8891@[::1"),
            Err(SocketSpecError::BadAddress { .. })
        ));
        assert!(matches!(
            p("inet:8891@[nope]"),
            Err(SocketSpecError::BadAddress { .. })
        ));
        assert!(matches!(
            p("inet:8891@127.1"),
            Err(SocketSpecError::BadAddress { .. })
        ));
        assert!(matches!(
            p("inet:8891@256.0.0.1"),
            Err(SocketSpecError::BadAddress { .. })
        ));
        assert!(matches!(
            p("inet:8891@bad host"),
            Err(SocketSpecError::BadAddress { .. })
        ));
        assert!(matches!(
            p("inet:8891@a..b"),
            Err(SocketSpecError::BadAddress { .. })
        ));
        assert!(matches!(
            p("inet:8891@::g"),
            Err(SocketSpecError::BadAddress { .. })
        ));
        assert!(matches!(
            p("inet6:8891@127.0.0.1"),
            Err(SocketSpecError::BadAddress { .. })
        ));
        assert!(matches!(
            p("inet6:8891@localhost"),
            Err(SocketSpecError::BadAddress { .. })
        ));
        assert!(matches!(p("unix:"), Err(SocketSpecError::BadPath { .. })));
        assert!(matches!(
            p("unix:run/x.sock"),
            Err(SocketSpecError::BadPath { .. })
        ));
        assert!(matches!(
            p("local:./x.sock"),
            Err(SocketSpecError::BadPath { .. })
        ));
        assert!(matches!(
            p("unix:/a\0b"),
            Err(SocketSpecError::BadPath { .. })
        ));
        // Error messages name the offending text.
        let msg = p("inet:99999@127.0.0.1").unwrap_err().to_string();
        assert!(msg.contains("99999"), "{msg}");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "inet:8891@127.0.0.1",
            "inet:8891",
            "inet:8891@[::1]",
            "inet6:8891",
            "inet6:0@[2001:db8::1]",
            "inet:8891@localhost",
            "local:/run/x.sock",
            "/run/x.sock",
        ] {
            let spec = p(s).unwrap();
            let shown = spec.to_string();
            assert_eq!(p(&shown).unwrap(), spec, "{s} -> {shown}");
        }
        assert_eq!(p("inet:8891").unwrap().to_string(), "inet:8891@0.0.0.0");
        assert_eq!(p("inet6:8891@[::1]").unwrap().to_string(), "inet6:8891@::1");
        assert_eq!(
            p("local:/run/x.sock").unwrap().to_string(),
            "unix:/run/x.sock"
        );
    }

    #[test]
    fn postfix_forms() {
        assert_eq!(
            p("inet:8891@127.0.0.1").unwrap().postfix_form(),
            "inet:127.0.0.1:8891"
        );
        assert_eq!(
            p("inet:8891").unwrap().postfix_form(),
            "inet:127.0.0.1:8891"
        );
        assert_eq!(
            p("inet6:8891@::1").unwrap().postfix_form(),
            "inet:[::1]:8891"
        );
        assert_eq!(p("inet6:8891").unwrap().postfix_form(), "inet:[::1]:8891");
        assert_eq!(
            p("inet:8891@localhost").unwrap().postfix_form(),
            "inet:localhost:8891"
        );
        assert_eq!(
            p("local:/run/opendkim/opendkim.sock")
                .unwrap()
                .postfix_form(),
            "unix:/run/opendkim/opendkim.sock"
        );
    }

    #[test]
    fn serde_round_trip() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Cfg {
            socket: SocketSpec,
        }
        let cfg: Cfg = toml::from_str("socket = \"inet:8891@[::1]\"").unwrap();
        assert_eq!(cfg.socket, v6("::1", 8891));
        let out = toml::to_string(&cfg).unwrap();
        assert_eq!(out.trim(), "socket = \"inet6:8891@::1\"");
        let err = toml::from_str::<Cfg>("socket = \"inet:x\"").err().unwrap();
        assert!(err.to_string().contains("bad port"), "{err}");
    }

    #[tokio::test]
    async fn resolve_literal_and_name() {
        let lit = p("inet:8891@127.0.0.1").unwrap();
        assert_eq!(lit.resolve().await.unwrap(), lit);
        let unix = p("unix:/run/x.sock").unwrap();
        assert_eq!(unix.resolve().await.unwrap(), unix);
        let host = p("inet:8891@localhost").unwrap();
        match host.resolve().await.unwrap() {
            SocketSpec::Inet(sa) => {
                assert!(sa.ip().is_loopback());
                assert_eq!(sa.port(), 8891);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
