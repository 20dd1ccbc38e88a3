//! The one door to mail-auth. Every crate of the workspace reaches mail-auth through this
//! module (it is the only crate that depends on it), so upgrading mail-auth or swapping one of
//! its pieces (SPF, say) is a change here and in the code this module names, nowhere else.
//!
//! Two things live here:
//!
//! * the mail-auth items the policies and tools use, re-exported under the same paths
//!   (`dkim`, `dmarc`, `spf`, `crypto`, …), so that a renamed or moved item in a new mail-auth
//!   breaks this file first;
//! * [`judge_dkim`]: our reading of a mail-auth DKIM result: the RFC 8601 word, which
//!   configured action it drives, and the reason in **our** words. mail-auth's error texts
//!   (`Display`) never reach an A-R header or a log line, so they can change under an upgrade
//!   without changing what operators see; the contract tests below pin every error variant
//!   to its wording and fail when a new mail-auth adds, removes or moves one;
//! * [`judge_arc`]: the same for mail-auth's ARC chain answer (its non-default `arc` feature,
//!   switched on here): RFC 8617 knows `pass`, `fail` and `none`, so every mail-auth
//!   "neutral" or "permerror" about an ARC set is a failed chain, and only a DNS failure is a
//!   `temperror` (the sender may retry).

use crate::authres::ResultWord;

pub use mail_auth::{
    ArcOutput, AuthenticatedMessage, DkimOutput, DkimResult, DmarcResult, DnsError, Error,
    MessageAuthenticator, Parameters, ResolverCache, Result, SpfOutput, SpfResult, Txt,
};

/// DKIM signing, verification and signature fields.
pub mod dkim {
    pub use mail_auth::dkim::canonicalize::BodyHasher;
    pub use mail_auth::dkim::{Canonicalization, DkimError, DkimSigner, Signature};
}

/// ARC (RFC 8617) sets as mail-auth parses them; verification goes through
/// [`crate::arc::verify`], sealing is ours ([`crate::arc::seal`]).
pub mod arc {
    pub use mail_auth::arc::{ArcError, ChainValidation, Results, Seal, Signature};
}

/// Keys, hashes and algorithms.
pub mod crypto {
    pub use mail_auth::common::crypto::{
        Algorithm, CryptoError, DkimKey, Ed25519Key, HashAlgorithm, HashContext, HashImpl, RsaKey,
        Sha1, Sha256, SigningKey,
    };
}

/// Header writing and record parsing traits.
pub mod common {
    pub use mail_auth::common::cache::NoCache;
    pub use mail_auth::common::headers::{HeaderWriter, Writable};
    pub use mail_auth::common::parse::TxtRecordParser;
    pub use mail_auth::common::verify::DomainKey;
}

/// DMARC records, alignment and the RFC 9989 tree walk.
pub mod dmarc {
    pub use mail_auth::dmarc::verify::DmarcParameters;
    pub use mail_auth::dmarc::{Alignment, Dmarc, Policy, Psd, Report as FailureOptions, URI};
}

/// DMARC aggregate reports and ARF (the report program, crates/dmarc-reports, writes and reads
/// them with this model; mail-auth 0.13.3's `report` module).
pub mod report {
    pub use mail_auth::report::*;
}

/// SPF records and `check_host()`.
pub mod spf {
    pub use mail_auth::spf::verify::SpfParameters;
    pub use mail_auth::spf::{Macro, Mechanism, Qualifier, Spf};
}

/// MTA-STS and TLS-RPT records (the audit tool reads them).
pub mod mta_sts {
    pub use mail_auth::mta_sts::{MtaSts, TlsRpt};
}

/// The resolver mail-auth is built on (the same hickory version as ours).
pub use mail_auth::hickory_resolver;

/// Which configured action (OpenDKIM's On-*) a DKIM result drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimFailure {
    BadSignature,
    KeyNotFound,
    DnsError,
    None,
}

