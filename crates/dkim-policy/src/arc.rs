//! `[arc]`: ARC chain verification (on by default: an `arc=` result in our
//! Authentication-Results when the message carries ARC fields) and sealing, off unless a
//! `[[arc.seal]]` entry names the sealing domain, its selector and key, and whose mail it
//! seals.

use crate::keys::{self, SharedKey};
use chassis::address::mailboxes;
use chassis::envelope::Envelope;
use chassis::mailauth::dkim::Canonicalization;
use chassis::message::HeaderField;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `[arc]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawArc {
    pub verify: bool,
    pub seal: Vec<RawSeal>,
}

impl Default for RawArc {
    fn default() -> Self {
        Self {
            verify: true,
            seal: Vec::new(),
        }
    }
}

/// `[[arc.seal]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSeal {
    pub domain: String,
    pub selector: String,
    pub key_file: PathBuf,
    /// Domains (and their subdomains) of MAIL FROM or From whose mail this entry seals; `*`
    /// for every message. Default: the sealing domain itself.
    #[serde(default)]
    pub senders: Option<Vec<String>>,
    /// The ARC-Message-Signature body canonicalization: `relaxed` (default) or `simple`.
    #[serde(default)]
    pub body_canonicalization: Option<String>,
}

/// One sealing domain.
#[derive(Debug, Clone)]
pub struct SealRule {
    pub domain: String,
    pub selector: String,
    pub key: SharedKey,
    /// Where the key was read from (for `authmilter testkey`).
    pub key_file: PathBuf,
    /// Lower case, without a leading dot; `*` matches everything.
    pub senders: Vec<String>,
    pub body_canon: Canonicalization,
}

/// The validated `[arc]` settings.
#[derive(Debug, Clone)]
pub struct ArcSettings {
    pub verify: bool,
    pub seal: Vec<SealRule>,
}

impl Default for ArcSettings {
    fn default() -> Self {
        Self {
            verify: true,
            seal: Vec::new(),
        }
    }
}

fn under(domain: &str, pattern: &str) -> bool {
    pattern == "*"
        || domain == pattern
        || domain
            .strip_suffix(pattern)
            .is_some_and(|rest| rest.ends_with('.'))
}

impl SealRule {
    /// Does this entry seal mail with this MAIL FROM domain or author domain?
    pub fn matches(&self, mail_from_domain: &str, author_domain: Option<&str>) -> bool {
        self.senders
            .iter()
            .any(|p| under(mail_from_domain, p) || author_domain.is_some_and(|a| under(a, p)))
    }
}

impl ArcSettings {
    /// Builds the typed settings; `rel` resolves key paths against the configuration file.
    /// Errors are for the `arc` key.
    pub fn from_raw(
        raw: RawArc,
        require_safe_keys: bool,
        minimum_bits: usize,
        rel: impl Fn(&Path) -> PathBuf,
    ) -> Result<ArcSettings, String> {
        let mut seal = Vec::new();
        for (n, s) in raw.seal.into_iter().enumerate() {
            let which = format!("arc.seal entry {}", n + 1);
            let domain = s.domain.trim().trim_end_matches('.').to_ascii_lowercase();
            if domain.is_empty() || s.selector.trim().is_empty() {
                return Err(format!("{which}: domain and selector must not be empty"));
            }
            let path = rel(&s.key_file);
            let key = keys::load_key_file(&path, require_safe_keys)
                .map_err(|e| format!("{which}: {e}"))?;
            keys::check_signing_size(&key, &format!("{which} ({})", path.display()), minimum_bits)
                .map_err(|e| format!("{which}: {e}"))?;
            let senders = s
                .senders
                .unwrap_or_else(|| vec![domain.clone()])
                .into_iter()
                .map(|p| {
                    p.trim()
                        .trim_start_matches('.')
                        .trim_end_matches('.')
                        .to_ascii_lowercase()
                })
                .filter(|p| !p.is_empty())
                .collect();
            let body_canon = match s
                .body_canonicalization
                .as_deref()
                .map(|c| c.trim().to_ascii_lowercase())
                .as_deref()
            {
                None | Some("relaxed") => Canonicalization::Relaxed,
                Some("simple") => Canonicalization::Simple,
                Some(other) => {
                    return Err(format!(
                        "{which}: body_canonicalization '{other}': expected relaxed or simple"
                    ))
                }
            };
            seal.push(SealRule {
                domain,
                selector: s.selector.trim().to_string(),
                key,
                key_file: path,
                senders,
                body_canon,
            });
        }
        Ok(ArcSettings {
            verify: raw.verify,
            seal,
        })
    }

    /// The entry that seals this message, if any: the first whose senders match its MAIL
    /// FROM domain or its (first) author domain.
    pub fn rule_for(&self, env: &Envelope, headers: &[HeaderField]) -> Option<&SealRule> {
        if self.seal.is_empty() {
            return None;
        }
        let mail_from = env
            .mail_from
            .rsplit_once('@')
            .map(|(_, d)| {
                d.trim_end_matches('>')
                    .trim_end_matches('.')
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let author = headers
            .iter()
            .find(|h| h.name_is("From"))
            .and_then(|h| mailboxes(&h.value_str()).into_iter().next())
            .map(|m| m.domain.to_ascii_lowercase());
        self.seal
            .iter()
            .find(|r| r.matches(&mail_from, author.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_patterns_cover_subdomains_only_at_a_dot() {
        assert!(under("lists.example.org", "lists.example.org"));
        assert!(under("a.lists.example.org", "lists.example.org"));
        assert!(!under("badlists.example.org", "lists.example.org"));
        assert!(under("anything.example", "*"));
        assert!(!under("example.org", "lists.example.org"));
    }
}
