//! RSA signing keys of 1024 to 2047 bits, for operators migrating from OpenDKIM with the keys
//! they have published (many DNS hosts cap TXT strings at 255 bytes, which a 1024-bit key fits).
//! RFC 8301 §3.2 lets signers use 1024 bits; aws-lc-rs's safe API refuses RSA keys under 2048
//! bits for signing, so these keys are signed with through the same AWS-LC library one level
//! down (`RSA_sign`, constant-time with blinding, as the safe API uses it). Keys of 2048 bits
//! and more never come here.
//!
//! All `unsafe` of the workspace is in this file; every call's contract is stated beside it.

use aws_lc_sys::{EVP_PKEY_free, EVP_PKEY_get1_RSA, EVP_parse_private_key, CBS, RSA};
use std::ptr::NonNull;

/// An RSA private key owned by AWS-LC.
pub struct SmallRsaKey {
    rsa: NonNull<RSA>,
    bits: usize,
}

// SAFETY: AWS-LC's RSA objects may be used from several threads at once for private-key
// operations once created (blinding state is guarded inside the library); we never mutate the
// key after construction, and free it only in Drop, when no other reference exists.
unsafe impl Send for SmallRsaKey {}
unsafe impl Sync for SmallRsaKey {}

impl SmallRsaKey {
    /// Parses a PKCS#1 `RSAPrivateKey` DER.
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self, String> {
        // SAFETY: reads `der.len()` bytes from a valid slice; returns an owned RSA or null.
        let rsa = unsafe { aws_lc_sys::RSA_private_key_from_bytes(der.as_ptr(), der.len()) };
        Self::own(rsa)
    }

    /// Parses a PKCS#8 `PrivateKeyInfo` DER holding an RSA key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, String> {
        // SAFETY: CBS is a plain (pointer, length) view, initialised by CBS_init over a valid
        // slice that outlives it; EVP_parse_private_key returns an owned EVP_PKEY or null;
        // EVP_PKEY_get1_RSA returns a new reference (or null), after which we free the EVP_PKEY.
        let rsa = unsafe {
            let mut cbs = std::mem::zeroed::<CBS>();
            aws_lc_sys::CBS_init(&mut cbs, der.as_ptr(), der.len());
            let pkey = EVP_parse_private_key(&mut cbs);
            if pkey.is_null() {
                return Err("not a PKCS#8 private key".into());
            }
            let rsa = EVP_PKEY_get1_RSA(pkey);
            EVP_PKEY_free(pkey);
            rsa
        };
        Self::own(rsa)
    }

    fn own(rsa: *mut RSA) -> Result<Self, String> {
        let rsa = NonNull::new(rsa).ok_or("not an RSA private key")?;
        // SAFETY: `rsa` is a valid key we own.
        let bits = unsafe { aws_lc_sys::RSA_bits(rsa.as_ptr()) } as usize;
        // SAFETY: as above; RSA_check_key only reads the key.
        if unsafe { aws_lc_sys::RSA_check_key(rsa.as_ptr()) } != 1 {
            // SAFETY: we own it and drop it here.
            unsafe { aws_lc_sys::RSA_free(rsa.as_ptr()) };
            return Err("RSA key fails its consistency check".into());
        }
        Ok(Self { rsa, bits })
    }

    pub fn bits(&self) -> usize {
        self.bits
    }

    /// RSASSA-PKCS1-v1_5 over SHA-256 of `data` (DKIM's rsa-sha256, RFC 6376 §3.3.1).
    pub fn sign_sha256(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
        // SAFETY: RSA_size only reads the key.
        let size = unsafe { aws_lc_sys::RSA_size(self.rsa.as_ptr()) } as usize;
        let mut out = vec![0u8; size];
        let mut out_len: std::os::raw::c_uint = 0;
        // SAFETY: `out` has RSA_size bytes, the most RSA_sign writes; the digest pointer and
        // length describe a live buffer; the key is valid for the lifetime of `self`.
        let ok = unsafe {
            aws_lc_sys::RSA_sign(
                aws_lc_sys::NID_sha256,
                digest.as_ref().as_ptr(),
                digest.as_ref().len(),
                out.as_mut_ptr(),
                &mut out_len,
                self.rsa.as_ptr(),
            )
        };
        if ok != 1 {
            return Err("RSA signing failed".into());
        }
        out.truncate(out_len as usize);
        Ok(out)
    }
}

impl Drop for SmallRsaKey {
    fn drop(&mut self) {
        // SAFETY: we own the only reference.
        unsafe { aws_lc_sys::RSA_free(self.rsa.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1024-bit key made by `openssl genrsa 1024` at test time, signed with here and verified
    /// with openssl: the signature must be standard PKCS#1 v1.5 / SHA-256.
    #[test]
    fn signs_what_openssl_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let ok = std::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "-out"])
            .arg(&key)
            .arg("1024")
            .output();
        let Ok(out) = ok else {
            eprintln!("!!!!! openssl not installed: SKIPPED small RSA interop check !!!!!");
            return;
        };
        assert!(out.status.success(), "{out:?}");
        let pem = std::fs::read(&key).unwrap();
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::PrivatePkcs1KeyDer::from_pem_slice(&pem).unwrap();
        let k = SmallRsaKey::from_pkcs1_der(der.secret_pkcs1_der()).unwrap();
        assert_eq!(k.bits(), 1024);
        let sig = k.sign_sha256(b"hello").unwrap();
        assert_eq!(sig.len(), 128);
        let d = dir.path();
        std::fs::write(d.join("data"), b"hello").unwrap();
        std::fs::write(d.join("sig"), &sig).unwrap();
        let openssl = |args: &[&std::ffi::OsStr]| {
            std::process::Command::new("openssl")
                .args(args)
                .output()
                .unwrap()
        };
        let os = |p: std::path::PathBuf| p.into_os_string();
        let (pubkey, sigf, data) = (os(d.join("pub.pem")), os(d.join("sig")), os(d.join("data")));
        let out = openssl(&[
            "rsa".as_ref(),
            "-pubout".as_ref(),
            "-in".as_ref(),
            key.as_os_str(),
            "-out".as_ref(),
            &pubkey,
        ]);
        assert!(out.status.success(), "{out:?}");
        let verifies = || {
            let out = openssl(&[
                "dgst".as_ref(),
                "-sha256".as_ref(),
                "-verify".as_ref(),
                &pubkey,
                "-signature".as_ref(),
                &sigf,
                &data,
            ]);
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified OK")
        };
        assert!(verifies(), "openssl does not verify our signature");
        // A tampered signature must not verify (the check above can fail).
        let mut bad = sig.clone();
        bad[10] ^= 1;
        std::fs::write(d.join("sig"), &bad).unwrap();
        assert!(!verifies(), "openssl verifies a tampered signature");
    }

    #[test]
    fn garbage_is_refused_without_a_panic() {
        assert!(SmallRsaKey::from_pkcs1_der(b"").is_err());
        assert!(SmallRsaKey::from_pkcs1_der(&[0x30, 0x03, 0x02, 0x01]).is_err());
        assert!(SmallRsaKey::from_pkcs8_der(&[0xff; 40]).is_err());
    }
}
