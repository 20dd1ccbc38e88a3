//! The plain-data answer of a policy for one message: header edits and a final action.
//! Front ends translate it into protocol actions; policies never touch the protocol.

use crate::authres::AuthResults;
use serde::Deserialize;
use std::fmt;

/// What to do with a message, as configured by the operator (OpenDKIM's On-* values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Accept,
    Reject,
    Tempfail,
    Discard,
    Quarantine,
}

impl ActionKind {
    /// Parses OpenDKIM's spellings: the full word or its first letter, any case.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "accept" | "a" => Some(Self::Accept),
            "reject" | "r" => Some(Self::Reject),
            "tempfail" | "t" => Some(Self::Tempfail),
            "discard" | "d" => Some(Self::Discard),
            "quarantine" | "q" => Some(Self::Quarantine),
            _ => None,
        }
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Accept => "accept",
            Self::Reject => "reject",
            Self::Tempfail => "tempfail",
            Self::Discard => "discard",
            Self::Quarantine => "quarantine",
        })
    }
}

/// An SMTP reply for reject and tempfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: String,
    pub xcode: String,
    pub text: String,
}

impl SmtpReply {
    pub fn new(code: &str, xcode: &str, text: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            xcode: xcode.into(),
            text: text.into(),
        }
    }
}

impl fmt::Display for SmtpReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.xcode, self.text)
    }
}

/// The final disposition handed to the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Deliver (with whatever header edits the verdict carries).
    Accept,
    Reject(SmtpReply),
    Tempfail(SmtpReply),
    Discard,
    /// Deliver into the MTA's hold queue, with a reason.
    Quarantine(String),
}

impl Action {
    /// Builds an action of `kind`, with the reply text used for reject and tempfail.
    pub fn from_kind(kind: ActionKind, reject: SmtpReply, tempfail: SmtpReply, why: &str) -> Self {
        match kind {
            ActionKind::Accept => Action::Accept,
            ActionKind::Reject => Action::Reject(reject),
            ActionKind::Tempfail => Action::Tempfail(tempfail),
            ActionKind::Discard => Action::Discard,
            ActionKind::Quarantine => Action::Quarantine(why.to_string()),
        }
    }
}

/// One header change, in a form every front end can apply. Values are written as they should
/// appear after `Name:` *without* the conventional leading space, folds as `\n\t` (the front
/// end adds the CR and deals with the leading-space convention of its protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Add a field above every field of the message, and above fields prepended before it.
    Prepend { name: String, value: String },
    /// Remove every incoming Authentication-Results field that claims one of these
    /// authserv-ids: all of them, including any past the header storage cap (the front end
    /// finds them in [`Message::auth_results_seen`](crate::message::Message)).
    RemoveAuthResults { authserv_ids: Vec<String> },
}

/// What the policy decided for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Applied in order, before [`results`](Self::results) is written.
    pub edits: Vec<HeaderEdit>,
    /// Our Authentication-Results, as data: the front end writes it as the topmost field and
    /// metrics count its results without parsing header text.
    pub results: Option<AuthResults>,
    pub action: Action,
}

impl Verdict {
    pub fn accept() -> Self {
        Self::new(Vec::new(), Action::Accept)
    }

    /// A verdict with no Authentication-Results of ours.
    pub fn new(edits: Vec<HeaderEdit>, action: Action) -> Self {
        Self {
            edits,
            results: None,
            action,
        }
    }

    /// The 1-based occurrences of the message's Authentication-Results fields the verdict's
    /// `RemoveAuthResults` edits remove, given the fields `seen` (every one, past the cap too).
    pub fn removed_auth_results(&self, seen: &[crate::message::SeenAuthResults]) -> Vec<u32> {
        self.edits
            .iter()
            .flat_map(|e| match e {
                HeaderEdit::RemoveAuthResults { authserv_ids } => {
                    crate::forged::forged_occurrences(seen, authserv_ids)
                }
                HeaderEdit::Prepend { .. } => Vec::new(),
            })
            .collect()
    }

    /// The fields to add, in the order a front end inserts each one at the top (so the last
    /// ends up first): the `Prepend` edits, then our Authentication-Results.
    pub fn new_fields(&self) -> Vec<(String, String)> {
        let mut fields: Vec<(String, String)> = self
            .edits
            .iter()
            .filter_map(|e| match e {
                HeaderEdit::Prepend { name, value } => Some((name.clone(), value.clone())),
                HeaderEdit::RemoveAuthResults { .. } => None,
            })
            .collect();
        if let Some(ar) = &self.results {
            fields.push(("Authentication-Results".into(), ar.to_value()));
        }
        fields
    }

    /// The action's word for logs and metrics.
    pub fn action_word(&self) -> &'static str {
        self.action.word()
    }
}

impl Action {
    /// `accept`, `reject`, `tempfail`, `discard` or `quarantine`.
    pub fn word(&self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Reject(_) => "reject",
            Action::Tempfail(_) => "tempfail",
            Action::Discard => "discard",
            Action::Quarantine(_) => "quarantine",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_words_and_letters() {
        assert_eq!(ActionKind::parse("Tempfail"), Some(ActionKind::Tempfail));
        assert_eq!(ActionKind::parse("q"), Some(ActionKind::Quarantine));
        assert_eq!(ActionKind::parse("bounce"), None);
    }

    #[test]
    fn reply_renders_as_smtp_line() {
        assert_eq!(
            SmtpReply::new("451", "4.7.5", "try later").to_string(),
            "451 4.7.5 try later"
        );
    }
}
