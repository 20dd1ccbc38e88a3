//! Sign or verify? OpenDKIM's rule: sign when the origin is trusted (InternalHosts, SMTP AUTH,
//! an MTA name or MacroList match) *and* the sender's domain is in the SigningTable; otherwise
//! verify. Pure function over the envelope and the headers.

use crate::config::Config;
use crate::tables::SigningMatch;
use chassis::address::{mailboxes, Mailbox};
use chassis::envelope::Envelope;
use chassis::message::HeaderField;

/// The outcome of the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Sign as `sender` with these SigningTable matches (one signature each).
    Sign {
        sender: Mailbox,
        matches: Vec<SigningMatch>,
    },
    /// Verify the message's signatures. `why_not_sign` explains, for LogWhy.
    Verify {
        why_not_sign: String,
        external_sender: Option<String>,
    },
    /// Leave the message alone.
    Skip(String),
}

/// The author mailbox used to pick a key: the first address of the first configured sender
/// header present (From by default).
pub fn sender(cfg: &Config, headers: &[HeaderField]) -> Option<Mailbox> {
    for wanted in &cfg.sender_headers {
        if let Some(h) = headers.iter().find(|h| h.name_is(wanted)) {
            return mailboxes(&h.value_str()).into_iter().next();
        }
    }
    None
}

/// Why the origin is trusted to have its mail signed, or `None` when it is not.
pub fn origin_trusted(cfg: &Config, env: &Envelope) -> Option<String> {
    if let Some(d) = env.listener.as_deref() {
        if cfg.mta.iter().any(|m| m.eq_ignore_ascii_case(d)) {
            return Some(format!("MTA name {d}"));
        }
    }
    for rule in &cfg.macro_list {
        if let Some(v) = env.attribute(&rule.name) {
            if rule.values.is_empty() || rule.values.iter().any(|want| want == v) {
                return Some(format!("macro {}={v}", rule.name));
            }
        }
    }
    if env.is_authenticated() {
        return Some("authenticated".into());
    }
    let name = (!env.client_name.is_empty()).then_some(env.client_name.as_str());
    if cfg.internal_hosts.matches(env.client_ip, name) {
        return Some("internal host".into());
    }
    None
}

/// Decides what to do with one message.
pub fn decide(cfg: &Config, env: &Envelope, headers: &[HeaderField]) -> Decision {
    let sender = sender(cfg, headers);
    let trusted = origin_trusted(cfg, env);
    let matches = match (&sender, cfg.sign) {
        (Some(s), true) => {
            let mut m = cfg.signing_table.lookup(&s.local, &s.domain);
            if !cfg.multiple_signatures {
                m.truncate(1);
            }
            m
        }
        _ => Vec::new(),
    };
    match (&sender, trusted, matches.is_empty()) {
        (Some(s), Some(_), false) => Decision::Sign {
            sender: s.clone(),
            matches,
        },
        (sender, trusted, no_match) => {
            let external = match (sender, &trusted, no_match) {
                (Some(s), None, false) => {
                    let name = (!env.client_name.is_empty()).then_some(env.client_name.as_str());
                    (!cfg.external_ignore_list.matches(env.client_ip, name))
                        .then(|| s.domain.clone())
                }
                _ => None,
            };
            let why = match (sender, trusted) {
                (None, _) => "can't determine message sender".to_string(),
                (Some(_), None) => {
                    format!("{} not internal and not authenticated", env.client_label())
                }
                (Some(s), Some(_)) => format!("no signing table match for '{}'", s.address()),
            };
            if cfg.verify {
                Decision::Verify {
                    why_not_sign: why,
                    external_sender: external,
                }
            } else {
                Decision::Skip(why)
            }
        }
    }
}
