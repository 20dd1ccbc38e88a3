// SPDX-License-Identifier: GPL-3.0-or-later
//! Where a milter listens.

use crate::Error;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

/// A milter socket address.
///
/// Parses the notations found in milter and MTA configuration files, so test
/// configuration can be pasted verbatim:
///
/// * Sendmail/libmilter: `inet:PORT@HOST`, `inet6:PORT@HOST`, with `HOST` an
///   IP literal (IPv6 optionally in brackets) or a resolvable name;
/// * Postfix: `inet:HOST:PORT`, `inet:[::1]:PORT`;
/// * `unix:/path` and `local:/path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A TCP socket.
    Tcp(SocketAddr),
    /// A UNIX-domain socket.
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    /// Formats in the Sendmail notation (`inet:PORT@HOST` or `unix:PATH`),
    /// which our milters' configuration uses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(SocketAddr::V4(a)) => write!(f, "inet:{}@{}", a.port(), a.ip()),
            Endpoint::Tcp(SocketAddr::V6(a)) => write!(f, "inet6:{}@[{}]", a.port(), a.ip()),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        Endpoint::Tcp(a)
    }
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Endpoint(s.to_owned(), why.to_owned());
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| bad("expected TYPE:ADDRESS"))?;
        match kind.to_ascii_lowercase().as_str() {
            "unix" | "local" => {
                if rest.is_empty() {
                    return Err(bad("empty socket path"));
                }
                Ok(Endpoint::Unix(PathBuf::from(rest)))
            }
            "inet" | "inet6" => {
                let (host, port) = if let Some((port, host)) = rest.split_once('@') {
                    (host, port)
                } else if let Some((host, port)) = rest.rsplit_once(':') {
                    (host, port)
                } else {
                    return Err(bad("expected PORT@HOST or HOST:PORT"));
                };
                let port: u16 = port.parse().map_err(|_| bad("bad port number"))?;
                let host = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                if host.is_empty() {
                    return Err(bad("empty host"));
                }
                if let Ok(ip) = host.parse::<IpAddr>() {
                    return Ok(Endpoint::Tcp(SocketAddr::new(ip, port)));
                }
                // A host name: resolve it now, because the endpoint holds an
                // address. Prefer the address family the prefix asks for.
                let want_v6 = kind.eq_ignore_ascii_case("inet6");
                let addrs: Vec<SocketAddr> = (host, port)
                    .to_socket_addrs()
                    .map_err(|e| bad(&format!("cannot resolve host: {e}")))?
                    .collect();
                addrs
                    .iter()
                    .find(|a| a.is_ipv6() == want_v6)
                    .or(addrs.first())
                    .map(|a| Endpoint::Tcp(*a))
                    .ok_or_else(|| bad("host has no addresses"))
            }
            _ => Err(bad("unknown socket type (want inet, inet6, unix or local)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_sendmail_notation() {
        assert_eq!(
            "inet:8891@127.0.0.1".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp(tcp("127.0.0.1:8891"))
        );
        assert_eq!(
            "inet:8891@[::1]".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp(tcp("[::1]:8891"))
        );
        assert_eq!(
            "inet6:12@::1".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp(tcp("[::1]:12"))
        );
        assert_eq!(
            "inet:25@localhost".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp(tcp("127.0.0.1:25"))
        );
    }

    #[test]
    fn parses_postfix_notation() {
        assert_eq!(
            "inet:127.0.0.1:8891".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp(tcp("127.0.0.1:8891"))
        );
        assert_eq!(
            "inet:[::1]:8891".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp(tcp("[::1]:8891"))
        );
    }

    #[test]
    fn parses_unix() {
        assert_eq!(
            "unix:/run/x.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "local:rel/x.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("rel/x.sock".into())
        );
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "8891",
            "inet:",
            "inet:99999@127.0.0.1",
            "inet:x@127.0.0.1",
            "inet:@1",
            "unix:",
            "tcp:1@1.2.3.4",
        ] {
            assert!(
                matches!(s.parse::<Endpoint>(), Err(Error::Endpoint(..))),
                "{s:?}"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "inet:8891@127.0.0.1",
            "inet6:8891@[::1]",
            "unix:/tmp/m.sock",
        ] {
            let ep: Endpoint = s.parse().unwrap();
            assert_eq!(ep.to_string(), s);
            assert_eq!(ep.to_string().parse::<Endpoint>().unwrap(), ep);
        }
    }
}
