//! `authmilter genkey`: opendkim-genkey's job on top of dkim-milter's key generator.
//!
//! RSA sizes: 2048 (default), 3072 and 4096. 1024-bit RSA is not generated on purpose: RFC 8301
//! calls 1024 the bare minimum, and dkim-milter signs with such keys only so that operators can
//! migrate keys they already publish (with a warning to rotate). A new key should not start there.

use dkim_policy::keygen::{self, KeyKind};
use std::path::{Path, PathBuf};

/// What to generate and where.
#[derive(Debug, Clone)]
pub struct GenkeyOptions {
    pub domain: String,
    pub selector: String,
    pub kind: KeyKind,
    /// The private key file; default `SELECTOR.private` in the current directory.
    pub out: Option<PathBuf>,
}

/// What was done: the file written and the text to show the operator.
#[derive(Debug, Clone)]
pub struct Generated {
    pub private_key: PathBuf,
    /// The `p=` value.
    pub public_b64: String,
    /// The TXT record's value (`v=DKIM1; k=...; p=...`), unsplit.
    pub txt_value: String,
    /// The record in zone-file form, split into strings of at most 255 bytes.
    pub zone_record: String,
    pub key_table_line: String,
    pub signing_table_line: String,
}

impl Generated {
    /// The human-readable output of the command.
    pub fn render(&self, opts: &GenkeyOptions) -> String {
        let what = match opts.kind {
            KeyKind::Rsa(bits) => format!("RSA {bits}"),
            KeyKind::Ed25519 => "Ed25519".to_string(),
        };
        format!(
            "wrote {} ({what}, PKCS#8 PEM, mode 0600)\n\n\
             # DNS record for the {domain} zone:\n{}\n\n\
             # KeyTable line (key_table = \"file:...\"):\n{}\n\n\
             # SigningTable line (signing_table = \"refile:...\"):\n{}\n",
            self.private_key.display(),
            self.zone_record,
            self.key_table_line,
            self.signing_table_line,
            domain = opts.domain,
        )
    }
}

/// Parses `rsa`, `ed25519` and a size into a key kind, refusing sizes we cannot use.
pub fn key_kind(kind: &str, bits: Option<usize>) -> Result<KeyKind, String> {
    match kind.to_ascii_lowercase().as_str() {
        "rsa" => match bits.unwrap_or(2048) {
            b @ (2048 | 3072 | 4096) => Ok(KeyKind::Rsa(b)),
            b if (1024..2048).contains(&b) => Err(format!(
                "RSA-{b} is not generated: new keys should have at least 2048 bits (dkim-milter \
                 still signs with existing 1024-bit keys, with a warning); use --bits 2048, 3072 or 4096"
            )),
            b => Err(format!(
                "unsupported RSA size {b}: use --bits 2048 (default), 3072 or 4096"
            )),
        },
        "ed25519" => match bits {
            None | Some(256) => Ok(KeyKind::Ed25519),
            Some(b) => Err(format!("Ed25519 keys have a fixed size; drop --bits {b}")),
        },
        other => Err(format!("unknown key type '{other}': use rsa or ed25519")),
    }
}

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Generates the key, writes the private key (mode 0600, never over an existing file) and returns
/// the record and table lines to publish.
pub fn genkey(opts: &GenkeyOptions) -> Result<Generated, String> {
    let domain = opts.domain.trim_end_matches('.').to_ascii_lowercase();
    if !valid_label(&domain) || !domain.contains('.') {
        return Err(format!("'{}' is not a domain name", opts.domain));
    }
    if !valid_label(&opts.selector) {
        return Err(format!("'{}' is not a valid selector", opts.selector));
    }
    let path = opts
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.private", opts.selector)));
    if path.exists() {
        return Err(format!(
            "{} exists; refusing to overwrite a key (remove it or choose --out)",
            path.display()
        ));
    }
    let key = keygen::generate(opts.kind)?;
    keygen::write_private(&path, &key.private_pem)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let path = absolute(&path);
    let key_name = format!("{}._domainkey.{domain}", opts.selector);
    Ok(Generated {
        key_table_line: format!("{key_name} {domain}:{}:{}", opts.selector, path.display()),
        signing_table_line: format!("*@{domain} {key_name}"),
        public_b64: key.public_b64.clone(),
        txt_value: key.txt_value(),
        zone_record: key.zone_record(&opts.selector, &domain),
        private_key: path,
    })
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(key_kind("rsa", None).unwrap(), KeyKind::Rsa(2048));
        assert_eq!(key_kind("RSA", Some(4096)).unwrap(), KeyKind::Rsa(4096));
        assert!(key_kind("rsa", Some(1024))
            .unwrap_err()
            .contains("at least 2048"));
        assert!(key_kind("rsa", Some(512)).is_err());
        assert_eq!(key_kind("ed25519", None).unwrap(), KeyKind::Ed25519);
        assert!(key_kind("dsa", None).is_err());
    }

    #[test]
    fn writes_key_and_lines() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let opts = GenkeyOptions {
            domain: "example.com".into(),
            selector: "ed".into(),
            kind: KeyKind::Ed25519,
            out: Some(dir.path().join("ed.private")),
        };
        let g = genkey(&opts).unwrap();
        let mode = std::fs::metadata(&g.private_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(g
            .key_table_line
            .starts_with("ed._domainkey.example.com example.com:ed:/"));
        assert_eq!(
            g.signing_table_line,
            "*@example.com ed._domainkey.example.com"
        );
        assert!(g
            .zone_record
            .starts_with("ed._domainkey.example.com. IN TXT"));
        assert!(genkey(&opts).unwrap_err().contains("refusing to overwrite"));
        assert!(g.render(&opts).contains("Ed25519"));
    }
}
