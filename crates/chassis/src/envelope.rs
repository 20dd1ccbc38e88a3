//! What a front end (milter today, OpenSMTPD filter protocol next) learned about one SMTP
//! transaction before the message content, as typed fields: the policy layer reads this,
//! never protocol types or macro names. Each front end maps its own protocol onto these fields.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// SMTP AUTH as the MTA reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authenticated {
    /// The authenticated user name (may be empty when the MTA only reports the mechanism).
    pub user: String,
    /// The SASL mechanism (`PLAIN`, `LOGIN`, ...), empty when unknown.
    pub mechanism: String,
}

/// Which of the envelope's optional facts a policy reads. The connection, the AUTH identity
/// and the queue id are always filled; HELO, MAIL FROM and the recipients only when asked for.
/// A front end that pays per fact (OpenSMTPD sends each as a report line of its own, arriving
/// at its own SMTP round trip and costing a wake-up of the filter) asks only for these; the
/// milter front end gets them all with the commands it needs anyway (MAIL carries the AUTH
/// macros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub helo: bool,
    pub mail_from: bool,
    pub recipients: bool,
}

impl Facts {
    pub const ALL: Facts = Facts {
        helo: true,
        mail_from: true,
        recipients: true,
    };
}

/// The SMTP envelope of one transaction, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The MTA's queue id; every log line about the message starts with it.
    pub queue_id: Option<String>,
    /// The MTA's own host name (the authserv-id fallback).
    pub mta_hostname: Option<String>,
    /// The name of the MTA's listener or service the message came in on (Postfix's
    /// `smtpd -o milter_macro_daemon_name=ORIGINATING`, Sendmail's DaemonPortOptions Name=).
    pub listener: Option<String>,
    /// The connecting client's address; `None` for local submissions (unix socket, pickup).
    pub client_ip: Option<IpAddr>,
    /// The client's host name as the MTA reported it (`[192.0.2.1]` when it has none).
    pub client_name: String,
    pub helo: String,
    /// The MAIL FROM address without angle brackets; empty for the null sender.
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// Set when the client authenticated with SMTP AUTH.
    pub auth: Option<Authenticated>,
    /// Other MTA-provided values that the operator's rules name (OpenDKIM's MacroList), by
    /// name without protocol decoration.
    pub attributes: BTreeMap<String, String>,
}

impl Envelope {
    /// The MTA's queue id for log lines, OpenDKIM's placeholder when it gave none.
    pub fn queue_id(&self) -> &str {
        self.queue_id.as_deref().unwrap_or("(unknown-jobid)")
    }

    /// True when the client authenticated with SMTP AUTH.
    pub fn is_authenticated(&self) -> bool {
        self.auth.is_some()
    }

    /// An attribute the operator's rules refer to, when the MTA gave a non-empty one.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
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

    /// Clears what belongs to one transaction (after an abort or at the next MAIL FROM).
    pub fn reset_transaction(&mut self) {
        self.mail_from.clear();
        self.rcpts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_queue_id_reads_like_opendkim() {
        assert_eq!(Envelope::default().queue_id(), "(unknown-jobid)");
    }

    #[test]
    fn empty_attributes_count_as_absent() {
        let mut e = Envelope::default();
        e.attributes.insert("daemon_name".into(), String::new());
        assert_eq!(e.attribute("daemon_name"), None);
        e.attributes.insert("daemon_name".into(), "ORIG".into());
        assert_eq!(e.attribute("daemon_name"), Some("ORIG"));
    }

    #[test]
    fn client_label_forms() {
        let mut e = Envelope::default();
        assert_eq!(e.client_label(), "(local)");
        e.client_ip = Some("192.0.2.1".parse().unwrap());
        assert_eq!(e.client_label(), "[192.0.2.1]");
        e.client_name = "mail.example".into();
        assert_eq!(e.client_label(), "mail.example [192.0.2.1]");
    }
}
