//! dmarc-milter's configuration: the TOML file parsed once into a typed model and checked up
//! front, so that a bad value is a start-up (or reload) error with file, line and key, never a
//! surprise in the middle of a message. Key names follow OpenDMARC's options in snake_case.

use chassis::configfile::{self, ConfigError};
use chassis::dns::ResolverSettings;
use chassis::hostlist::HostList;
use chassis::message::Limits;
use chassis::service::ServiceSettings;
use chassis::verdict::ActionKind;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

chassis::raw_config_with_service_keys! {
    default_socket = "inet:8893@127.0.0.1";
    /// The file as written (see etc/dmarc-milter.toml for every key with comments).
    struct RawConfig {
        #[serde(default)]
        authserv_id: Option<String>,
        #[serde(default)]
        trusted_authserv_ids: Vec<String>,
        #[serde(default)]
        trusted_arc_sealers: Vec<String>,
        #[serde(default)]
        ignore_hosts: Option<HostList>,
        #[serde(default)]
        ignore_authenticated_clients: bool,
        #[serde(default)]
        ignore_mail_from: Vec<String>,
        #[serde(default = "yes")]
        spf_self_validate: bool,
        #[serde(default)]
        spf_ignore_results: bool,
        #[serde(default)]
        reject_failures: bool,
        #[serde(default)]
        reject_multi_value_from: bool,
        #[serde(default)]
        multi_from: MultiFrom,
        #[serde(default)]
        required_headers: bool,
        #[serde(default)]
        software_header: bool,
        #[serde(default)]
        received_spf: bool,
        #[serde(default)]
        history: Option<String>,
        #[serde(default)]
        history_pool_size: Option<u64>,
        #[serde(default)]
        history_timeout: Option<u64>,
        #[serde(default)]
        failure_reports: bool,
        #[serde(default)]
        actions: Actions,
    }
}

fn yes() -> bool {
    true
}

/// What a message whose From fields name several domains gets (unless
/// `reject_multi_value_from` rejects it first).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MultiFrom {
    /// Every domain evaluated; the strictest disposition applies (RFC 9989 allows it), all
    /// domains in the A-R and the history row.
    #[default]
    Strictest,
    /// `dmarc=permerror reason="multi-valued From field"`, no policy (OpenDMARC's behaviour).
    Permerror,
}

/// `[actions]`: what to do in the cases OpenDMARC hard-codes or leaves to RejectFailures.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Actions {
    /// A `p=quarantine` failure when `reject_failures` is set: `quarantine` (the milter hold
    /// queue, OpenDMARC's HoldQuarantinedMessages) or `accept` (header only).
    pub quarantine: ActionKind,
    /// A DMARC temperror (DNS trouble): `accept` with `dmarc=temperror` (default), or `tempfail`.
    pub temperror: ActionKind,
    /// The history store could not record the message: `tempfail` (default: nothing is lost
    /// silently) or `accept`.
    pub store_failure: ActionKind,
}

