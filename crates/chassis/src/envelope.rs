//! What a front end (milter today, OpenSMTPD filter protocol next) learned about one SMTP transaction
//! before the message content: the policy layer reads this, never protocol types.

use std::collections::HashMap;
use std::net::IpAddr;

/// The SMTP envelope and the MTA's macros, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The connecting client's address; `None` for local submissions (unix socket, pickup).
    pub client_ip: Option<IpAddr>,
    /// The client's host name as the MTA reported it (`[192.0.2.1]` when it has none).
    pub client_name: String,
    pub helo: String,
    /// The MAIL FROM address without angle brackets; empty for the null sender.
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// Every macro the MTA sent, names normalised without braces (`auth_type`, `i`, `j`); the newest value wins.
    pub macros: HashMap<String, String>,
}

impl Envelope {
    /// A macro by name, with or without braces (`{auth_type}` and `auth_type` are the same macro).
    pub fn macro_value(&self, name: &str) -> Option<&str> {
        let bare = name.trim_start_matches('{').trim_end_matches('}');
        self.macros
            .get(bare)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The MTA's queue id (`i`), used to prefix every log line as OpenDKIM does.
    pub fn queue_id(&self) -> &str {
        self.macro_value("i").unwrap_or("(unknown-jobid)")
    }

    /// True when the client authenticated with SMTP AUTH (`{auth_type}` or `{auth_authen}` set).
    pub fn is_authenticated(&self) -> bool {
        self.macro_value("auth_type").is_some() || self.macro_value("auth_authen").is_some()
    }

    /// Records a macro, normalising `{name}` to `name`.
    pub fn set_macro(&mut self, name: &str, value: &str) {
        let bare = name.trim_start_matches('{').trim_end_matches('}');
        self.macros.insert(bare.to_string(), value.to_string());
    }

    /// The client for log lines: `name [ip]`.
    pub fn client_label(&self) -> String {
        match self.client_ip {
            Some(ip) if !self.client_name.is_empty() => format!("{} [{}]", self.client_name, ip),
            Some(ip) => format!("[{ip}]"),
            None if !self.client_name.is_empty() => self.client_name.clone(),
            None => "(local)".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macros_are_found_with_or_without_braces() {
        let mut e = Envelope::default();
        e.set_macro("{auth_type}", "PLAIN");
        e.set_macro("i", "ABC123");
        assert_eq!(e.macro_value("auth_type"), Some("PLAIN"));
        assert_eq!(e.macro_value("{auth_type}"), Some("PLAIN"));
        assert_eq!(e.queue_id(), "ABC123");
        assert!(e.is_authenticated());
        e.set_macro("auth_type", "");
        assert!(!e.is_authenticated());
    }

    #[test]
    fn missing_queue_id_reads_like_opendkim() {
        assert_eq!(Envelope::default().queue_id(), "(unknown-jobid)");
    }
}
