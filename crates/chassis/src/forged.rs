//! Forged Authentication-Results: every incoming header that claims to come from one of our
//! authserv-ids is deleted before we add our own, on every path, by both daemons.

use crate::authres::forged_indexes;
use crate::envelope::Envelope;
use crate::message::Message;
use crate::verdict::HeaderEdit;

/// Deletions for every incoming A-R claiming to be one of `ids`, highest occurrence first (so
/// they are right whether or not the MTA renumbers after each deletion; CVE-2022-48521).
pub fn forged_deletions(msg: &Message, ids: &[String]) -> Vec<HeaderEdit> {
    let pairs: Vec<(&[u8], &[u8])> = msg
        .headers
        .iter()
        .map(|h| (h.name.as_slice(), h.value.as_slice()))
        .collect();
    forged_indexes(&pairs, ids)
        .into_iter()
        .map(|occurrence| HeaderEdit::Delete {
            name: "Authentication-Results".into(),
            occurrence,
        })
        .collect()
}

/// The authserv-id to write: configured, else the MTA's `j` macro, else this host's name
/// (OpenDKIM's and OpenDMARC's order).
pub fn authserv_id(configured: Option<&str>, env: &Envelope, hostname: &str) -> String {
    configured
        .map(str::to_string)
        .or_else(|| env.macro_value("j").map(str::to_string))
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
    fn deletes_ours_highest_first() {
        let raw = b"Authentication-Results: mx.example; dkim=pass\r\nAuthentication-Results: other; spf=pass\r\n\
                    Authentication-Results: MX.EXAMPLE/Q1; dmarc=pass\r\nFrom: a@b.example\r\n\r\n";
        let msg = Message::from_raw(raw).unwrap();
        let edits = forged_deletions(&msg, &["mx.example".to_string()]);
        assert_eq!(
            edits,
            vec![
                HeaderEdit::Delete {
                    name: "Authentication-Results".into(),
                    occurrence: 3
                },
                HeaderEdit::Delete {
                    name: "Authentication-Results".into(),
                    occurrence: 1
                },
            ]
        );
    }

    #[test]
    fn authserv_id_order() {
        let mut env = Envelope::default();
        assert_eq!(authserv_id(None, &env, "host"), "host");
        env.set_macro("j", "mx.j.example");
        assert_eq!(authserv_id(None, &env, "host"), "mx.j.example");
        assert_eq!(
            authserv_id(Some("conf.example"), &env, "host"),
            "conf.example"
        );
    }
}
