//! Forged Authentication-Results: every incoming header that claims to come from one of our
//! authserv-ids is removed before we add our own, on every path, by both daemons. The policy
//! says *which ids* ([`HeaderEdit::RemoveAuthResults`]); the front end turns that into its
//! protocol's deletions with [`forged_occurrences`], from the message's header scan, which
//! sees every field even past the storage cap.

use crate::authres::id_key;
use crate::envelope::Envelope;
use crate::message::{Message, SeenAuthResults};
use crate::verdict::{Action, HeaderEdit, SmtpReply, Verdict};

/// The 1-based occurrences (among Authentication-Results fields) claiming one of `ids`,
/// highest first, so deleting them one by one is right whether or not the MTA renumbers after
/// each deletion (CVE-2022-48521).
pub fn forged_occurrences(seen: &[SeenAuthResults], ids: &[String]) -> Vec<u32> {
    let ours: Vec<String> = ids
        .iter()
        .map(|i| id_key(i))
        .filter(|i| !i.is_empty())
        .collect();
    let mut found: Vec<u32> = seen
        .iter()
        .filter(|s| s.authserv_id.as_ref().is_some_and(|id| ours.contains(id)))
        .map(|s| s.occurrence)
        .collect();
    found.reverse();
    found
}

/// The edit removing every incoming A-R that claims `id`, and how many there are (for the log
/// line); `None` when there is none.
pub fn forged_removal(msg: &Message, id: &str) -> Option<(HeaderEdit, usize)> {
    let ids = vec![id.to_string()];
    let n = forged_occurrences(msg.auth_results_seen(), &ids).len();
    (n > 0).then_some((HeaderEdit::RemoveAuthResults { authserv_ids: ids }, n))
}

/// The first step of every evaluation: the edit removing forged results claiming `id` (logged
/// in OpenDKIM's words), or, when the header scan itself overflowed, the tempfail verdict (an
/// author or a forgery could hide in what was not seen, so only "try again" is safe). `id` is
/// `None` when headers with our id are a trusted upstream's, not forgeries.
pub fn screen(msg: &Message, id: Option<&str>, qid: &str) -> Result<Vec<HeaderEdit>, Box<Verdict>> {
    let mut edits = Vec::new();
    if let Some(id) = id {
        if let Some((edit, n)) = forged_removal(msg, id) {
            tracing::info!(
                "{qid}: removed {n} Authentication-Results header(s) claiming to be from {id}"
            );
            edits.push(edit);
        }
    }
    if msg.scan.overflowed {
        tracing::warn!("{qid}: too much header data to inspect; temporarily failing");
        return Err(Box::new(Verdict::new(
            edits,
            Action::Tempfail(SmtpReply::new("451", "4.7.0", "resource unavailable")),
        )));
    }
    Ok(edits)
}

/// The authserv-id to write: configured, else the MTA's own host name, else this host's name
/// (OpenDKIM's and OpenDMARC's order).
pub fn authserv_id(configured: Option<&str>, env: &Envelope, hostname: &str) -> String {
    configured
        .map(str::to_string)
        .or_else(|| env.mta_hostname.clone().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| hostname.to_string())
}

/// This host's name, for the authserv-id fallback.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ours_highest_first() {
        let raw = b"Authentication-Results: mx.example; dkim=pass\r\nAuthentication-Results: other; spf=pass\r\n\
                    Authentication-Results: MX.EXAMPLE/Q1; dmarc=pass\r\nFrom: a@b.example\r\n\r\n";
        let msg = Message::from_raw(raw).unwrap();
        assert_eq!(
            forged_occurrences(msg.auth_results_seen(), &["mx.example.".to_string()]),
            vec![3, 1]
        );
        let (edit, n) = forged_removal(&msg, "mx.example").unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            edit,
            HeaderEdit::RemoveAuthResults {
                authserv_ids: vec!["mx.example".into()]
            }
        );
        assert!(forged_removal(&msg, "nobody.example").is_none());
    }

    #[test]
    fn authserv_id_order() {
        let mut env = Envelope::default();
        assert_eq!(authserv_id(None, &env, "host"), "host");
        env.mta_hostname = Some("mx.j.example".into());
        assert_eq!(authserv_id(None, &env, "host"), "mx.j.example");
        assert_eq!(
            authserv_id(Some("conf.example"), &env, "host"),
            "conf.example"
        );
    }
}
