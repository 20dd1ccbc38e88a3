//! Milter macros, the protocol's way of telling a filter about the SMTP session, mapped onto
//! the typed [`Envelope`] here and nowhere else: `i` is the queue id, `j` the MTA's host name,
//! `{daemon_name}` its listener, `{auth_type}`/`{auth_authen}` SMTP AUTH, `{client_addr}` the
//! client when the socket does not say. Names the operator's rules ask for (MacroList) land in
//! [`Envelope::attributes`].

use chassis::envelope::{Authenticated, Envelope};
use indymilter::MacroStage;
use std::collections::HashMap;

/// Macros the SMTP server knows and a later stage may answer differently (Postfix sends
/// end-of-header and end-of-message macros from its cleanup process, with its own
/// `{daemon_name}` and no SMTP AUTH data): the first non-empty value stays.
const SESSION_MACROS: &[&str] = &[
    "daemon_name",
    "auth_type",
    "auth_authen",
    "auth_author",
    "client_addr",
    "client_name",
];

/// A macro name without braces: `{auth_type}` and `auth_type` are the same macro.
fn bare(name: &str) -> &str {
    name.trim_start_matches('{').trim_end_matches('}')
}

/// Every macro the MTA sent on one connection, and the names the policy wants as attributes.
#[derive(Debug, Default)]
pub struct MacroState {
    values: HashMap<String, String>,
    wanted: Vec<String>,
}

impl MacroState {
    pub fn new(wanted: Vec<String>) -> Self {
        Self {
            values: HashMap::new(),
            wanted: wanted.iter().map(|w| bare(w).to_string()).collect(),
        }
    }

    /// Takes in one stage's macros: session macros keep their first non-empty value, others
    /// the newest non-empty one.
    pub fn merge(&mut self, macros: &indymilter::Macros) {
        for (k, v) in macros.to_hash_map() {
            let name = k.to_string_lossy();
            let value = v.to_string_lossy();
            self.set(&name, &value);
        }
    }

    fn set(&mut self, name: &str, value: &str) {
        let name = bare(name);
        let known = self.get(name).is_some();
        if known && (value.is_empty() || SESSION_MACROS.contains(&name)) {
            return;
        }
        self.values.insert(name.to_string(), value.to_string());
    }

    /// A macro's non-empty value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(bare(name))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Writes what the macros say into the typed envelope.
    pub fn fill(&self, env: &mut Envelope) {
        let owned = |name: &str| self.get(name).map(str::to_string);
        if let Some(i) = owned("i") {
            env.queue_id = Some(i);
        }
        if let Some(j) = owned("j") {
            env.mta_hostname = Some(j);
        }
        if let Some(d) = owned("daemon_name") {
            env.listener = Some(d);
        }
        let (mechanism, user) = (owned("auth_type"), owned("auth_authen"));
        if mechanism.is_some() || user.is_some() {
            env.auth = Some(Authenticated {
                user: user.unwrap_or_default(),
                mechanism: mechanism.unwrap_or_default(),
            });
        }
        for w in &self.wanted {
            if let Some(v) = self.get(w) {
                env.attributes.insert(w.clone(), v.to_string());
            }
        }
    }

    /// The macro lists to ask the MTA for, per stage. The SMTP-session macros come at connect
    /// and MAIL, from the process that knows them; the queue id and the policy's attributes at
    /// end of headers and end of message.
    pub fn requests(&self) -> Vec<(MacroStage, String)> {
        let mut eoh = String::from("i");
        for m in &self.wanted {
            eoh.push(' ');
            if m.len() > 1 {
                eoh.push_str(&format!("{{{m}}}"));
            } else {
                eoh.push_str(m);
            }
        }
        vec![
            (
                MacroStage::Connect,
                "j {daemon_name} {client_addr} {client_name}".to_string(),
            ),
            (
                MacroStage::Mail,
                "i {auth_type} {auth_authen} {mail_addr}".to_string(),
            ),
            (MacroStage::Eoh, eoh.clone()),
            (MacroStage::Eom, eoh),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_lists_include_wanted_names_braced() {
        let m = MacroState::new(vec![
            "daemon_name".into(),
            "{auth_authen}".into(),
            "i".into(),
        ]);
        let reqs = m.requests();
        let eoh = &reqs.iter().find(|(s, _)| *s == MacroStage::Eoh).unwrap().1;
        assert_eq!(eoh, "i {daemon_name} {auth_authen} i");
    }

    #[test]
    fn macros_fill_the_typed_envelope() {
        let mut m = MacroState::new(vec!["{client_ptr}".into()]);
        m.set("i", "ABC123");
        m.set("j", "mx.example");
        m.set("{daemon_name}", "ORIGINATING");
        m.set("{auth_authen}", "alice");
        m.set("client_ptr", "host.example");
        let mut env = Envelope::default();
        m.fill(&mut env);
        assert_eq!(env.queue_id(), "ABC123");
        assert_eq!(env.mta_hostname.as_deref(), Some("mx.example"));
        assert_eq!(env.listener.as_deref(), Some("ORIGINATING"));
        assert_eq!(
            env.auth,
            Some(Authenticated {
                user: "alice".into(),
                mechanism: String::new()
            })
        );
        assert_eq!(env.attribute("client_ptr"), Some("host.example"));
    }

    /// Postfix's cleanup process sends its own `{daemon_name}` later: the SMTP server's stays.
    #[test]
    fn session_macros_keep_their_first_value() {
        let mut m = MacroState::default();
        m.set("{daemon_name}", "ORIGINATING");
        m.set("{daemon_name}", "cleanup");
        m.set("i", "Q1");
        m.set("i", "Q2");
        m.set("i", "");
        assert_eq!(m.get("daemon_name"), Some("ORIGINATING"));
        assert_eq!(m.get("i"), Some("Q2"));
    }

    #[test]
    fn no_auth_macros_means_unauthenticated() {
        let mut m = MacroState::default();
        m.set("{auth_type}", "");
        let mut env = Envelope::default();
        m.fill(&mut env);
        assert!(!env.is_authenticated());
    }
}
