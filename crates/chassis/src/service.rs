//! Process-level settings every daemon shares: where to listen, as whom to run, where the pid
//! file goes, how long to wait for sessions at shutdown, logging and metrics. Kept apart from the
//! policy configuration because these cannot change on reload.

use crate::logging::LogSettings;
use crate::socketspec::SocketSpec;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    pub max_connections: usize,
    pub log: LogSettings,
    /// Where to serve Prometheus metrics (`/metrics`); `None` = off.
    pub metrics_listen: Option<SocketAddr>,
}

impl ServiceSettings {
    /// The settings that only take effect at start, as `(name, value)` for "needs restart" messages.
    pub fn restart_only(&self) -> Vec<(&'static str, String)> {
        vec![
            ("socket", self.socket.to_string()),
            ("socket_mode", format!("{:?}", self.socket_mode)),
            ("user", format!("{:?}", self.user)),
            ("pid_file", format!("{:?}", self.pid_file)),
            ("metrics_listen", format!("{:?}", self.metrics_listen)),
            ("log", format!("{:?}", self.log)),
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
            max_connections: 10,
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
