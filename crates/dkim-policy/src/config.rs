//! dkim-milter's configuration: the TOML file parsed once into a typed model, with keys and
//! tables loaded and checked up front so that a bad key is a start-up (or reload) error, never
//! a surprise in the middle of a message.

use crate::keys::{self, SharedKey};
use crate::tables::{dataset_path, KeyEntry, KeySource, KeyTable, SigningTable};
use chassis::configfile::{self, ConfigError};
use chassis::dns::ResolverSettings;
use chassis::hostlist::HostList;
use chassis::mailauth::dkim::Canonicalization;
use chassis::message::Limits;
use chassis::service::ServiceSettings;
use chassis::verdict::ActionKind;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// RFC 6376 §5.4.1's recommended header fields, OpenDKIM's default signing list.
pub const DEFAULT_SIGN_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Resent-Date",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

chassis::raw_config_with_service_keys! {
    default_socket = "inet:8891@127.0.0.1";
    /// The file as written (see etc/dkim-milter.toml for every key with comments).
    struct RawConfig {
        #[serde(default)]
        authserv_id: Option<String>,
        #[serde(default = "default_mode")]
        mode: String,
        #[serde(default = "default_canon")]
        canonicalization: String,
        #[serde(default)]
        domain: Option<String>,
        #[serde(default)]
        selector: Option<String>,
        #[serde(default)]
        key_file: Option<PathBuf>,
        #[serde(default)]
        sign: Vec<RawSign>,
        #[serde(default)]
        key_table: Option<String>,
        #[serde(default)]
        signing_table: Option<String>,
        #[serde(default = "yes")]
        multiple_signatures: bool,
        #[serde(default = "yes")]
        require_safe_keys: bool,
        #[serde(default)]
        create_missing_keys: bool,
        #[serde(default)]
        internal_hosts: Option<HostList>,
        #[serde(default)]
        peer_list: Option<HostList>,
        #[serde(default)]
        external_ignore_list: Option<HostList>,
        #[serde(default)]
        mta: Vec<String>,
        #[serde(default)]
        macro_list: Vec<String>,
        #[serde(default = "default_sender_headers")]
        sender_headers: Vec<String>,
        #[serde(default)]
        sign_headers: Option<Vec<String>>,
        #[serde(default = "default_oversign")]
        oversign_headers: Vec<String>,
        #[serde(default)]
        signature_ttl: u64,
        #[serde(default = "default_min_bits")]
        minimum_key_bits: usize,
        #[serde(default = "default_min_bits")]
        minimum_signing_key_bits: usize,
        #[serde(default = "default_max_sigs")]
        max_signatures_to_verify: usize,
        #[serde(default)]
        allow_sha1: bool,
        #[serde(default)]
        actions: RawActions,
        #[serde(default)]
        arc: crate::arc::RawArc,
    }
}

/// `[[sign]]`: one domain signed with one key (mail from the domain and its subdomains), the
/// TOML form of a one-line KeyTable + SigningTable pair; what `convert` writes for DKIMproxy
/// and Rspamd configurations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSign {
    domain: String,
    selector: String,
    key_file: PathBuf,
}

fn default_mode() -> String {
    "sv".into()
}
fn default_canon() -> String {
    "relaxed/relaxed".into()
}
fn yes() -> bool {
    true
}
fn default_sender_headers() -> Vec<String> {
    vec!["From".into()]
}
fn default_oversign() -> Vec<String> {
    vec!["From".into()]
}
fn default_min_bits() -> usize {
    1024
}
fn default_max_sigs() -> usize {
    10
}

/// `[actions]`: OpenDKIM's On-* settings with its defaults.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RawActions {
    pub bad_signature: ActionKind,
    pub key_not_found: ActionKind,
    pub no_signature: ActionKind,
    pub dns_error: ActionKind,
    pub internal_error: ActionKind,
    pub signature_error: ActionKind,
    pub security: ActionKind,
}

impl Default for RawActions {
    fn default() -> Self {
        Self {
            bad_signature: ActionKind::Accept,
            key_not_found: ActionKind::Accept,
            no_signature: ActionKind::Accept,
            dns_error: ActionKind::Tempfail,
            internal_error: ActionKind::Tempfail,
            signature_error: ActionKind::Reject,
            security: ActionKind::Tempfail,
        }
    }
}

