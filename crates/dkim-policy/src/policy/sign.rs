//! Signing: one DKIM-Signature per SigningTable match, over the message exactly as it will be
//! delivered, with OpenDKIM's header choice (the configured list as present in the message,
//! plus each oversigned header once more so nobody can add another one later).

use crate::config::Config;
use crate::tables::SigningMatch;
use chassis::address::Mailbox;
use chassis::mailauth::common::HeaderWriter;
use chassis::mailauth::dkim::DkimSigner;
use chassis::message::HeaderField;

/// A signature ready to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeader {
    pub domain: String,
    pub selector: String,
    /// The header value, without the leading space, folds as `\n\t`.
    pub value: String,
}

/// The `h=` list to ask the signer for.
pub fn header_list(cfg: &Config, headers: &[HeaderField]) -> Vec<String> {
    let mut list: Vec<String> = Vec::new();
    for name in &cfg.sign_headers {
        let present = headers.iter().any(|h| h.name_is(name));
        if present && !list.iter().any(|l| l.eq_ignore_ascii_case(name)) {
            list.push(name.clone());
        }
    }
    // The signer signs every occurrence of a listed name; a second listing finds nothing left
    // and is written into h= as an absent field, which is exactly oversigning.
    for name in &cfg.oversign_headers {
        list.push(name.clone());
    }
    list
}

/// Signs `raw` once per match. Errors say which key failed and why.
pub fn sign(
    cfg: &Config,
    raw: &[u8],
    headers: &[HeaderField],
    sender: &Mailbox,
    matches: &[SigningMatch],
) -> Result<Vec<SignedHeader>, String> {
    let list = header_list(cfg, headers);
    let mut out = Vec::new();
    for m in matches {
        let (entry, key) = cfg.resolve_key(&m.key_name, &sender.domain)?;
        let mut signer = DkimSigner::from_key(key)
            .domain(entry.domain.clone())
            .selector(entry.selector.clone())
            .headers(list.iter().cloned())
            .header_canonicalization(cfg.header_canon)
            .body_canonicalization(cfg.body_canon);
        if cfg.signature_ttl > 0 {
            signer = signer.expiration(cfg.signature_ttl);
        }
        if let Some(identity) = &m.signer {
            let id = if identity.contains('@') {
                identity.clone()
            } else {
                format!("@{identity}")
            };
            // i= must be the signing domain or a subdomain of it; OpenDKIM drops it otherwise.
            let id_domain = id.rsplit('@').next().unwrap_or("").to_ascii_lowercase();
            if id_domain == entry.domain || id_domain.ends_with(&format!(".{}", entry.domain)) {
                signer = signer.agent_user_identifier(id);
            }
        }
        let sig = signer.sign(raw).map_err(|e| {
            format!(
                "signing with key '{}' (s={}, d={}) failed: {e}",
                m.key_name, entry.selector, entry.domain
            )
        })?;
        let header = sig.to_header();
        let value = header
            .strip_prefix("DKIM-Signature:")
            .unwrap_or(&header)
            .trim_start_matches(' ')
            .trim_end_matches(['\r', '\n'])
            .replace("\r\n", "\n");
        out.push(SignedHeader {
            domain: entry.domain,
            selector: entry.selector,
            value,
        });
    }
    Ok(out)
}
