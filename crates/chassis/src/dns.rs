//! One resolver for everything a daemon looks up, built from the `[resolver]` config section.
//! Milter timeouts are tight (Postfix waits 300 s at end of message, 30 s per command), so the
//! defaults here are shorter than hickory's 5 s x 2.

use crate::mailauth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use crate::mailauth::MessageAuthenticator;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// `[resolver]`: where to send queries and how long to wait.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverSettings {
    /// Name servers as `IP`, `IP:PORT` or `[IPv6]:PORT`; empty means the system resolver
    /// configuration (/etc/resolv.conf).
    pub nameservers: Vec<String>,
    /// Seconds to wait for one answer.
    pub timeout: f64,
    /// Tries per query.
    pub attempts: usize,
    /// Responses kept in the resolver's cache.
    pub cache_size: u64,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: 5.0,
            attempts: 2,
            cache_size: 4096,
        }
    }
}

impl ResolverSettings {
    /// The longest a single lookup may take: what a per-message DNS budget is built from.
    pub fn worst_case(&self) -> Duration {
        Duration::from_secs_f64(self.timeout.max(0.1) * self.attempts.max(1) as f64)
    }

    /// Parses the name server list; errors name the bad entry.
    pub fn parsed_nameservers(&self) -> Result<Vec<SocketAddr>, String> {
        self.nameservers
            .iter()
            .map(|s| parse_nameserver(s))
            .collect()
    }

    /// Builds the resolver every lookup goes through.
    pub fn build(&self) -> Result<MessageAuthenticator, String> {
        let servers = self.parsed_nameservers()?;
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs_f64(self.timeout.max(0.1));
        opts.attempts = self.attempts.max(1);
        opts.cache_size = self.cache_size;
        if servers.is_empty() {
            let (config, mut sys_opts) =
                crate::mailauth::hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?;
            sys_opts.timeout = opts.timeout;
            sys_opts.attempts = opts.attempts;
            sys_opts.cache_size = opts.cache_size;
            return MessageAuthenticator::new(config, sys_opts)
                .map_err(|e| format!("cannot create resolver: {e}"));
        }
        let ns = servers
            .into_iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        MessageAuthenticator::new(ResolverConfig::from_name_servers(ns), opts)
            .map_err(|e| format!("cannot create resolver: {e}"))
    }
}

/// `127.0.0.1`, `127.0.0.1:5353`, `::1`, `[::1]:5353`.
pub fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "bad name server '{s}': expected IP, IP:PORT or [IPv6]:PORT"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_forms() {
        assert_eq!(
            parse_nameserver("127.0.0.1").unwrap(),
            "127.0.0.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("::1").unwrap(),
            "[::1]:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("[::1]:5353").unwrap(),
            "[::1]:5353".parse().unwrap()
        );
        assert!(parse_nameserver("dns.example").is_err());
    }

    #[test]
    fn worst_case_is_timeout_times_attempts() {
        let s = ResolverSettings {
            timeout: 1.5,
            attempts: 2,
            ..Default::default()
        };
        assert_eq!(s.worst_case(), Duration::from_secs(3));
    }
}