/// The On-* actions.
pub type Actions = RawActions;

/// A key ready to sign with: the KeyTable row and, unless it depends on the sender's domain, the
/// loaded key.
#[derive(Debug, Clone)]
pub struct SigningKeyEntry {
    pub entry: KeyEntry,
    pub key: Option<SharedKey>,
}

/// A `MacroList` item: the macro and the values that make a client trusted (empty: any value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacroRule {
    pub name: String,
    pub values: Vec<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    /// Process settings (socket, user, pid file, logging, metrics): fixed until restart.
    pub service: ServiceSettings,
    pub authserv_id: Option<String>,
    pub sign: bool,
    pub verify: bool,
    pub header_canon: Canonicalization,
    pub body_canon: Canonicalization,
    pub keys: HashMap<String, SigningKeyEntry>,
    /// Keys of `%`-templated entries, loaded on first use (see [`keys::KeyFileCache`]).
    pub templated_keys: keys::KeyFileCache,
    pub signing_table: SigningTable,
    pub multiple_signatures: bool,
    pub require_safe_keys: bool,
    pub internal_hosts: HostList,
    pub peer_list: HostList,
    pub external_ignore_list: HostList,
    pub mta: Vec<String>,
    pub macro_list: Vec<MacroRule>,
    pub sender_headers: Vec<String>,
    pub sign_headers: Vec<String>,
    pub oversign_headers: Vec<String>,
    pub signature_ttl: u64,
    pub minimum_key_bits: usize,
    /// Smallest RSA key we sign with (at least 1024, RFC 8301); keys under 2048 bits sign with
    /// a warning at load.
    pub minimum_signing_key_bits: usize,
    pub max_signatures_to_verify: usize,
    pub allow_sha1: bool,
    pub actions: Actions,
    /// ARC verification and sealing (`[arc]`).
    pub arc: crate::arc::ArcSettings,
    pub resolver: ResolverSettings,
    pub limits: Limits,
    pub message_timeout: Duration,
}

fn parse_canon(s: &str) -> Option<(Canonicalization, Canonicalization)> {
    let one = |p: &str| match p.trim().to_ascii_lowercase().as_str() {
        "relaxed" => Some(Canonicalization::Relaxed),
        "simple" => Some(Canonicalization::Simple),
        _ => None,
    };
    match s.split_once('/') {
        Some((h, b)) => Some((one(h)?, one(b)?)),
        // RFC 6376: a lone value names the header canonicalization; the body one is simple.
        None => Some((one(s)?, Canonicalization::Simple)),
    }
}

fn parse_macro_rule(s: &str) -> Result<MacroRule, String> {
    let s = s.trim();
    let (name, values) = match s.split_once(['=', '|']) {
        Some((n, v)) => (
            n,
            v.split('|')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect(),
        ),
        None => (s, Vec::new()),
    };
    let name = name
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .to_string();
    if name.is_empty() {
        return Err(format!(
            "bad macro_list entry '{s}': expected NAME, NAME=VALUE or NAME|V1|V2"
        ));
    }
    Ok(MacroRule { name, values })
}

chassis::daemon_config!(Config, "dkim-milter", file = crate::migrate::convert_file);

impl Config {
    /// Parses TOML `text` as if read from `path` (relative paths resolve against its directory).
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = configfile::parse_toml(path, text)?;
        let err = |key: &str, msg: String| configfile::key_error(path, text, key, msg);
        let rel = |p: &Path| configfile::relative_to(path, p);
        if raw.minimum_signing_key_bits < keys::RSA_FLOOR_BITS {
            return Err(err(
                "minimum_signing_key_bits",
                format!("must be at least {} (RFC 8301 §3.2)", keys::RSA_FLOOR_BITS),
            ));
        }

        let mode = raw.mode.to_ascii_lowercase();
        if mode.is_empty() || !mode.chars().all(|c| c == 's' || c == 'v') {
            return Err(err(
                "mode",
                format!("'{}' must be made of 's' (sign) and 'v' (verify)", raw.mode),
            ));
        }
        let (header_canon, body_canon) = parse_canon(&raw.canonicalization).ok_or_else(|| {
            err(
                "canonicalization",
                format!(
                    "'{}': expected simple or relaxed, as HEADER/BODY",
                    raw.canonicalization
                ),
            )
        })?;

