//! Process-level settings every daemon shares: where to listen, as whom to run, where the pid
//! file goes, how long to wait for sessions at shutdown, logging and metrics. Kept apart from the
//! policy configuration because these cannot change on reload.

use crate::configfile::{key_error, relative_to, ConfigError};
use crate::logging::LogSettings;
use crate::message::Limits;
use crate::socketspec::SocketSpec;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[limits]`, the same for both daemons.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Bytes of a message kept in memory before it spills to a temporary file.
    pub spill_threshold: usize,
    pub temp_dir: Option<PathBuf>,
    pub max_connections: usize,
    /// Seconds for all DNS work of one message.
    pub message_timeout: u64,
    /// Seconds sessions in flight may run after SIGTERM.
    pub shutdown_grace: u64,
    /// Seconds the MTA may stay silent on a connection before we close it (libmilter waits
    /// 7210 s, long enough for idle clients to hold every connection slot for two hours).
    pub idle_timeout: u64,
    /// Threads serving milter connections, each with its own event loop; 0 = one per CPU core.
    pub workers: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
            spill_threshold: l.spill_threshold,
            temp_dir: None,
            max_connections: 256,
            message_timeout: 60,
            shutdown_grace: 30,
            idle_timeout: 900,
            workers: 0,
        }
    }
}

impl LimitSettings {
    /// The per-message buffering limits, `temp_dir` relative to the config file.
    pub fn message_limits(&self, config_file: &Path) -> Limits {
        Limits {
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            spill_threshold: self.spill_threshold,
            temp_dir: self.temp_dir.as_ref().map(|p| relative_to(config_file, p)),
        }
    }

    pub fn message_timeout(&self) -> Duration {
        Duration::from_secs(self.message_timeout.max(1))
    }
}

/// The service keys as a daemon's TOML has them (top-level `socket`, `socket_mode`, `user`,
/// `pid_file`, `metrics_listen`, plus `[log]` and `[limits]`).
pub struct ServiceParts<'a> {
    pub socket: &'a str,
    pub socket_mode: Option<&'a str>,
    pub user: Option<String>,
    pub pid_file: Option<PathBuf>,
    pub metrics_listen: Option<&'a str>,
    pub log: LogSettings,
    pub limits: &'a LimitSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSettings {
    pub socket: SocketSpec,
    /// Permissions of a unix socket.
    pub socket_mode: Option<u32>,
    /// `user` or `user:group` to switch to after binding the socket.
    pub user: Option<String>,
    pub pid_file: Option<PathBuf>,
    /// How long sessions in flight may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// How long a connection may stay silent before it is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Event-loop threads serving connections (resolved: never 0).
    pub workers: usize,
    pub log: LogSettings,
    /// Where to serve Prometheus metrics (`/metrics`); `None` = off.
    pub metrics_listen: Option<SocketAddr>,
}

impl ServiceSettings {
    /// Validates the service keys of the TOML file `path` (contents `text`, for line numbers).
    pub fn from_parts(
        parts: ServiceParts<'_>,
        path: &Path,
        text: &str,
    ) -> Result<ServiceSettings, ConfigError> {
        let socket: SocketSpec = parts
            .socket
            .parse()
            .map_err(|e| key_error(path, text, "socket", format!("{e}")))?;
        let socket_mode = match parts.socket_mode {
            Some(m) => Some(parse_mode(m).ok_or_else(|| {
                key_error(
                    path,
                    text,
                    "socket_mode",
                    format!("'{m}' is not an octal mode such as \"0660\""),
                )
            })?),
            None => None,
        };
        let metrics_listen = match parts.metrics_listen {
            Some(a) => Some(a.parse().map_err(|_| {
                key_error(
                    path,
                    text,
                    "metrics_listen",
                    format!("'{a}' is not an IP:PORT address"),
                )
            })?),
            None => None,
        };
        Ok(ServiceSettings {
            socket,
            socket_mode,
            user: parts.user.filter(|u| !u.trim().is_empty()),
            pid_file: parts.pid_file.map(|p| relative_to(path, &p)),
            shutdown_grace: Duration::from_secs(parts.limits.shutdown_grace),
            idle_timeout: Duration::from_secs(parts.limits.idle_timeout.max(1)),
            max_connections: parts.limits.max_connections.max(1),
            workers: match parts.limits.workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            log: parts.log,
            metrics_listen,
        })
    }

    /// Each serving thread's share of `max_connections` (rounded up, so the sum is never less).
    pub fn connections_per_worker(&self) -> usize {
        self.max_connections.div_ceil(self.workers.max(1))
    }

    /// The settings that only take effect at start, as `(name, value)` for "needs restart" messages.
    pub fn restart_only(&self) -> Vec<(&'static str, String)> {
        vec![
            ("socket", self.socket.to_string()),
            ("socket_mode", format!("{:?}", self.socket_mode)),
            ("user", format!("{:?}", self.user)),
            ("pid_file", format!("{:?}", self.pid_file)),
            ("metrics_listen", format!("{:?}", self.metrics_listen)),
            ("log", format!("{:?}", self.log)),
            ("workers", self.workers.to_string()),
        ]
    }

    /// Names of restart-only settings that differ between `self` (running) and `new`.
    pub fn changed_restart_only(&self, new: &ServiceSettings) -> Vec<&'static str> {
        self.restart_only()
            .into_iter()
            .zip(new.restart_only())
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect()
    }
}

/// Parses an octal mode such as `"0660"`, `"660"` or `"0o660"`.
pub fn parse_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim().trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
}

/// Declares a daemon's raw TOML model with the keys every daemon has added in front: `socket`
/// (default given), `socket_mode`, `user`, `pid_file`, `metrics_listen`, `[resolver]`, `[log]`
/// and `[limits]`, plus `service_parts()` to hand them to [`ServiceSettings::from_parts`].
///
/// A macro rather than `#[serde(flatten)]`: flatten cannot be combined with
/// `deny_unknown_fields`, and a misspelt key must stay an error that names it.
#[macro_export]
macro_rules! raw_config_with_service_keys {
    (
        default_socket = $socket:literal;
        $(#[$meta:meta])*
        struct $name:ident { $($fields:tt)* }
    ) => {
        fn raw_config_default_socket() -> String {
            $socket.into()
        }

        $(#[$meta])*
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            #[serde(default = "raw_config_default_socket")]
            socket: String,
            #[serde(default)]
            socket_mode: Option<String>,
            #[serde(default)]
            user: Option<String>,
            #[serde(default)]
            pid_file: Option<std::path::PathBuf>,
            #[serde(default)]
            metrics_listen: Option<String>,
            #[serde(default)]
            resolver: $crate::dns::ResolverSettings,
            #[serde(default)]
            log: $crate::logging::LogSettings,
            #[serde(default)]
            limits: $crate::service::LimitSettings,
            $($fields)*
        }

        impl $name {
            /// The service keys, for `ServiceSettings::from_parts` (user, pid file and log
            /// settings are moved out).
            fn service_parts(&mut self) -> $crate::service::ServiceParts<'_> {
                $crate::service::ServiceParts {
                    socket: &self.socket,
                    socket_mode: self.socket_mode.as_deref(),
                    user: self.user.take(),
                    pid_file: self.pid_file.take(),
                    metrics_listen: self.metrics_listen.as_deref(),
                    log: std::mem::take(&mut self.log),
                    limits: &self.limits,
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ServiceSettings {
        ServiceSettings {
            socket: "inet:8891@127.0.0.1".parse().unwrap(),
            socket_mode: None,
            user: None,
            pid_file: None,
            shutdown_grace: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(900),
            max_connections: 10,
            workers: 2,
            log: LogSettings::default(),
            metrics_listen: None,
        }
    }

    #[test]
    fn detects_restart_only_changes() {
        let a = base();
        let mut b = base();
        assert!(a.changed_restart_only(&b).is_empty());
        b.socket = "inet:8892@127.0.0.1".parse().unwrap();
        b.user = Some("dkim".into());
        b.shutdown_grace = Duration::from_secs(1);
        assert_eq!(a.changed_restart_only(&b), vec!["socket", "user"]);
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660"), Some(0o660));
        assert_eq!(parse_mode("0o600"), Some(0o600));
        assert_eq!(parse_mode("999"), None);
    }
}
