//! The plain-data answer of a policy for one message: header edits and a final action.
//! Front ends translate it into protocol actions; policies never touch the protocol.

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

/// One header change. Values are written as they should appear after `Name:` *without* the
/// conventional leading space, folds as `\n\t` (the MTA adds the CR); the front end deals with
/// the leading-space convention it negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Insert at `index`, counted as the MTA does (0 = above the MTA's own Received header).
    Insert {
        index: u32,
        name: String,
        value: String,
    },
    /// Delete the `occurrence`-th (1-based) header called `name`, counted among the headers the
    /// filter saw. Several deletions of one name must be listed in descending order.
    Delete { name: String, occurrence: u32 },
}

/// What the policy decided for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub edits: Vec<HeaderEdit>,
    pub action: Action,
}

impl Verdict {
    pub fn accept() -> Self {
        Self {
            edits: Vec::new(),
            action: Action::Accept,
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
