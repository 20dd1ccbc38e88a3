//! Key generation: what opendkim-genkey does, shared by the `genkey` tool and by
//! `create_missing_keys` (so the shipped example config runs on a fresh machine).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair;
use base64::Engine;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Which key to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa(usize),
    Ed25519,
}

/// A fresh key: PKCS#8 PEM private key and the DKIM `p=` value.
pub struct GeneratedKey {
    pub kind: KeyKind,
    pub private_pem: String,
    /// RSA: SubjectPublicKeyInfo DER, base64 (what opendkim-genkey publishes);
    /// Ed25519: the raw 32-byte key, base64 (RFC 8463).
    pub public_b64: String,
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// PEM armour with 64-column lines.
pub fn pem(label: &str, der: &[u8]) -> String {
    let text = b64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in text.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Generates a key. RSA sizes from 2048 to 4096 bits (the crypto library refuses smaller keys).
pub fn generate(kind: KeyKind) -> Result<GeneratedKey, String> {
    match kind {
        KeyKind::Rsa(bits) => {
            let size = match bits {
                2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
                3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
                4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
                other => {
                    return Err(format!(
                        "unsupported RSA size {other}: use 2048, 3072 or 4096"
                    ))
                }
            };
            let pair = aws_lc_rs::rsa::KeyPair::generate(size)
                .map_err(|e| format!("RSA key generation failed: {e}"))?;
            let private = pair
                .as_der()
                .map_err(|e| format!("cannot encode key: {e}"))?;
            let public = pair
                .public_key()
                .as_der()
                .map_err(|e| format!("cannot encode public key: {e}"))?;
            Ok(GeneratedKey {
                kind,
                private_pem: pem("PRIVATE KEY", private.as_ref()),
                public_b64: b64(public.as_ref()),
            })
        }
        KeyKind::Ed25519 => {
            let pair = aws_lc_rs::signature::Ed25519KeyPair::generate()
                .map_err(|e| format!("Ed25519 key generation failed: {e}"))?;
            let private: aws_lc_rs::encoding::Pkcs8V2Der = pair
                .as_der()
                .map_err(|e| format!("cannot encode key: {e}"))?;
            Ok(GeneratedKey {
                kind,
                private_pem: pem("PRIVATE KEY", private.as_ref()),
                public_b64: b64(pair.public_key().as_ref()),
            })
        }
    }
}

impl GeneratedKey {
    /// The TXT record's content: `v=DKIM1; k=rsa; p=...`.
    pub fn txt_value(&self) -> String {
        let k = match self.kind {
            KeyKind::Rsa(_) => "rsa",
            KeyKind::Ed25519 => "ed25519",
        };
        format!("v=DKIM1; k={k}; p={}", self.public_b64)
    }

    /// The record in zone-file form, the value split into strings of at most 255 bytes.
    pub fn zone_record(&self, selector: &str, domain: &str) -> String {
        let value = self.txt_value();
        let parts: Vec<String> = value
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        format!(
            "{selector}._domainkey.{domain}. IN TXT ( {} )",
            parts.join(" ")
        )
    }
}

/// Writes `data` to a new file with mode 0600 (never readable by others, even briefly).
pub fn write_private(path: &Path, data: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data.as_bytes())?;
    f.sync_all()
}

/// Creates an RSA-2048 key at `path` and logs the DNS record to publish.
pub fn create_key_file(path: &Path, domain: &str, selector: &str) -> Result<(), String> {
    let key = generate(KeyKind::Rsa(2048))?;
    write_private(path, &key.private_pem).map_err(|e| e.to_string())?;
    // Logging may not be set up yet when the configuration is loaded: say it on stderr too.
    let note = format!(
        "created a new signing key {}; publish this DNS record before relying on it:\n{}",
        path.display(),
        key.zone_record(selector, domain)
    );
    eprintln!("dkim-milter: {note}");
    tracing::warn!("{note}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_back() {
        for kind in [KeyKind::Ed25519, KeyKind::Rsa(2048)] {
            let k = generate(kind).unwrap();
            let loaded = crate::keys::parse_key(k.private_pem.as_bytes()).unwrap();
            assert_eq!(loaded.is_ed25519(), kind == KeyKind::Ed25519);
            assert!(k.txt_value().starts_with("v=DKIM1; k="));
        }
    }

    #[test]
    fn zone_record_strings_are_short() {
        let k = generate(KeyKind::Rsa(2048)).unwrap();
        let rec = k.zone_record("sel", "example.com");
        assert!(rec.starts_with("sel._domainkey.example.com. IN TXT ( \""));
        for s in rec.split('"').skip(1).step_by(2) {
            assert!(s.len() <= 255);
        }
    }

    #[test]
    fn private_file_is_0600_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/k.pem");
        write_private(&p, "x").unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(write_private(&p, "y").is_err());
    }
}