/// Our reading of one mail-auth DKIM result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimJudgement {
    pub word: ResultWord,
    pub failure: DkimFailure,
    /// The A-R `reason=` text, in our words.
    pub reason: Option<String>,
}

/// Our words for a mail-auth error, for `reason=` and log lines.
pub fn error_words(e: &Error) -> &'static str {
    use arc::ArcError as A;
    use dkim::DkimError as D;
    use mail_auth::common::crypto::CryptoError as C;
    match e {
        Error::ParseError => "syntax error",
        Error::MissingParameters => "missing parameters",
        Error::NoHeadersFound => "no header fields to sign",
        Error::Base64 => "invalid base64",
        Error::NotAligned => "not aligned",
        Error::Io(_) => "I/O error",
        Error::Crypto(C::Library(_)) => "key cannot be used",
        Error::Crypto(C::FailedVerification) => "signature verification failed",
        Error::Crypto(C::IncompatibleAlgorithms) => "key type does not match signature algorithm",
        Error::Dns(DnsError::Resolver(_)) => "DNS query failed",
        Error::Dns(DnsError::RecordNotFound(_)) => "no key for signature",
        Error::Dns(DnsError::InvalidRecordType) => "not a DKIM key record",
        Error::Dkim(D::UnsupportedVersion) => "unsupported version",
        Error::Dkim(D::UnsupportedAlgorithm) => "unsupported algorithm",
        Error::Dkim(D::UnsupportedCanonicalization) => "unsupported canonicalization",
        Error::Dkim(D::UnsupportedKeyType) => "unsupported key type",
        Error::Dkim(D::FailedBodyHashMatch) => "body hash did not verify",
        Error::Dkim(D::FailedAuidMatch) => "identity does not match the key's domain rules",
        Error::Dkim(D::RevokedPublicKey) => "key revoked",
        Error::Dkim(D::SignatureExpired) => "signature expired",
        Error::Dkim(D::SignatureLength) => "body shorter than l=",
        Error::Dkim2(_) => "unexpected error",
        Error::Arc(A::ChainTooLong) => "more than 50 ARC sets",
        Error::Arc(A::InvalidInstance(_)) => "ARC instance missing, repeated or out of range",
        Error::Arc(A::InvalidCV) => "ARC-Seal cv= does not fit the chain",
        Error::Arc(A::HasHeaderTag) => "ARC-Seal carries an h= tag",
        Error::Arc(A::BrokenChain) => "ARC set incomplete",
        Error::Arc(A::FailedBodyHashMatch) => "body hash did not verify",
        Error::Arc(A::SignatureExpired) => "signature expired",
        Error::Arc(A::SignatureLength) => "ARC-Message-Signature carries l=",
    }
}

/// Maps mail-auth's ARC chain answer to the RFC 8617 word and our reason. mail-auth calls a
/// body-hash mismatch or an expired AMS "neutral" and a missing key "permerror"; for ARC each
/// of them means the chain does not validate (§5.2 steps 3-5), so they are `fail`.
pub fn judge_arc(result: &DkimResult) -> (ResultWord, Option<String>) {
    let words = |e: &Error| Some(error_words(e).to_string());
    match result {
        DkimResult::Pass => (ResultWord::Pass, None),
        DkimResult::None => (ResultWord::None, None),
        DkimResult::TempError(_) => (ResultWord::TempError, Some("key retrieval failed".into())),
        DkimResult::Fail(Error::Crypto(_)) => (
            ResultWord::Fail,
            Some("signature verification failed".into()),
        ),
        DkimResult::Fail(e) | DkimResult::Neutral(e) | DkimResult::PermError(e) => {
            (ResultWord::Fail, words(e))
        }
    }
}

