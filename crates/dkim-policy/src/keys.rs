//! Private signing keys: PEM (PKCS#1 or PKCS#8) or bare base64 DER, RSA or Ed25519. The algorithm
//! comes from the key itself, so no global SignatureAlgorithm setting is needed.

use crate::smallrsa::SmallRsaKey;
use base64::Engine;
use chassis::mailauth::common::Writable;
use chassis::mailauth::crypto::{Algorithm, DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use rustls_pki_types::{pem::PemObject, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

/// The smallest RSA key anybody may sign with (RFC 8301 §3.2); `minimum_signing_key_bits` may
/// raise it, never lower it.
pub const RSA_FLOOR_BITS: usize = 1024;

/// Current practice for RSA signing keys: smaller keys (down to the floor) still sign, with a
/// warning that names the key and says to rotate.
pub const RSA_ADVISED_BITS: usize = 2048;

/// The key behind a [`SharedKey`]: mail-auth's for Ed25519 and RSA of 2048 bits or more, ours
/// ([`crate::smallrsa`]) for RSA keys between the floor and 2048 bits.
enum Signer {
    Lib(DkimKey),
    SmallRsa(SmallRsaKey),
}

/// A loaded signing key, shareable between concurrent sessions.
#[derive(Clone)]
pub struct SharedKey {
    key: Arc<Signer>,
    /// RSA modulus size or 256 for Ed25519: reported in logs and by the tools.
    pub bits: usize,
}

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SharedKey({}, {} bits)",
            self.algorithm_name(),
            self.bits
        )
    }
}

impl SharedKey {
    pub fn is_ed25519(&self) -> bool {
        matches!(*self.key, Signer::Lib(DkimKey::Ed25519(_)))
    }

    /// `rsa-sha256` or `ed25519-sha256`.
    pub fn algorithm_name(&self) -> &'static str {
        if self.is_ed25519() {
            "ed25519-sha256"
        } else {
            "rsa-sha256"
        }
    }
}

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> chassis::mailauth::Result<Vec<u8>> {
        match &*self.key {
            Signer::Lib(k) => k.sign(input),
            Signer::SmallRsa(k) => {
                let mut data = Vec::with_capacity(512);
                input.write(&mut data);
                k.sign_sha256(&data).map_err(|e| {
                    chassis::mailauth::Error::Crypto(
                        chassis::mailauth::crypto::CryptoError::Library(e),
                    )
                })
            }
        }
    }

    fn algorithm(&self) -> Algorithm {
        match &*self.key {
            Signer::Lib(k) => k.algorithm(),
            Signer::SmallRsa(_) => Algorithm::RsaSha256,
        }
    }
}

/// Checks an RSA signing key against the configured minimum (at least [`RSA_FLOOR_BITS`]):
/// smaller keys are refused; keys under [`RSA_ADVISED_BITS`] are accepted with a warning naming
/// `what` (the KeyTable entry and file) and the advice to rotate.
pub fn check_signing_size(key: &SharedKey, what: &str, minimum: usize) -> Result<(), String> {
    if key.is_ed25519() {
        return Ok(());
    }
    let minimum = minimum.max(RSA_FLOOR_BITS);
    if key.bits < minimum {
        return Err(format!(
            "RSA key has {} bits; at least {minimum} are required to sign (minimum_signing_key_bits)",
            key.bits
        ));
    }
    if key.bits < RSA_ADVISED_BITS {
        tracing::warn!(
            "{what}: signing with a {}-bit RSA key; RFC 8301 allows it, but rotate to a {RSA_ADVISED_BITS}-bit key (authmilter genkey) and publish it under a new selector",
            key.bits
        );
    }
    Ok(())
}

/// Reads a key file, refusing files other users can read when `require_safe` is set
/// (OpenDKIM's RequireSafeKeys): a leaked signing key lets anyone forge our mail.
pub fn load_key_file(path: &Path, require_safe: bool) -> Result<SharedKey, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("key file {}: {e}", path.display()))?;
    let mode = meta.mode() & 0o777;
    if require_safe && mode & 0o077 != 0 {
        return Err(format!(
            "key file {} is accessible by group or other (mode {mode:04o}); run 'chmod 600 {}' or set require_safe_keys = false",
            path.display(),
            path.display()
        ));
    }
    let data = std::fs::read(path).map_err(|e| format!("key file {}: {e}", path.display()))?;
    parse_key(&data).map_err(|e| format!("key file {}: {e}", path.display()))
}

