//! DKIM test keys, generated when the test runs.
//!
//! Keys are generated at run time so that no private key is ever committed: a committed test key
//! gets copied into a real configuration sooner or later. Generation uses aws-lc-rs (the same
//! crypto library the milters use), except for RSA sizes it refuses to generate (below 2048 bits),
//! which come from the `openssl` command line so that "key too small" policies can be tested.
//!
//! Every key is available in the encodings the independent implementations need: PKCS#8 PEM
//! (OpenSSL 3, OpenDKIM, Mail::DKIM, dkimpy for RSA), PKCS#1 PEM ("BEGIN RSA PRIVATE KEY", what
//! `opendkim-genkey` writes and older tools expect), and the raw Ed25519 seed (dkimpy and
//! RFC 8463 publish/consume raw 32-byte keys).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{self, KeySize};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// The algorithm and size of a [`TestKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA with this modulus size in bits.
    Rsa(usize),
    /// Ed25519 (RFC 8463).
    Ed25519,
}

/// A freshly generated DKIM key pair.
#[derive(Clone, Debug)]
pub struct TestKey {
    /// Algorithm and size.
    pub kind: KeyKind,
    /// The private key as PKCS#8 ("BEGIN PRIVATE KEY") PEM. For Ed25519 this is a PKCS#8 v1
    /// document (no embedded public key), the form the OpenSSL CLI and OpenDKIM read.
    pub pkcs8_pem: String,
    /// The private key as PKCS#1 ("BEGIN RSA PRIVATE KEY") PEM; RSA only.
    pub pkcs1_pem: Option<String>,
    /// The DKIM `p=` value: for RSA the base64 of the SubjectPublicKeyInfo DER (what
    /// opendkim-genkey publishes; RFC 6376 also allows a bare RSAPublicKey, which this is not),
    /// for Ed25519 the base64 of the raw 32-byte public key (RFC 8463 section 4).
    pub public_b64: String,
    /// The Ed25519 private key as the base64 of the raw 32-byte seed, which dkimpy and
    /// `mail_auth::common::crypto::Ed25519Key::from_seed_and_public_key` take; None for RSA.
    pub ed25519_seed_b64: Option<String>,
}

impl TestKey {
    /// Generates an RSA key with aws-lc-rs. Supported sizes: 2048, 3072, 4096, 8192 (aws-lc-rs
    /// refuses anything smaller; use [`TestKey::rsa_openssl`] for legacy sizes).
    pub fn rsa(bits: usize) -> Self {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            8192 => KeySize::Rsa8192,
            other => panic!("aws-lc-rs cannot generate {other}-bit RSA; use TestKey::rsa_openssl"),
        };
        let pair = rsa::KeyPair::generate(size).expect("generate RSA key");
        let pkcs8 = pair.as_der().expect("encode RSA PKCS#8");
        let spki = pair
            .public_key()
            .as_der()
            .expect("encode RSA SubjectPublicKeyInfo");
        Self::from_rsa_pkcs8(bits, pkcs8.as_ref(), spki.as_ref())
    }

    /// Generates an RSA key of any size with `openssl genpkey`, for sizes aws-lc-rs refuses (for
    /// example 1024 or 512 bits, to test that a verifier rejects or flags short keys per RFC 8301).
    /// Panics if the `openssl` command fails (the test machine is broken).
    pub fn rsa_openssl(bits: usize) -> Self {
        let out = Command::new("openssl")
            // PEM output is PKCS#8; OpenSSL 3 writes PKCS#1 when asked for DER here.
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
            .arg(format!("rsa_keygen_bits:{bits}"))
            .stdin(Stdio::null())
            .output()
            .expect("run openssl genpkey");
        assert!(
            out.status.success(),
            "openssl genpkey failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pkcs8 = pem_body(&String::from_utf8_lossy(&out.stdout));
        let mut child = Command::new("openssl")
            .args(["pkey", "-inform", "DER", "-pubout", "-outform", "DER"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run openssl pkey");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&pkcs8)
            .expect("write key to openssl");
        let out = child.wait_with_output().expect("openssl pkey");
        assert!(
            out.status.success(),
            "openssl pkey failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self::from_rsa_pkcs8(bits, &pkcs8, &out.stdout)
    }

    fn from_rsa_pkcs8(bits: usize, pkcs8: &[u8], spki: &[u8]) -> Self {
        let pkcs1 = pkcs8_inner_key(pkcs8).expect("PKCS#8 wraps an RSAPrivateKey");
        TestKey {
            kind: KeyKind::Rsa(bits),
            pkcs8_pem: pem("PRIVATE KEY", pkcs8),
            pkcs1_pem: Some(pem("RSA PRIVATE KEY", pkcs1)),
            public_b64: B64.encode(spki),
            ed25519_seed_b64: None,
        }
    }

    /// Generates an Ed25519 key with aws-lc-rs.
    pub fn ed25519() -> Self {
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new()).expect("generate Ed25519");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parse Ed25519 PKCS#8");
        let seed = pkcs8_inner_key(pkcs8.as_ref())
            .and_then(der_octet_string)
            .expect("PKCS#8 wraps the Ed25519 seed as an OCTET STRING");
        assert_eq!(seed.len(), 32);
        TestKey {
            kind: KeyKind::Ed25519,
            pkcs8_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
            pkcs1_pem: None,
            public_b64: B64.encode(pair.public_key().as_ref()),
            ed25519_seed_b64: Some(B64.encode(seed)),
        }
    }

    /// The `k=` tag value for this key.
    pub fn k_tag(&self) -> &'static str {
        match self.kind {
            KeyKind::Rsa(_) => "rsa",
            KeyKind::Ed25519 => "ed25519",
        }
    }

    /// The DKIM key record to publish at `<selector>._domainkey.<domain>`.
    pub fn dns_record(&self) -> String {
        format!("v=DKIM1; k={}; p={}", self.k_tag(), self.public_b64)
    }

    /// The DER of the private key in PKCS#8.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        pem_body(&self.pkcs8_pem)
    }

    /// `raw` with a DKIM-Signature on top made with this (Ed25519) key as `d=domain;
    /// s=selector`, over From, To, Subject, Date and Message-ID: mail as an outside signer would
    /// send it, signed by an implementation that is not ours (mail-auth).
    pub fn sign_ed25519(&self, raw: &[u8], domain: &str, selector: &str) -> Vec<u8> {
        use mail_auth::common::crypto::Ed25519Key;
        use mail_auth::common::headers::HeaderWriter;
        use mail_auth::dkim::DkimSigner;
        let k = Ed25519Key::from_pkcs8_maybe_unchecked_der(&self.pkcs8_der()).expect("key");
        let sig = DkimSigner::from_key(k)
            .domain(domain)
            .selector(selector)
            .headers(["From", "To", "Subject", "Date", "Message-ID"])
            .sign(raw)
            .expect("sign");
        let mut out = sig.to_header().into_bytes();
        out.extend_from_slice(raw);
        out
    }

    /// Writes the private key as PEM to `dir/name` with mode 0600 (OpenDKIM refuses group- or
    /// world-readable keys) and returns the path. `pkcs1` selects "BEGIN RSA PRIVATE KEY";
    /// Ed25519 keys have no PKCS#1 form and are always written as PKCS#8.
    pub fn write_pem(&self, dir: &Path, name: &str, pkcs1: bool) -> PathBuf {
        let text = match (&self.pkcs1_pem, pkcs1) {
            (Some(p1), true) => p1,
            _ => &self.pkcs8_pem,
        };
        let path = dir.join(name);
        write_private(&path, text.as_bytes()).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
        path
    }
}