        let mut key_table = KeyTable::default();
        let mut signing_table = SigningTable::parse(path, "", false).expect("empty table parses");
        match (&raw.key_table, &raw.signing_table) {
            (Some(kt), Some(st)) => {
                let (_, kt_path) = dataset_path(kt).map_err(|m| err("key_table", m))?;
                let kt_path = rel(&kt_path);
                let kt_text = std::fs::read_to_string(&kt_path).map_err(|e| {
                    err(
                        "key_table",
                        format!("cannot read {}: {e}", kt_path.display()),
                    )
                })?;
                let base = kt_path.parent().unwrap_or(Path::new("/")).to_path_buf();
                key_table = KeyTable::parse(&kt_path, &kt_text, &base)
                    .map_err(|e| err("key_table", e.to_string()))?;
                let (wild, st_path) = dataset_path(st).map_err(|m| err("signing_table", m))?;
                let st_path = rel(&st_path);
                let st_text = std::fs::read_to_string(&st_path).map_err(|e| {
                    err(
                        "signing_table",
                        format!("cannot read {}: {e}", st_path.display()),
                    )
                })?;
                signing_table = SigningTable::parse(&st_path, &st_text, wild)
                    .map_err(|e| err("signing_table", e.to_string()))?;
                for rule in &signing_table.rules {
                    if !rule.key_name.contains('%') && key_table.get(&rule.key_name).is_none() {
                        return Err(err(
                            "signing_table",
                            format!(
                                "{}:{}: key '{}' is not in the KeyTable",
                                st_path.display(),
                                rule.line,
                                rule.key_name
                            ),
                        ));
                    }
                }
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(err(
                    "key_table",
                    "key_table needs a signing_table too".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    "signing_table",
                    "signing_table needs a key_table too".into(),
                ))
            }
        }
        // The single-key shorthand and `[[sign]]` entries: sign mail from the domain and its
        // subdomains, after any SigningTable rules.
        let mut shorthand: Vec<(String, String, String, PathBuf)> = Vec::new();
        match (&raw.domain, &raw.selector, &raw.key_file) {
            (Some(d), Some(s), Some(k)) => {
                shorthand.push(("default".into(), d.clone(), s.clone(), k.clone()));
            }
            (None, None, None) => {}
            _ => {
                return Err(err(
                    "domain",
                    "domain, selector and key_file go together".into(),
                ))
            }
        }
        for (i, sign) in raw.sign.iter().enumerate() {
            if sign.domain.trim().is_empty() || sign.selector.trim().is_empty() {
                return Err(err(
                    "sign",
                    format!("entry {}: domain and selector must not be empty", i + 1),
                ));
            }
            shorthand.push((
                format!("sign{}", i + 1),
                sign.domain.trim().to_string(),
                sign.selector.trim().to_string(),
                sign.key_file.clone(),
            ));
        }
        if !shorthand.is_empty() {
            let mut text: String = signing_table
                .rules
                .iter()
                .map(|r| match &r.signer {
                    Some(s) => format!("{} {}:{}\n", r.pattern, r.key_name, s),
                    None => format!("{} {}\n", r.pattern, r.key_name),
                })
                .collect();
            for (name, d, s, k) in &shorthand {
                key_table.entries.push(KeyEntry {
                    name: name.clone(),
                    domain: d.to_ascii_lowercase(),
                    selector: s.clone(),
                    source: KeySource::Path(rel(k)),
                });
                text.push_str(&format!("{d} {name}\n.{d} {name}\n"));
            }
            signing_table = SigningTable::parse(path, &text, signing_table.wildcard)
                .map_err(|e| err("sign", e.to_string()))?;
        }

        let mut keys = HashMap::new();
        for entry in &key_table.entries {
            let key = if entry.is_templated() {
                None
            } else {
                Some(
                    load_entry_key(
                        entry,
                        raw.require_safe_keys,
                        raw.create_missing_keys,
                        raw.minimum_signing_key_bits,
                    )
                    .map_err(|m| {
                        err(
                            if raw.key_table.is_some() {
                                "key_table"
                            } else {
                                "key_file"
                            },
                            m,
                        )
                    })?,
                )
            };
            keys.insert(
                entry.name.clone(),
                SigningKeyEntry {
                    entry: entry.clone(),
                    key,
                },
            );
        }

