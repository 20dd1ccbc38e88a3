//! Milter macros, the protocol's way of telling a filter about the SMTP session, mapped onto
//! the typed [`Envelope`] here and nowhere else: `i` is the queue id, `j` the MTA's host name,
//! `{daemon_name}` its listener, `{auth_type}`/`{auth_authen}` SMTP AUTH, `{client_addr}` the
//! client when the socket does not say. Names the operator's rules ask for (MacroList) land in
//! [`Envelope::attributes`].

use chassis::envelope::{Authenticated, Envelope};
use indymilter::MacroStage;
use std::ffi::CString;

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

/// The macros anything here reads (besides the policy's attributes): the queue id, the MTA's
/// name, the listener, SMTP AUTH and the client address.
const READ_MACROS: &[&str] = &[
    "i",
    "j",
    "daemon_name",
    "client_addr",
    "auth_type",
    "auth_authen",
];

/// A macro name without braces: `{auth_type}` and `auth_type` are the same macro.
fn bare(name: &str) -> &str {
    name.trim_start_matches('{').trim_end_matches('}')
}

/// Records one macro value: session macros keep their first non-empty value, others the
/// newest non-empty one.
fn set_value(values: &mut Vec<(String, String)>, name: &str, value: &str) {
    let name = bare(name);
    match values.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => {
            let keep = value.is_empty() || (!v.is_empty() && SESSION_MACROS.contains(&name));
            if !keep && v != value {
                *v = value.to_string();
            }
        }
        None => values.push((name.to_string(), value.to_string())),
    }
}

/// The lookups of [`READ_MACROS`], built once for every connection.
fn read_lookups() -> &'static [Lookup] {
    static READ: std::sync::OnceLock<Vec<Lookup>> = std::sync::OnceLock::new();
    READ.get_or_init(|| READ_MACROS.iter().filter_map(|n| Lookup::new(n)).collect())
}

/// One macro we read: its bare name, and the form(s) to look it up by in what the MTA sent
/// (`{daemon_name}` as MTAs send it, and `daemon_name`; indymilter answers `i` for `{i}`).
#[derive(Debug)]
struct Lookup {
    name: String,
    forms: Vec<CString>,
}

impl Lookup {
    fn new(name: &str) -> Option<Lookup> {
        let name = bare(name);
        let mut forms = Vec::new();
        if name.len() > 1 {
            forms.push(CString::new(format!("{{{name}}}")).ok()?);
        }
        forms.push(CString::new(name).ok()?);
        Some(Lookup {
            name: name.to_string(),
            forms,
        })
    }
}

/// The macros read on one connection (the fixed ones and the names the policy wants as
/// attributes), with their values so far. Only those are looked up at each stage: copying
/// every macro of every stage, as a map, at each of a message's six stages cost more
/// allocations than the rest of the milter glue.
#[derive(Debug)]
pub struct MacroState {
    /// The policy's attribute names not among [`READ_MACROS`] (whose lookups are built once,
    /// in [`read_lookups`]).
    lookups: Vec<Lookup>,
    /// Values by bare name; a handful, so a list.
    values: Vec<(String, String)>,
    wanted: Vec<String>,
}

impl Default for MacroState {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl MacroState {
    pub fn new(wanted: Vec<String>) -> Self {
        let wanted: Vec<String> = wanted.iter().map(|w| bare(w).to_string()).collect();
        let mut lookups: Vec<Lookup> = Vec::new();
        for name in &wanted {
            if !READ_MACROS.contains(&name.as_str()) && lookups.iter().all(|l| l.name != *name) {
                lookups.extend(Lookup::new(name));
            }
        }
        Self {
            lookups,
            values: Vec::new(),
            wanted,
        }
    }

    /// Takes in the macros the MTA has sent so far (indymilter answers each name from the
    /// latest stage that defined it): session macros keep their first non-empty value, others
    /// the newest non-empty one.
    pub fn merge(&mut self, macros: &indymilter::Macros) {
        for l in read_lookups().iter().chain(&self.lookups) {
            if let Some(v) = l.forms.iter().find_map(|f| macros.get(f)) {
                set_value(&mut self.values, &l.name, &v.to_string_lossy());
            }
        }
    }

    /// One value by hand (the tests' way in; the MTA's values come through [`Self::merge`]).
    #[cfg(test)]
    fn set(&mut self, name: &str, value: &str) {
        set_value(&mut self.values, name, value);
    }

    /// A macro's non-empty value.
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = bare(name);
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Writes what the macros say into the typed envelope (allocating only what changed).
    pub fn fill(&self, env: &mut Envelope) {
        fn update(slot: &mut Option<String>, value: Option<&str>) {
            if let Some(v) = value {
                if slot.as_deref() != Some(v) {
                    *slot = Some(v.to_string());
                }
            }
        }
        update(&mut env.queue_id, self.get("i"));
        update(&mut env.mta_hostname, self.get("j"));
        update(&mut env.listener, self.get("daemon_name"));
        let (mechanism, user) = (self.get("auth_type"), self.get("auth_authen"));
        if mechanism.is_some() || user.is_some() {
            let (mechanism, user) = (mechanism.unwrap_or_default(), user.unwrap_or_default());
            let same = env
                .auth
                .as_ref()
                .is_some_and(|a| a.user == user && a.mechanism == mechanism);
            if !same {
                env.auth = Some(Authenticated {
                    user: user.to_string(),
                    mechanism: mechanism.to_string(),
                });
            }
        }
        for w in &self.wanted {
            if let Some(v) = self.get(w) {
                if env.attributes.get(w).map(String::as_str) != Some(v) {
                    env.attributes.insert(w.clone(), v.to_string());
                }
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

    /// What is looked up in the MTA's macros: the names read here and the wanted ones, once
    /// each, multi-letter names braced as MTAs send them and bare.
    #[test]
    fn lookups_cover_read_and_wanted_names_once() {
        let m = MacroState::new(vec!["{client_ptr}".into(), "i".into(), "client_ptr".into()]);
        let names: Vec<&str> = read_lookups()
            .iter()
            .chain(&m.lookups)
            .map(|l| l.name.as_str())
            .collect();
        // The wanted `i` is one of the names always read; `client_ptr`, wanted twice, once.
        let expected: Vec<&str> = READ_MACROS.iter().copied().chain(["client_ptr"]).collect();
        assert_eq!(names, expected);
        assert!(expected.contains(&"i") && expected.contains(&"auth_authen"));
        let forms = |name: &str| -> Vec<String> {
            read_lookups()
                .iter()
                .chain(&m.lookups)
                .find(|l| l.name == name)
                .map(|l| {
                    l.forms
                        .iter()
                        .map(|f| f.to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(forms("daemon_name"), ["{daemon_name}", "daemon_name"]);
        assert_eq!(forms("client_ptr"), ["{client_ptr}", "client_ptr"]);
        assert_eq!(forms("i"), ["i"]);
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