/// Creates (or truncates) `path` with mode 0600 and writes `data`.
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    // `mode` only applies when the file is created; make sure a pre-existing file is private too.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}

/// PEM-encodes `der` with 64-column base64 lines (RFC 7468), as OpenSSL writes it.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside a single-block PEM document.
pub fn pem_body(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.trim().chars())
        .collect();
    B64.decode(b64).expect("valid PEM base64")
}

/// Reads one DER TLV at the start of `input`: (tag, contents, rest). Only definite lengths,
/// which is all DER allows.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The contents of a DER OCTET STRING.
fn der_octet_string(input: &[u8]) -> Option<&[u8]> {
    match der_tlv(input)? {
        (0x04, contents, _) => Some(contents),
        _ => None,
    }
}

/// The `privateKey` OCTET STRING contents of a PKCS#8 PrivateKeyInfo (RFC 5208):
/// `SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING privateKey, ... }`.
/// For RSA that is the PKCS#1 RSAPrivateKey; for Ed25519 it is `OCTET STRING seed` (RFC 8410).
fn pkcs8_inner_key(pkcs8: &[u8]) -> Option<&[u8]> {
    let (tag, seq, _) = der_tlv(pkcs8)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _version, rest) = der_tlv(seq)?;
    if tag != 0x02 {
        return None;
    }
    let (tag, _alg, rest) = der_tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    der_octet_string(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openssl_check(pem_text: &str, args: &[&str]) -> String {
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pem_text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn rsa_2048_encodings_agree_with_openssl() {
        let key = TestKey::rsa(2048);
        assert_eq!(key.kind, KeyKind::Rsa(2048));
        let p1 = key.pkcs1_pem.as_deref().unwrap();
        assert!(p1.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        assert!(p1.lines().all(|l| l.len() <= 64));
        // OpenSSL reads both forms, and derives the same public key we publish.
        for pem_text in [key.pkcs8_pem.as_str(), p1] {
            let spki = openssl_check(pem_text, &["pkey", "-pubout"]);
            assert_eq!(B64.encode(pem_body(&spki)), key.public_b64);
        }
        let text = openssl_check(&key.pkcs8_pem, &["pkey", "-noout", "-text"]);
        assert!(text.contains("2048 bit"), "{text}");
        assert!(key.dns_record().starts_with("v=DKIM1; k=rsa; p=MIIBIjAN"));
    }

    #[test]
    fn rsa_1024_from_openssl() {
        let key = TestKey::rsa_openssl(1024);
        let text = openssl_check(
            key.pkcs1_pem.as_deref().unwrap(),
            &["pkey", "-noout", "-text"],
        );
        assert!(text.contains("1024 bit"), "{text}");
        assert!(key.public_b64.starts_with("MIGfMA0"));
    }

    #[test]
    fn ed25519_encodings() {
        let key = TestKey::ed25519();
        assert_eq!(B64.decode(&key.public_b64).unwrap().len(), 32);
        let spki = openssl_check(&key.pkcs8_pem, &["pkey", "-pubout"]);
        let spki = pem_body(&spki);
        // SubjectPublicKeyInfo for Ed25519 is a fixed 12-byte prefix and the raw key.
        assert_eq!(B64.encode(&spki[12..]), key.public_b64);
        assert!(key.dns_record().starts_with("v=DKIM1; k=ed25519; p="));
        assert_eq!(B64.decode(key.ed25519_seed_b64.unwrap()).unwrap().len(), 32);
    }

    #[test]
    fn write_pem_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = TestKey::ed25519();
        let path = key.write_pem(dir.path(), "k.pem", true);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(path).unwrap(), key.pkcs8_pem);
    }
}