/// Maps a mail-auth DKIM result to our result word, action and reason.
///
/// Where mail-auth and the RFCs disagree, the RFC wins: a body-hash mismatch is `fail`
/// (RFC 6376 §6.1.3; mail-auth says neutral), and a key of the wrong type is a `permerror`
/// (RFC 6376 §6.1.2 step 6: the key cannot be used; mail-auth says fail).
pub fn judge_dkim(result: &DkimResult) -> DkimJudgement {
    use dkim::DkimError as D;
    use mail_auth::common::crypto::CryptoError as C;
    use ResultWord::{Fail, Neutral, Pass, PermError, TempError};
    let j = |word, failure, reason: Option<String>| DkimJudgement {
        word,
        failure,
        reason,
    };
    let bad = DkimFailure::BadSignature;
    let words = |e: &Error| Some(error_words(e).to_string());
    match result {
        DkimResult::Pass => j(Pass, DkimFailure::None, None),
        DkimResult::Neutral(e @ Error::Dkim(D::FailedBodyHashMatch)) => j(Fail, bad, words(e)),
        DkimResult::Neutral(e @ Error::Dkim(D::SignatureExpired)) => j(Neutral, bad, words(e)),
        DkimResult::Neutral(e) => j(
            Neutral,
            bad,
            Some(format!("bad signature data: {}", error_words(e))),
        ),
        DkimResult::Fail(e @ Error::Dkim(D::FailedAuidMatch)) => j(Fail, bad, words(e)),
        DkimResult::Fail(e @ Error::Crypto(C::IncompatibleAlgorithms)) => {
            j(PermError, bad, words(e))
        }
        DkimResult::Fail(_) => j(Fail, bad, words(&Error::Crypto(C::FailedVerification))),
        DkimResult::PermError(e @ Error::Dns(DnsError::RecordNotFound(_))) => {
            j(PermError, DkimFailure::KeyNotFound, words(e))
        }
        DkimResult::PermError(e @ Error::Dkim(D::RevokedPublicKey)) => j(PermError, bad, words(e)),
        DkimResult::PermError(e) => j(
            PermError,
            DkimFailure::KeyNotFound,
            Some(format!("key syntax error: {}", error_words(e))),
        ),
        DkimResult::TempError(_) => j(
            TempError,
            DkimFailure::DnsError,
            Some("key retrieval failed".into()),
        ),
        DkimResult::None => j(Neutral, DkimFailure::None, None),
    }
}

#[cfg(test)]
mod contract {
    //! What we rely on mail-auth for, checked against the pinned version: our wording for each
    //! error, and real verifications whose mail-auth result must map to the word the RFC asks.
    use super::*;
    use crate::keycache::TxtCache;
    use dkim::DkimError as D;
    use hickory_resolver::proto::op::ResponseCode;
    use mail_auth::common::crypto::CryptoError as C;

