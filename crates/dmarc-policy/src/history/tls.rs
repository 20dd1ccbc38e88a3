//! TLS to a PostgreSQL history store (managed databases require it), with libpq's `sslmode`
//! meanings, so a URL that works with psql works here:
//!
//! - `disable`: plain text;
//! - `prefer` (libpq's default) and `require`: TLS (if offered / or fail), certificate not
//!   checked — libpq does the same; `require` with `sslrootcert` checks it, as libpq does;
//! - `verify-ca` and `verify-full`: TLS with the server's certificate checked against
//!   `sslrootcert=FILE` (PEM) or the system's CA store; both check the host name too (stricter
//!   than libpq's verify-ca, never weaker).
//!
//! tokio-postgres knows only disable/prefer/require, so [`prepare`] takes `verify-*` and
//! `sslrootcert` out of the URL and gives back what to connect with.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A URL ready for tokio-postgres and the TLS connector it needs.
pub struct Prepared {
    pub url: String,
    pub tls: MakeRustlsConnect,
    /// Whether the server's certificate is checked (for the log line).
    pub verified: bool,
}

/// Splits our TLS options off `url` and builds the connector; errors name the option.
pub fn prepare(url: &str) -> Result<Prepared, String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut keep = Vec::new();
    let mut verify = false;
    let mut require = false;
    let mut root = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (k, v) {
            ("sslmode", "verify-ca" | "verify-full") => {
                verify = true;
                keep.push("sslmode=require".to_string());
            }
            ("sslmode", "require") => {
                require = true;
                keep.push(pair.to_string());
            }
            ("sslrootcert", path) => root = Some(percent_decode(path)),
            _ => keep.push(pair.to_string()),
        }
    }
    // libpq: `require` with a root certificate checks the server's certificate against it.
    verify |= require && root.is_some();
    let url = if keep.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", keep.join("&"))
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match (verify, root) {
        (true, Some(path)) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(&path)
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!("sslrootcert {path}: no certificate in the file"));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (true, None) => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .map_err(|e| format!("the system's CA store: {e}"))?
                .with_no_client_auth()
        }
        (false, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            .with_no_client_auth(),
    };
    Ok(Prepared {
        url,
        tls: MakeRustlsConnect::new(config),
        verified: verify,
    })
}

/// `%2F` and friends in a URL value (a path in `sslrootcert`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq's `sslmode=prefer|require`: encrypted, the certificate not checked (the handshake
/// signatures still are, so the session key belongs to whoever holds the certificate's key).
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_and_root_are_taken_out_of_the_url() {
        let p = prepare("postgresql://u@h/db?sslmode=prefer&application_name=x").unwrap();
        assert_eq!(
            p.url,
            "postgresql://u@h/db?sslmode=prefer&application_name=x"
        );
        assert!(!p.verified);
        let p = prepare("postgresql://u@h/db?sslmode=verify-full").unwrap();
        assert_eq!(p.url, "postgresql://u@h/db?sslmode=require");
        assert!(p.verified);
        let e =
            prepare("postgresql://u@h/db?sslmode=verify-ca&sslrootcert=%2Fnonexistent%2Fca.pem")
                .err()
                .unwrap();
        assert!(e.contains("sslrootcert /nonexistent/ca.pem"), "{e}");
    }
}
