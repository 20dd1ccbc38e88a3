//! `authmilter testkey`: opendkim-testkey's job, for RSA and Ed25519 keys. For each key, the
//! published `SELECTOR._domainkey.DOMAIN` record is fetched, parsed, and its public key compared
//! with the one derived from the private key.

use crate::dns::{Answer, Dns};
use crate::report::{Finding, Report};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair;
use base64::Engine;
use chassis::mailauth::common::DomainKey;
use chassis::mailauth::common::TxtRecordParser;
use dkim_policy::config::Config;
use dkim_policy::policy::verify::key_facts;
use dkim_policy::tables::KeySource;
use std::path::Path;

/// One key to check.
#[derive(Debug, Clone)]
pub struct KeyToTest {
    /// KeyTable name (or `DOMAIN:SELECTOR` for a key given on the command line).
    pub name: String,
    pub domain: String,
    pub selector: String,
    /// The private key material, or why it could not be read.
    pub private: Result<Vec<u8>, String>,
}

impl KeyToTest {
    /// A key given on the command line.
    pub fn from_file(domain: &str, selector: &str, path: &Path) -> KeyToTest {
        KeyToTest {
            name: format!("{domain}:{selector}"),
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            selector: selector.to_string(),
            private: std::fs::read(path).map_err(|e| format!("{}: {e}", path.display())),
        }
    }
}

/// Every KeyTable entry (or the single key) of a dkim-milter configuration, then its ARC
/// sealing keys (`[[arc.seal]]`, named `arc.seal DOMAIN`). Entries with `%` (the sender's
/// domain) cannot be tested without a domain and come back as errors.
pub fn keys_from_config(cfg: &Config) -> Vec<KeyToTest> {
    let mut names: Vec<&String> = cfg.keys.keys().collect();
    names.sort();
    let arc = cfg.arc.seal.iter().map(|r| KeyToTest {
        name: format!("arc.seal {}", r.domain),
        domain: r.domain.clone(),
        selector: r.selector.clone(),
        private: std::fs::read(&r.key_file).map_err(|e| format!("{}: {e}", r.key_file.display())),
    });
    names
        .into_iter()
        .map(|name| {
            let e = &cfg.keys[name].entry;
            let private = if e.is_templated() {
                Err("entry depends on the sender's domain (%); test it with --domain, --selector and --key".to_string())
            } else {
                match &e.source {
                    KeySource::Path(p) => {
                        std::fs::read(p).map_err(|err| format!("{}: {err}", p.display()))
                    }
                    KeySource::Inline(data) => Ok(data.clone().into_bytes()),
                }
            };
            KeyToTest {
                name: name.clone(),
                domain: e.domain.clone(),
                selector: e.selector.clone(),
                private,
            }
        })
        .chain(arc)
        .collect()
}

/// The public half of a private key, in the forms a DKIM record may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA: SubjectPublicKeyInfo DER (what opendkim-genkey publishes) and PKCS#1 RSAPublicKey DER
    /// (which some publish instead), and the modulus size.
    Rsa {
        spki: Vec<u8>,
        pkcs1: Vec<u8>,
        bits: usize,
    },
    /// Ed25519: the raw 32-byte key (RFC 8463).
    Ed25519([u8; 32]),
}

fn b64decode(s: &str) -> Option<Vec<u8>> {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .ok()
}

/// Derives the public key from private key material: PEM (PKCS#8 `PRIVATE KEY` or PKCS#1
/// `RSA PRIVATE KEY`) or bare base64 DER, as dkim-milter reads it.
pub fn public_key_of(data: &[u8]) -> Result<PublicKey, String> {
    let text = String::from_utf8_lossy(data);
    let der = if let Some(start) = text.find("-----BEGIN") {
        let body: String = text[start..]
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        b64decode(&body).ok_or("bad base64 inside the PEM block")?
    } else {
        b64decode(&text).ok_or("neither PEM nor base64 DER key data")?
    };
    if let Ok(ed) = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(ed.public_key().as_ref());
        return Ok(PublicKey::Ed25519(raw));
    }
    let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der)
        .or_else(|_| aws_lc_rs::rsa::KeyPair::from_der(&der))
        .map_err(|e| format!("not a usable RSA or Ed25519 private key ({e})"))?;
    let public = pair.public_key();
    let spki = public
        .as_der()
        .map_err(|_| "cannot encode the RSA public key".to_string())?;
    Ok(PublicKey::Rsa {
        spki: spki.as_ref().to_vec(),
        pkcs1: public.as_ref().to_vec(),
        bits: pair.public_modulus_len() * 8,
    })
}