    #[test]
    fn every_error_has_our_wording() {
        use mail_auth::arc::ArcError as A;
        let cases = [
            (Error::ParseError, "syntax error"),
            (Error::Base64, "invalid base64"),
            (Error::Dkim(D::UnsupportedVersion), "unsupported version"),
            (
                Error::Dkim(D::UnsupportedAlgorithm),
                "unsupported algorithm",
            ),
            (
                Error::Dkim(D::UnsupportedCanonicalization),
                "unsupported canonicalization",
            ),
            (Error::Dkim(D::UnsupportedKeyType), "unsupported key type"),
            (Error::Dkim(D::SignatureLength), "body shorter than l="),
            (
                Error::Dns(DnsError::RecordNotFound(ResponseCode::NXDomain)),
                "no key for signature",
            ),
            (Error::Crypto(C::Library("x".into())), "key cannot be used"),
            (Error::Arc(A::ChainTooLong), "more than 50 ARC sets"),
            (
                Error::Arc(A::InvalidInstance(51)),
                "ARC instance missing, repeated or out of range",
            ),
            (
                Error::Arc(A::InvalidCV),
                "ARC-Seal cv= does not fit the chain",
            ),
            (Error::Arc(A::HasHeaderTag), "ARC-Seal carries an h= tag"),
            (Error::Arc(A::BrokenChain), "ARC set incomplete"),
            (
                Error::Arc(A::FailedBodyHashMatch),
                "body hash did not verify",
            ),
            (Error::Arc(A::SignatureExpired), "signature expired"),
            (
                Error::Arc(A::SignatureLength),
                "ARC-Message-Signature carries l=",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(error_words(&e), want, "{e:?}");
            // Never mail-auth's own text.
            assert_ne!(error_words(&e), e.to_string(), "{e:?}");
        }
    }

    #[test]
    fn results_map_to_rfc_words_and_actions() {
        let nx = || Error::Dns(DnsError::RecordNotFound(ResponseCode::NXDomain));
        let cases = [
            (DkimResult::Pass, ResultWord::Pass, DkimFailure::None, None),
            (
                DkimResult::Neutral(Error::Dkim(D::FailedBodyHashMatch)),
                ResultWord::Fail,
                DkimFailure::BadSignature,
                Some("body hash did not verify"),
            ),
            (
                DkimResult::Neutral(Error::Dkim(D::UnsupportedAlgorithm)),
                ResultWord::Neutral,
                DkimFailure::BadSignature,
                Some("bad signature data: unsupported algorithm"),
            ),
            (
                DkimResult::Fail(Error::Crypto(C::FailedVerification)),
                ResultWord::Fail,
                DkimFailure::BadSignature,
                Some("signature verification failed"),
            ),
            (
                DkimResult::Fail(Error::Crypto(C::IncompatibleAlgorithms)),
                ResultWord::PermError,
                DkimFailure::BadSignature,
                Some("key type does not match signature algorithm"),
            ),
            (
                DkimResult::PermError(nx()),
                ResultWord::PermError,
                DkimFailure::KeyNotFound,
                Some("no key for signature"),
            ),
            (
                DkimResult::PermError(Error::Dkim(D::RevokedPublicKey)),
                ResultWord::PermError,
                DkimFailure::BadSignature,
                Some("key revoked"),
            ),
            (
                DkimResult::PermError(Error::Base64),
                ResultWord::PermError,
                DkimFailure::KeyNotFound,
                Some("key syntax error: invalid base64"),
            ),
            (
                DkimResult::TempError(Error::Dns(DnsError::Resolver("x".into()))),
                ResultWord::TempError,
                DkimFailure::DnsError,
                Some("key retrieval failed"),
            ),
        ];
        for (r, word, failure, reason) in cases {
            let got = judge_dkim(&r);
            assert_eq!(
                (got.word, got.failure, got.reason.as_deref()),
                (word, failure, reason),
                "{r:?}"
            );
        }
    }

    /// Signs with mail-auth, then verifies against key records placed in our key cache (the
    /// cache mail-auth consults before DNS): the pinned mail-auth must still report a good
    /// signature as pass, a changed body as the body-hash error, an Ed25519 key under an RSA
    /// signature as incompatible, and an empty `p=` as revoked.
    #[tokio::test]
    async fn real_verifications_map_as_the_rfc_says() {
        use common::HeaderWriter;
        use std::time::{Duration, Instant};
        // RFC 8032 §7.1 test 1: the key pair, and its public key as a DKIM p= value.
        let seed = hex_bytes("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let public = hex_bytes("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let p = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        let key = crypto::Ed25519Key::from_seed_and_public_key(&seed, &public).expect("key");
        let raw = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: t\r\n\r\nHello\r\n";
        let sig = dkim::DkimSigner::from_key(key)
            .domain("example.com")
            .selector("s")
            .headers(["From", "To", "Subject"])
            .sign(raw)
            .expect("sign");
        let signed = [sig.to_header().as_bytes(), raw].concat();
        let tampered = String::from_utf8(signed.clone())
            .unwrap()
            .replace("Hello", "Bye")
            .into_bytes();
        // The resolver points at a closed port: every answer must come from the cache.
        let auth = crate::dns::ResolverSettings {
            nameservers: vec!["127.0.0.1:9".into()],
            timeout: 0.2,
            attempts: 1,
            cache_size: 16,
        }
        .build()
        .expect("resolver");
        let verify = |record: String, msg: Vec<u8>| {
            let auth = &auth;
            async move {
                let cache = TxtCache::new(16);
                let parsed =
                    <common::DomainKey as common::TxtRecordParser>::parse(record.as_bytes())
                        .map(|k| Txt::DomainKey(std::sync::Arc::new(k)))
                        .unwrap_or_else(Txt::Error);
                cache.insert(
                    "s._domainkey.example.com.".into(),
                    parsed,
                    Instant::now() + Duration::from_secs(60),
                );
                let am = AuthenticatedMessage::parse(&msg).expect("parse");
                let out = auth
                    .verify_dkim(Parameters::new(&am).with_txt_cache(&cache))
                    .await;
                judge_dkim(out[0].result())
            }
        };
        let good = format!("v=DKIM1; k=ed25519; p={p}");
        assert_eq!(
            verify(good.clone(), signed.clone()).await.word,
            ResultWord::Pass
        );
        let j = verify(good, tampered).await;
        assert_eq!(
            (j.word, j.reason.as_deref()),
            (ResultWord::Fail, Some("body hash did not verify"))
        );
        // An RSA key record under an Ed25519 signature: the key cannot be used (RFC 6376
        // §6.1.2 step 6), a permerror, not a failed signature.
        let rsa = concat!(
            "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDmyBfE97soB4Y0Ln5LDxqevw5KRXMeFq",
            "wrTfH98avJe/yzyo3hJI/5Cv3nWxPaQKhB6FNavMKa7pUXVB+sMTu/DT8Utl2pLRkcMx6ij9w8lufNivt7nRgd",
            "aW6K3m5nmaEg5OZI3a4OqEGSfkXMT5WVN/a57JEmt5yHljDZ6ldcDQIDAQAB"
        );
        let j = verify(rsa.into(), signed.clone()).await;
        assert_eq!(
            (j.word, j.reason.as_deref()),
            (
                ResultWord::PermError,
                Some("key type does not match signature algorithm")
            )
        );
        let j = verify("v=DKIM1; k=ed25519; p=".into(), signed.clone()).await;
        assert_eq!(
            (j.word, j.reason.as_deref()),
            (ResultWord::PermError, Some("key revoked"))
        );
    }

    /// Our sealer and mail-auth's verifier agree: one and two hops pass; a changed body, a
    /// changed ARC-Seal and an unknown key fail; every mail-auth ARC answer maps to an RFC
    /// 8617 word.
    #[tokio::test]
    async fn sealed_chains_verify_and_tampering_fails() {
        use crate::arc::{self, Cv, Sealer};
        use std::time::{Duration, Instant};
        let seed = hex_bytes("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let public = hex_bytes("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let p = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        let key = crypto::Ed25519Key::from_seed_and_public_key(&seed, &public).expect("key");
        let auth = crate::dns::ResolverSettings {
            nameservers: vec!["127.0.0.1:9".into()],
            timeout: 0.2,
            attempts: 1,
            cache_size: 16,
        }
        .build()
        .expect("resolver");
        let cache = TxtCache::new(16);
        for name in ["arc._domainkey.one.example.", "arc._domainkey.two.example."] {
            let rec = format!("v=DKIM1; k=ed25519; p={p}");
            let parsed = <common::DomainKey as common::TxtRecordParser>::parse(rec.as_bytes())
                .map(|k| Txt::DomainKey(std::sync::Arc::new(k)))
                .unwrap_or_else(Txt::Error);
            cache.insert(
                name.into(),
                parsed,
                Instant::now() + Duration::from_secs(60),
            );
        }
        let headers = ["From".to_string(), "Subject".to_string()];
        let chain_of = |raw: Vec<u8>| {
            let auth = &auth;
            let cache = &cache;
            async move {
                let msg = crate::message::Message::from_raw(&raw).expect("message");
                let am = crate::dkimparse::parse_capped_with(&raw, 0, &[])
                    .expect("parse")
                    .message;
                arc::verify(auth, cache, &msg.headers, &am).await
            }
        };
        let add_set = |raw: &[u8], domain: &str, cv: Cv| -> Vec<u8> {
            let msg = crate::message::Message::from_raw(raw).expect("message");
            let sealer = Sealer {
                domain,
                selector: "arc",
                key: &key,
                sign_headers: &headers,
                body_canon: dkim::Canonicalization::Relaxed,
                timestamp: 1_700_000_000,
            };
            let body_at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let prior = arc::collect_sets(&msg.headers).unwrap();
            let set = arc::seal(
                &sealer,
                &msg.headers,
                &raw[body_at..],
                &format!("mx.{domain}; dkim=pass header.d=author.example"),
                &prior,
                arc::next_instance(&msg.headers),
                cv,
            )
            .expect("seal");
            let crlf = |v: &str| v.replace('\n', "\r\n");
            format!(
                "ARC-Seal: {}\r\nARC-Message-Signature: {}\r\nARC-Authentication-Results: {}\r\n",
                crlf(&set.seal),
                crlf(&set.ams),
                crlf(&set.aar)
            )
            .into_bytes()
            .into_iter()
            .chain(raw.iter().copied())
            .collect()
        };
        let raw = b"From: a@author.example\r\nSubject: t\r\n\r\nHello\r\n".to_vec();
        assert_eq!(chain_of(raw.clone()).await.word, ResultWord::None);
        let one = add_set(&raw, "one.example", Cv::None);
        let c = chain_of(one.clone()).await;
        assert_eq!((c.word, c.reason.as_deref()), (ResultWord::Pass, None));
        assert_eq!(c.chain_domains(), "one.example");
        let two = add_set(&one, "two.example", Cv::Pass);
        let c = chain_of(two.clone()).await;
        assert_eq!(
            (c.word, c.chain_domains().as_str()),
            (ResultWord::Pass, "one.example:two.example")
        );
        assert_eq!(
            c.sets[1].results.as_ref().map(|r| r.authserv_id.as_str()),
            Some("mx.two.example")
        );
        let text = String::from_utf8(two.clone()).unwrap();
        // The body changed after the newest seal: the newest AMS fails.
        let c = chain_of(text.replace("Hello", "Bye").into_bytes()).await;
        assert_eq!(
            (c.word, c.reason.as_deref()),
            (ResultWord::Fail, Some("body hash did not verify"))
        );
        // A changed ARC-Seal (its d= now names a domain without our key in the cache, then
        // a changed t=): fails either way, never passes.
        let c = chain_of(
            text.replacen("t=1700000000;\r\n\tb=", "t=1700000001;\r\n\tb=", 1)
                .into_bytes(),
        )
        .await;
        assert_eq!(c.word, ResultWord::Fail, "{:?}", c.reason);
        // mail-auth's answers in our words.
        use mail_auth::arc::ArcError as A;
        assert_eq!(
            judge_arc(&DkimResult::Neutral(Error::Arc(A::FailedBodyHashMatch))),
            (ResultWord::Fail, Some("body hash did not verify".into()))
        );
        assert_eq!(
            judge_arc(&DkimResult::PermError(Error::Dns(
                DnsError::RecordNotFound(ResponseCode::NXDomain)
            ))),
            (ResultWord::Fail, Some("no key for signature".into()))
        );
        assert_eq!(
            judge_arc(&DkimResult::TempError(Error::Dns(DnsError::Resolver(
                "x".into()
            ))))
            .0,
            ResultWord::TempError
        );
        assert_eq!(
            judge_arc(&DkimResult::Fail(Error::Arc(A::ChainTooLong))),
            (ResultWord::Fail, Some("more than 50 ARC sets".into()))
        );
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