/// Parses key material: PEM (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`) or base64 DER.
pub fn parse_key(data: &[u8]) -> Result<SharedKey, String> {
    let text = String::from_utf8_lossy(data);
    let der = if text.contains("-----BEGIN") {
        PrivateKeyDer::from_pem_slice(data)
            .map_err(|e| format!("cannot read PEM private key: {e}"))?
    } else {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| "neither PEM nor base64 DER key data".to_string())?;
        if aws_lc_rs::rsa::KeyPair::from_der(&raw).is_ok() {
            PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(raw))
        } else {
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(raw))
        }
    };
    match der {
        PrivateKeyDer::Pkcs1(k) => rsa_key(PrivateKeyDer::Pkcs1(k)),
        PrivateKeyDer::Pkcs8(k) => {
            if let Ok(ed) = Ed25519Key::from_pkcs8_maybe_unchecked_der(k.secret_pkcs8_der()) {
                return Ok(SharedKey {
                    key: Arc::new(Signer::Lib(DkimKey::Ed25519(ed))),
                    bits: 256,
                });
            }
            rsa_key(PrivateKeyDer::Pkcs8(k))
        }
        _ => Err("unsupported key format (expected an RSA or Ed25519 private key)".into()),
    }
}

fn rsa_key(der: PrivateKeyDer<'_>) -> Result<SharedKey, String> {
    let pair = match &der {
        PrivateKeyDer::Pkcs1(k) => aws_lc_rs::rsa::KeyPair::from_der(k.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(k) => aws_lc_rs::rsa::KeyPair::from_pkcs8(k.secret_pkcs8_der()),
        _ => return Err("unsupported key format".into()),
    };
    let bits = match pair {
        Ok(p) => p.public_modulus_len() * 8,
        // aws-lc-rs signs with 2048 bits and more only; smaller keys go to our own signer.
        Err(e) if e.to_string().to_ascii_lowercase().contains("small") => {
            return small_rsa_key(&der)
        }
        Err(e) => return Err(format!("not a usable RSA or Ed25519 private key ({e})")),
    };
    let key =
        RsaKey::<Sha256>::from_key_der(der).map_err(|e| format!("cannot load RSA key: {e}"))?;
    Ok(SharedKey {
        key: Arc::new(Signer::Lib(DkimKey::Rsa(key))),
        bits,
    })
}

fn small_rsa_key(der: &PrivateKeyDer<'_>) -> Result<SharedKey, String> {
    let key = match der {
        PrivateKeyDer::Pkcs1(k) => SmallRsaKey::from_pkcs1_der(k.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(k) => SmallRsaKey::from_pkcs8_der(k.secret_pkcs8_der()),
        _ => Err("unsupported key format".into()),
    }?;
    let bits = key.bits();
    if bits < RSA_FLOOR_BITS {
        return Err(format!(
            "RSA key has {bits} bits; RFC 8301 requires at least {RSA_FLOOR_BITS} to sign"
        ));
    }
    Ok(SharedKey {
        key: Arc::new(Signer::SmallRsa(key)),
        bits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut s = format!("-----BEGIN {label}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(chunk).unwrap());
            s.push('\n');
        }
        s.push_str(&format!("-----END {label}-----\n"));
        s
    }

    fn ed25519_pkcs8() -> Vec<u8> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn ed25519_pem_and_base64() {
        let der = ed25519_pkcs8();
        let k = parse_key(pem("PRIVATE KEY", &der).as_bytes()).unwrap();
        assert!(k.is_ed25519());
        assert_eq!(k.bits, 256);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        assert!(parse_key(b64.as_bytes()).unwrap().is_ed25519());
    }

    #[test]
    fn rsa_pkcs8_pem() {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        use aws_lc_rs::encoding::AsDer;
        let der = pair.as_der().unwrap();
        let k = parse_key(pem("PRIVATE KEY", der.as_ref()).as_bytes()).unwrap();
        assert!(!k.is_ed25519());
        assert_eq!(k.bits, 2048);
        assert_eq!(k.algorithm_name(), "rsa-sha256");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_key(b"hello").is_err());
        assert!(
            parse_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err()
        );
        assert!(parse_key(b"").is_err());
    }

    #[test]
    fn unsafe_permissions_are_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, pem("PRIVATE KEY", &ed25519_pkcs8())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_key_file(&path, true).unwrap_err();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        assert!(load_key_file(&path, false).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_key_file(&path, true).is_ok());
    }
}

/// Keys of `%`-templated KeyTable entries (one file per sender domain), loaded on first use and
/// kept by path, checked against the file's modification time and size on each use: a message
/// costs one `stat`, not a read and a key parse, and a rotated file is picked up without a
/// reload. Bounded; shared by every session of a configuration.
#[derive(Clone)]
pub struct KeyFileCache {
    entries: moka::sync::Cache<std::path::PathBuf, (std::time::SystemTime, u64, SharedKey)>,
}

/// Templated key files kept loaded; a host signing for more domains re-reads the least used.
const KEY_FILES_KEPT: u64 = 10_000;

impl Default for KeyFileCache {
    fn default() -> Self {
        Self {
            entries: moka::sync::Cache::new(KEY_FILES_KEPT),
        }
    }
}

impl std::fmt::Debug for KeyFileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyFileCache({} files)", self.entries.entry_count())
    }
}