/// A DKIM key record's tags, as published (names lower-cased, values trimmed).
pub fn record_tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|t| {
            let (n, v) = t.split_once('=')?;
            Some((n.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect()
}

fn tag<'a>(tags: &'a [(String, String)], name: &str) -> Option<&'a str> {
    tags.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A published key record that parsed.
#[derive(Debug, Clone)]
pub struct PublishedKey {
    pub name: String,
    pub record: String,
    pub tags: Vec<(String, String)>,
    /// `k=`, lower-cased (default `rsa`).
    pub k: String,
}

/// Looks up and judges the key record at `SELECTOR._domainkey.DOMAIN`: presence, syntax, `k=`/`h=`,
/// `t=y`, key size. Check names are `PREFIX.record`, `PREFIX.tags`, `PREFIX.testing`,
/// `PREFIX.size`. The record comes back when it parsed.
pub async fn check_record(
    dns: &Dns,
    domain: &str,
    selector: &str,
    prefix: &str,
) -> (Vec<Finding>, Option<PublishedKey>) {
    let name = format!("{selector}._domainkey.{domain}");
    let c = |s: &str| format!("{prefix}.{s}");
    let mut out = Vec::new();
    let (answer, dnssec) = dns.txt(&name).await;
    let record = match answer {
        Answer::Found(records) => {
            let dkim: Vec<&String> = records
                .iter()
                .filter(|r| {
                    !r.trim_start().starts_with("v=") || r.trim_start().starts_with("v=DKIM1")
                })
                .collect();
            if dkim.len() > 1 {
                out.push(Finding::fail(
                    &c("record"),
                    &name,
                    format!("{} key records published", dkim.len()),
                    "publish exactly one TXT record at this name; verifiers pick one at random",
                ));
                return (out, None);
            }
            match dkim.first() {
                Some(r) => (*r).clone(),
                None => {
                    out.push(Finding::fail(
                        &c("record"),
                        &name,
                        "TXT records found, none of them a DKIM key (v=DKIM1)",
                        "publish the record `authmilter genkey` printed for this key",
                    ));
                    return (out, None);
                }
            }
        }
        Answer::Empty => {
            out.push(Finding::fail(
                &c("record"),
                &name,
                "no key record published",
                "publish the record `authmilter genkey` printed for this key",
            ));
            return (out, None);
        }
        Answer::Error(e) => {
            out.push(Finding::fail(
                &c("record"),
                &name,
                format!("lookup failed: {e}"),
                "check the resolver settings ([resolver] in the config, or --nameserver)",
            ));
            return (out, None);
        }
    };
    let tags = record_tags(&record);
    if let Err(e) = DomainKey::parse(record.as_bytes()) {
        let revoked = tag(&tags, "p").is_some_and(|p| p.is_empty());
        out.push(if revoked {
            Finding::fail(
                &c("record"),
                &name,
                "key is revoked (empty p=)",
                "publish the current public key, or stop signing with this selector",
            )
        } else {
            Finding::fail(
                &c("record"),
                &name,
                format!("record does not parse: {e}"),
                "republish the record exactly as `authmilter genkey` printed it",
            )
        });
        return (out, None);
    }
    out.push(Finding::ok(
        &c("record"),
        &name,
        format!("key record found; DNSSEC {}", dnssec.as_str()),
    ));

    // k= and h= as published.
    let k = tag(&tags, "k").unwrap_or("rsa").to_ascii_lowercase();
    let h = tag(&tags, "h").map(|h| h.to_ascii_lowercase());
    let tags_detail = format!(
        "k={k}{} h={}",
        if tag(&tags, "k").is_none() {
            " (default)"
        } else {
            ""
        },
        h.as_deref().unwrap_or("(any)")
    );
    let sha256_allowed = h
        .as_deref()
        .is_none_or(|h| h.split(':').any(|a| a.trim() == "sha256"));
    out.push(if sha256_allowed {
        Finding::ok(&c("tags"), &name, tags_detail)
    } else {
        Finding::fail(
            &c("tags"),
            &name,
            tags_detail,
            "h= must allow sha256 (we sign rsa-sha256/ed25519-sha256); drop h= or add sha256",
        )
    });

    // t=y: verifiers must not treat failures differently from no signature.
    let facts = key_facts(&record);
    out.push(if facts.testing {
        Finding::warn(
            &c("testing"),
            &name,
            "t=y: the domain is testing DKIM; verifiers treat failures as no signature",
            "remove t=y once signing works",
        )
    } else {
        Finding::ok(&c("testing"), &name, "not in testing mode (no t=y)")
    });

    // Key size.
    let published_bits = facts.bits;
    out.push(match (k.as_str(), published_bits) {
        ("ed25519", _) => Finding::ok(&c("size"), &name, "Ed25519 (256 bits)"),
        (_, Some(b)) if b < 1024 => Finding::fail(
            &c("size"),
            &name,
            format!("RSA {b} bits"),
            "verifiers reject RSA keys under 1024 bits (RFC 8301); generate a 2048-bit key",
        ),
        (_, Some(b)) if b < 2048 => Finding::warn(
            &c("size"),
            &name,
            format!("RSA {b} bits"),
            "2048 bits is current practice; rotate to a 2048-bit key",
        ),
        (_, Some(b)) => Finding::ok(&c("size"), &name, format!("RSA {b} bits")),
        (_, None) => Finding::fail(
            &c("size"),
            &name,
            "p= is not an RSA public key",
            "republish the record exactly as `authmilter genkey` printed it",
        ),
    });

    (
        out,
        Some(PublishedKey {
            name,
            record,
            tags,
            k,
        }),
    )
}

/// Checks one key; findings are about `SELECTOR._domainkey.DOMAIN`.
pub async fn check_key(dns: &Dns, key: &KeyToTest) -> Vec<Finding> {
    let (mut out, published) = check_record(dns, &key.domain, &key.selector, "testkey").await;
    let Some(PublishedKey { name, tags, k, .. }) = published else {
        return out;
    };
    // The match itself.
    let published = tag(&tags, "p").and_then(b64decode).unwrap_or_default();
    let private = match &key.private {
        Ok(data) => public_key_of(data),
        Err(e) => Err(e.clone()),
    };
    let subject = &name;
    out.push(match private {
        Err(e) => Finding::fail(
            "testkey.match",
            subject,
            format!("key '{}': cannot read the private key: {e}", key.name),
            "fix the KeyTable entry or the key file",
        ),
        Ok(PublicKey::Ed25519(raw)) => {
            if k != "ed25519" {
                Finding::fail(
                    "testkey.match",
                    subject,
                    format!("key '{}' is Ed25519 but the record says k={k}", key.name),
                    "publish k=ed25519 with the key's 32-byte public key",
                )
            } else if published == raw {
                Finding::ok(
                    "testkey.match",
                    subject,
                    format!("key '{}' (Ed25519) matches the published key", key.name),
                )
            } else {
                Finding::fail(
                    "testkey.match",
                    subject,
                    format!(
                        "key '{}' (Ed25519) does NOT match the published key",
                        key.name
                    ),
                    "publish the record for this private key (or sign with the matching key)",
                )
            }
        }
        Ok(PublicKey::Rsa { spki, pkcs1, bits }) => {
            if k != "rsa" {
                Finding::fail(
                    "testkey.match",
                    subject,
                    format!("key '{}' is RSA but the record says k={k}", key.name),
                    "publish k=rsa with the key's public key",
                )
            } else if published == spki || published == pkcs1 {
                Finding::ok(
                    "testkey.match",
                    subject,
                    format!("key '{}' (RSA {bits}) matches the published key", key.name),
                )
            } else {
                Finding::fail(
                    "testkey.match",
                    subject,
                    format!(
                        "key '{}' (RSA {bits}) does NOT match the published key",
                        key.name
                    ),
                    "publish the record for this private key (or sign with the matching key)",
                )
            }
        }
    });
    out
}

/// Checks every key; the report's worst status is the command's exit status.
pub async fn testkey(dns: &Dns, keys: &[KeyToTest]) -> Report {
    let mut findings = Vec::new();
    for k in keys {
        findings.extend(check_key(dns, k).await);
    }
    let target = match keys {
        [one] => format!("{}._domainkey.{}", one.selector, one.domain),
        many => format!("{} key(s)", many.len()),
    };
    Report::new("testkey", &target, findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_of_generated_keys() {
        use dkim_policy::keygen::{generate, KeyKind};
        let ed = generate(KeyKind::Ed25519).unwrap();
        match public_key_of(ed.private_pem.as_bytes()).unwrap() {
            PublicKey::Ed25519(raw) => assert_eq!(b64decode(&ed.public_b64).unwrap(), raw),
            other => panic!("{other:?}"),
        }
        let rsa = generate(KeyKind::Rsa(2048)).unwrap();
        match public_key_of(rsa.private_pem.as_bytes()).unwrap() {
            PublicKey::Rsa { spki, bits, .. } => {
                assert_eq!(b64decode(&rsa.public_b64).unwrap(), spki);
                assert_eq!(bits, 2048);
            }
            other => panic!("{other:?}"),
        }
        assert!(public_key_of(b"nonsense!").is_err());
    }

    #[test]
    fn arc_sealing_keys_are_tested_too() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("arc.pem");
        dkim_policy::keygen::create_key_file(&key, "lists.example", "arc").unwrap();
        let cfg = dir.path().join("dkim-milter.toml");
        let c = Config::from_toml(
            &cfg,
            "[[arc.seal]]\ndomain = \"lists.example\"\nselector = \"arc\"\nkey_file = \"arc.pem\"\n",
        )
        .unwrap();
        let keys = keys_from_config(&c);
        assert_eq!(keys.len(), 1);
        assert_eq!(
            (
                keys[0].name.as_str(),
                keys[0].domain.as_str(),
                keys[0].selector.as_str()
            ),
            ("arc.seal lists.example", "lists.example", "arc")
        );
        assert_eq!(
            keys[0].private.as_deref().ok(),
            std::fs::read(&key).ok().as_deref()
        );
    }

    #[test]
    fn tags() {
        let t = record_tags("v=DKIM1; K=ed25519 ; p=abc");
        assert_eq!(tag(&t, "k"), Some("ed25519"));
        assert_eq!(tag(&t, "p"), Some("abc"));
        assert_eq!(tag(&t, "h"), None);
    }
}