impl Default for Actions {
    fn default() -> Self {
        Self {
            quarantine: ActionKind::Quarantine,
            temperror: ActionKind::Accept,
            store_failure: ActionKind::Tempfail,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    /// Process settings (socket, user, pid file, logging, metrics): fixed until restart.
    pub service: ServiceSettings,
    /// Our authserv-id; `None`: the MTA's `j` macro, else the host name.
    pub authserv_id: Option<String>,
    /// Upstream authserv-ids whose DKIM (and SPF) results we take; empty: we verify DKIM ourselves.
    pub trusted_authserv_ids: Vec<String>,
    /// ARC sealers (`d=` domains, lower case) whose ARC-Authentication-Results may override a
    /// DMARC failure (policy/arc.rs); empty: ARC is not consulted.
    pub trusted_arc_sealers: Vec<String>,
    pub ignore_hosts: HostList,
    pub ignore_authenticated_clients: bool,
    /// Lowercased From domains never evaluated.
    pub ignore_mail_from: Vec<String>,
    pub spf_self_validate: bool,
    pub spf_ignore_results: bool,
    pub reject_failures: bool,
    pub reject_multi_value_from: bool,
    /// Several From domains, when not rejected: the strictest of their policies, or permerror.
    pub multi_from: MultiFrom,
    pub required_headers: bool,
    pub software_header: bool,
    /// Add an RFC 7208 §9.1 `Received-SPF` header for the SPF check we made ourselves.
    pub received_spf: bool,
    /// The history store: an SQLite file or a PostgreSQL URL; `None`: no history kept.
    pub history: Option<crate::history::store::Target>,
    /// PostgreSQL pool size and the bound on one store operation.
    pub history_settings: crate::history::store::StoreSettings,
    /// Keep failing messages of domains with `ruf=` in the history for the report program's
    /// failure reports (off by default, as OpenDMARC's FailureReports).
    pub failure_reports: bool,
    pub actions: Actions,
    pub resolver: ResolverSettings,
    pub limits: Limits,
    pub message_timeout: Duration,
}

chassis::daemon_config!(Config, "dmarc-milter", crate::legacy::convert);

impl Config {
    /// Parses TOML `text` as if read from `path` (relative paths resolve against its directory).
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = configfile::parse_toml(path, text)?;
        let err = |key: &str, msg: String| configfile::key_error(path, text, key, msg);

        if let Err(e) = raw.resolver.parsed_nameservers() {
            return Err(err("nameservers", e));
        }
        if !matches!(
            raw.actions.quarantine,
            ActionKind::Quarantine | ActionKind::Accept
        ) {
            return Err(err(
                "quarantine",
                format!(
                    "'{}': expected quarantine or accept",
                    raw.actions.quarantine
                ),
            ));
        }
        if !matches!(
            raw.actions.temperror,
            ActionKind::Accept | ActionKind::Tempfail
        ) {
            return Err(err(
                "temperror",
                format!("'{}': expected accept or tempfail", raw.actions.temperror),
            ));
        }
        if !matches!(
            raw.actions.store_failure,
            ActionKind::Accept | ActionKind::Tempfail
        ) {
            return Err(err(
                "store_failure",
                format!(
                    "'{}': expected tempfail or accept",
                    raw.actions.store_failure
                ),
            ));
        }
        let defaults = crate::history::store::StoreSettings::default();
        let history_settings = crate::history::store::StoreSettings {
            pool_size: match raw.history_pool_size {
                Some(0) => return Err(err("history_pool_size", "must be at least 1".into())),
                Some(n) if n > 256 => {
                    return Err(err("history_pool_size", format!("{n}: at most 256")))
                }
                Some(n) => n as usize,
                None => defaults.pool_size,
            },
            timeout: match raw.history_timeout {
                Some(0) => return Err(err("history_timeout", "must be at least 1 second".into())),
                Some(n) => Duration::from_secs(n),
                None => defaults.timeout,
            },
        };
        let ignore_mail_from = raw
            .ignore_mail_from
            .iter()
            .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        Ok(Config {
            file: path.to_path_buf(),
            service: ServiceSettings::from_parts(raw.service_parts(), path, text)?,
            authserv_id: raw.authserv_id.filter(|s| !s.trim().is_empty()),
            trusted_authserv_ids: raw
                .trusted_authserv_ids
                .into_iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            trusted_arc_sealers: raw
                .trusted_arc_sealers
                .iter()
                .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|d| !d.is_empty())
                .collect(),
            ignore_hosts: raw.ignore_hosts.unwrap_or_else(HostList::default_internal),
            ignore_authenticated_clients: raw.ignore_authenticated_clients,
            ignore_mail_from,
            spf_self_validate: raw.spf_self_validate,
            spf_ignore_results: raw.spf_ignore_results,
            reject_failures: raw.reject_failures,
            reject_multi_value_from: raw.reject_multi_value_from,
            multi_from: raw.multi_from,
            required_headers: raw.required_headers,
            software_header: raw.software_header,
            received_spf: raw.received_spf,
            history: raw.history.as_deref().map(|h| {
                crate::history::store::Target::parse(h, path.parent().unwrap_or(Path::new(".")))
            }),
            history_settings,
            failure_reports: raw.failure_reports,
            actions: raw.actions,
            resolver: raw.resolver,
            limits: raw.limits.message_limits(path),
            message_timeout: raw.limits.message_timeout(),
        })
    }

    /// True when DKIM results come from upstream A-R headers instead of our own verification.
    pub fn trusts_upstream(&self) -> bool {
        !self.trusted_authserv_ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_opendmarc() {
        let c = Config::from_toml(Path::new("/etc/dmarc-milter.toml"), "").unwrap();
        assert_eq!(c.service.socket.to_string(), "inet:8893@127.0.0.1");
        assert!(c.spf_self_validate);
        assert!(!c.reject_failures);
        assert!(!c.trusts_upstream());
        assert_eq!(c.actions.temperror, ActionKind::Accept);
        assert_eq!(c.actions.store_failure, ActionKind::Tempfail);
        assert!(c.ignore_hosts.matches_ip("127.0.0.1".parse().unwrap()));
        assert!(c.ignore_hosts.matches_ip("::1".parse().unwrap()));
        assert!(c.history.is_none());
        assert!(!c.received_spf);
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let e = Config::from_toml(
            Path::new("/x.toml"),
            "\n[actions]\ntemperror = \"discard\"\n",
        )
        .unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("temperror")));
        let e = Config::from_toml(Path::new("/x.toml"), "rejectfailures = true\n").unwrap_err();
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn history_may_be_a_postgresql_url_with_pool_and_timeout() {
        let c = Config::from_toml(
            Path::new("/etc/authmilter/dmarc.toml"),
            "history = \"postgresql://mx@db.internal/dmarc\"\nhistory_pool_size = 8\nhistory_timeout = 3\n",
        )
        .unwrap();
        assert_eq!(
            c.history,
            Some(crate::history::store::Target::Postgres(
                "postgresql://mx@db.internal/dmarc".into()
            ))
        );
        assert_eq!(c.history_settings.pool_size, 8);
        assert_eq!(c.history_settings.timeout, Duration::from_secs(3));
        let e = Config::from_toml(Path::new("/x.toml"), "history_pool_size = 0\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(1), Some("history_pool_size"))
        );
        let e = Config::from_toml(Path::new("/x.toml"), "\nhistory_timeout = 0\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("history_timeout"))
        );
    }

    #[test]
    fn history_path_is_relative_to_the_file() {
        let c = Config::from_toml(
            Path::new("/etc/authmilter/dmarc.toml"),
            "history = \"hist.sqlite\"\nignore_mail_from = [\"Example.COM.\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.history,
            Some(crate::history::store::Target::Sqlite(
                "/etc/authmilter/hist.sqlite".into()
            ))
        );
        assert_eq!(c.ignore_mail_from, vec!["example.com".to_string()]);
    }
}
