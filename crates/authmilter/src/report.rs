//! Findings: what every check reports, with a status, a one-line detail and one line of advice.

use serde::Serialize;
use std::fmt::Write as _;

/// How bad a finding is. Ordered: `Ok < Warn < Fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }

    /// The process exit status for a worst finding: 0 OK, 1 WARN, 2 FAIL.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        }
    }
}

/// One result of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable identifier of the check, e.g. `spf.lookups` (what scripts and tests match on).
    pub check: String,
    /// The DNS name or address the finding is about.
    pub subject: String,
    pub status: Status,
    /// What was found, one line.
    pub detail: String,
    /// What to do about it, one line (absent when there is nothing to do).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

impl Finding {
    pub fn ok(check: &str, subject: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            subject: subject.into(),
            status: Status::Ok,
            detail: detail.into(),
            advice: None,
        }
    }

    pub fn warn(
        check: &str,
        subject: impl Into<String>,
        detail: impl Into<String>,
        advice: impl Into<String>,
    ) -> Finding {
        Finding {
            check: check.into(),
            subject: subject.into(),
            status: Status::Warn,
            detail: detail.into(),
            advice: Some(advice.into()),
        }
    }

    pub fn fail(
        check: &str,
        subject: impl Into<String>,
        detail: impl Into<String>,
        advice: impl Into<String>,
    ) -> Finding {
        Finding {
            check: check.into(),
            subject: subject.into(),
            status: Status::Fail,
            detail: detail.into(),
            advice: Some(advice.into()),
        }
    }
}

/// A list of findings about one thing (a domain, a set of keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `audit` or `testkey`.
    pub command: String,
    /// The audited domain, or the key set's description.
    pub target: String,
    /// The worst status of all findings (OK when there are none).
    pub worst: Status,
    /// The exit status the command returns for this report.
    pub exit: u8,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn new(command: &str, target: &str, findings: Vec<Finding>) -> Report {
        let worst = findings
            .iter()
            .map(|f| f.status)
            .max()
            .unwrap_or(Status::Ok);
        Report {
            command: command.into(),
            target: target.into(),
            worst,
            exit: worst.exit_code(),
            findings,
        }
    }

    /// Findings of one check, in report order.
    pub fn of<'a>(&'a self, check: &'a str) -> impl Iterator<Item = &'a Finding> + 'a {
        self.findings.iter().filter(move |f| f.check == check)
    }

    /// The human-readable form: one line per finding, advice indented under it.
    pub fn human(&self) -> String {
        let mut out = format!("{} {}\n", self.command, self.target);
        let width = self
            .findings
            .iter()
            .map(|f| f.check.len())
            .max()
            .unwrap_or(0);
        for f in &self.findings {
            let _ = writeln!(
                out,
                "{:<4}  {:<width$}  {}: {}",
                f.status.as_str(),
                f.check,
                f.subject,
                f.detail
            );
            if let Some(a) = &f.advice {
                let _ = writeln!(out, "      {:<width$}  -> {a}", "");
            }
        }
        let counts = |s: Status| self.findings.iter().filter(|f| f.status == s).count();
        let _ = writeln!(
            out,
            "result: {} ({} OK, {} WARN, {} FAIL; exit {})",
            self.worst.as_str(),
            counts(Status::Ok),
            counts(Status::Warn),
            counts(Status::Fail),
            self.exit
        );
        out
    }

    /// The machine-readable form (`--json`).
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_and_exit() {
        let r = Report::new("audit", "x", vec![]);
        assert_eq!((r.worst, r.exit), (Status::Ok, 0));
        let r = Report::new(
            "audit",
            "x",
            vec![
                Finding::ok("a", "x", "fine"),
                Finding::warn("b", "x", "meh", "fix"),
            ],
        );
        assert_eq!((r.worst, r.exit), (Status::Warn, 1));
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["findings"][1]["status"], "WARN");
        assert_eq!(v["findings"][1]["advice"], "fix");
        assert!(v["findings"][0].get("advice").is_none());
        assert!(r.human().contains("result: WARN"));
    }
}