        let macro_list = raw
            .macro_list
            .iter()
            .map(|m| parse_macro_rule(m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| err("macro_list", m))?;
        if raw.resolver.parsed_nameservers().is_err() {
            let e = raw.resolver.parsed_nameservers().unwrap_err();
            return Err(err("nameservers", e));
        }
        if raw.max_signatures_to_verify == 0 {
            return Err(err("max_signatures_to_verify", "must be at least 1".into()));
        }
        let arc = crate::arc::ArcSettings::from_raw(
            std::mem::take(&mut raw.arc),
            raw.require_safe_keys,
            raw.minimum_signing_key_bits,
            rel,
        )
        .map_err(|m| err("arc", m))?;

        Ok(Config {
            file: path.to_path_buf(),
            service: ServiceSettings::from_parts(raw.service_parts(), path, text)?,
            authserv_id: raw.authserv_id,
            sign: mode.contains('s'),
            verify: mode.contains('v'),
            header_canon,
            body_canon,
            keys,
            templated_keys: keys::KeyFileCache::default(),
            signing_table,
            multiple_signatures: raw.multiple_signatures,
            require_safe_keys: raw.require_safe_keys,
            internal_hosts: raw
                .internal_hosts
                .unwrap_or_else(HostList::default_internal),
            peer_list: raw.peer_list.unwrap_or_else(HostList::empty),
            external_ignore_list: raw.external_ignore_list.unwrap_or_else(HostList::empty),
            mta: raw.mta,
            macro_list,
            sender_headers: raw.sender_headers,
            sign_headers: raw
                .sign_headers
                .unwrap_or_else(|| DEFAULT_SIGN_HEADERS.iter().map(|s| s.to_string()).collect()),
            oversign_headers: raw.oversign_headers,
            signature_ttl: raw.signature_ttl,
            minimum_key_bits: raw.minimum_key_bits,
            minimum_signing_key_bits: raw.minimum_signing_key_bits,
            max_signatures_to_verify: raw.max_signatures_to_verify,
            allow_sha1: raw.allow_sha1,
            actions: raw.actions,
            arc,
            resolver: raw.resolver,
            limits: raw.limits.message_limits(path),
            message_timeout: raw.limits.message_timeout(),
        })
    }

    /// The key for a signing-table match, loading `%`-templated keys for this sender's domain.
    pub fn resolve_key(
        &self,
        key_name: &str,
        sender_domain: &str,
    ) -> Result<(KeyEntry, SharedKey), String> {
        let slot = self
            .keys
            .get(key_name)
            .ok_or_else(|| format!("key '{key_name}' is not in the KeyTable"))?;
        match &slot.key {
            Some(k) => Ok((slot.entry.clone(), k.clone())),
            None => {
                let entry = slot.entry.for_domain(sender_domain);
                let key = match &entry.source {
                    KeySource::Path(p) => self
                        .templated_keys
                        .load(p, self.require_safe_keys, |k| {
                            keys::check_signing_size(
                                k,
                                &format!("key '{}' ({})", entry.name, p.display()),
                                self.minimum_signing_key_bits,
                            )
                        })
                        .map_err(|e| format!("key '{}': {e}", entry.name))?,
                    KeySource::Inline(_) => load_entry_key(
                        &entry,
                        self.require_safe_keys,
                        false,
                        self.minimum_signing_key_bits,
                    )?,
                };
                Ok((entry, key))
            }
        }
    }
}