impl KeyFileCache {
    /// The key in `path`, from the cache while the file is unchanged (same mtime and size),
    /// otherwise loaded with [`load_key_file`] (permission check included) and kept.
    /// `check` runs on a key read from disk (not on one served from the cache), so a warning it
    /// logs appears once per file version, not once per message.
    pub fn load(
        &self,
        path: &Path,
        require_safe: bool,
        check: impl FnOnce(&SharedKey) -> Result<(), String>,
    ) -> Result<SharedKey, String> {
        let meta =
            std::fs::metadata(path).map_err(|e| format!("key file {}: {e}", path.display()))?;
        let stamp = (meta.modified().ok(), meta.len());
        if let (Some(mtime), Some((at, len, key))) = (stamp.0, self.entries.get(path)) {
            let safe = !require_safe || meta.mode() & 0o077 == 0;
            if at == mtime && len == stamp.1 && safe {
                return Ok(key);
            }
        }
        let key = load_key_file(path, require_safe)?;
        check(&key)?;
        if let Some(mtime) = stamp.0 {
            self.entries
                .insert(path.to_path_buf(), (mtime, stamp.1, key.clone()));
        }
        Ok(key)
    }

    /// Files held now.
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod key_file_cache_tests {
    use super::*;

    /// Loaded once, served from the cache while unchanged, re-read when the file changes, and
    /// the permission check still applies to a cached key.
    #[test]
    fn templated_keys_are_cached_by_path_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("example.com.private");
        let write = |kind| {
            let key = crate::keygen::generate(kind).unwrap();
            let _ = std::fs::remove_file(&path);
            crate::keygen::write_private(&path, &key.private_pem).unwrap();
        };
        write(crate::keygen::KeyKind::Ed25519);
        let cache = KeyFileCache::default();
        let first = cache.load(&path, true, |_| Ok(())).unwrap();
        assert!(first.is_ed25519());
        assert_eq!(cache.len(), 1);
        // Same file: the cached key (the same allocation) comes back.
        let again = cache.load(&path, true, |_| Ok(())).unwrap();
        assert!(Arc::ptr_eq(&first.key, &again.key));
        // Rotated to an RSA key: size and mtime change, the new key is read.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(crate::keygen::KeyKind::Rsa(2048));
        let rotated = cache.load(&path, true, |_| Ok(())).unwrap();
        assert!(!rotated.is_ed25519());
        // A cached key whose file became group-readable is refused like an uncached one.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = cache.load(&path, true, |_| Ok(())).unwrap_err();
        assert!(e.contains("accessible by group or other"), "{e}");
    }
}