/// Loads (or, with `create_missing`, first creates) the key of one KeyTable entry and checks
/// its size against `minimum_bits` (see [`keys::check_signing_size`]).
fn load_entry_key(
    entry: &KeyEntry,
    require_safe: bool,
    create_missing: bool,
    minimum_bits: usize,
) -> Result<SharedKey, String> {
    let named = |e: String| format!("key '{}': {e}", entry.name);
    let (key, what) = match &entry.source {
        KeySource::Inline(data) => (
            keys::parse_key(data.as_bytes()).map_err(named)?,
            format!("key '{}' (inline)", entry.name),
        ),
        KeySource::Path(p) => {
            if create_missing && !p.exists() {
                crate::keygen::create_key_file(p, &entry.domain, &entry.selector).map_err(|e| {
                    format!("key '{}': cannot create {}: {e}", entry.name, p.display())
                })?;
            }
            (
                keys::load_key_file(p, require_safe).map_err(named)?,
                format!("key '{}' ({})", entry.name, p.display()),
            )
        }
    };
    keys::check_signing_size(&key, &what, minimum_bits).map_err(named)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalization_forms() {
        assert_eq!(
            parse_canon("relaxed/simple"),
            Some((Canonicalization::Relaxed, Canonicalization::Simple))
        );
        assert_eq!(
            parse_canon("simple"),
            Some((Canonicalization::Simple, Canonicalization::Simple))
        );
        assert_eq!(parse_canon("loose/relaxed"), None);
    }

    #[test]
    fn macro_rules() {
        assert_eq!(
            parse_macro_rule("daemon_name=ORIGINATING").unwrap(),
            MacroRule {
                name: "daemon_name".into(),
                values: vec!["ORIGINATING".into()]
            }
        );
        assert_eq!(
            parse_macro_rule("{daemon_name}|A|B").unwrap(),
            MacroRule {
                name: "daemon_name".into(),
                values: vec!["A".into(), "B".into()]
            }
        );
        assert!(parse_macro_rule("=x").is_err());
    }

    #[test]
    fn defaults_without_keys_verify_only_config() {
        let c = Config::from_toml(
            Path::new("/etc/dkim-milter.toml"),
            "socket = \"inet:8891@127.0.0.1\"\n",
        )
        .unwrap();
        assert!(c.sign && c.verify);
        assert_eq!(c.actions.dns_error, ActionKind::Tempfail);
        assert_eq!(c.actions.signature_error, ActionKind::Reject);
        assert_eq!(c.max_signatures_to_verify, 10);
        assert!(c.keys.is_empty());
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let e = Config::from_toml(Path::new("/x.toml"), "\nmode = \"sx\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("mode")));
        let e = Config::from_toml(
            Path::new("/x.toml"),
            "[actions]\nbad_signature = \"bounce\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(2));
        let e = Config::from_toml(Path::new("/x.toml"), "socket = \"tcp:25\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("socket")));
    }

    #[test]
    fn arc_seal_entries_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        // Off by default: verify on, nothing sealed.
        let c = Config::from_toml(&cfg, "").unwrap();
        assert!(c.arc.verify && c.arc.seal.is_empty());
        let e = Config::from_toml(
            &cfg,
            "mode = \"v\"\n[[arc.seal]]\ndomain = \"lists.example\"\nselector = \"arc\"\nkey_file = \"nope.pem\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("arc"), "{e}");
        assert!(
            e.message.contains("arc.seal entry 1") && e.message.contains("nope.pem"),
            "{e}"
        );
        let e = Config::from_toml(
            &cfg,
            "[[arc.seal]]\ndomain = \"lists.example\"\nselector = \"arc\"\nkey_file = \"k.pem\"\nbogus = 1\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        let key = dir.path().join("k.pem");
        crate::keygen::create_key_file(&key, "lists.example", "arc").unwrap();
        let c = Config::from_toml(
            &cfg,
            "[[arc.seal]]\ndomain = \"Lists.Example.\"\nselector = \"arc\"\nkey_file = \"k.pem\"\nsenders = [\".Lists.example\", \"*\"]\n",
        )
        .unwrap();
        assert_eq!(c.arc.seal[0].domain, "lists.example");
        assert_eq!(c.arc.seal[0].senders, vec!["lists.example", "*"]);
        let e = Config::from_toml(
            &cfg,
            "[[arc.seal]]\ndomain = \"lists.example\"\nselector = \"arc\"\nkey_file = \"k.pem\"\nbody_canonicalization = \"loose\"\n",
        )
        .unwrap_err();
        assert!(e.message.contains("body_canonicalization 'loose'"), "{e}");
    }

    #[test]
    fn missing_key_file_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        let text = "domain = \"example.com\"\nselector = \"s\"\nkey_file = \"nope.pem\"\n";
        let e = Config::from_toml(&cfg, text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("key_file"));
        assert!(e.message.contains("nope.pem"), "{e}");
    }
}
