//! What a daemon's policy is, as every front end sees it. A front end (milter today, the
//! OpenSMTPD filter protocol next) fills an [`Envelope`], streams headers and body into a
//! [`MessageBuilder`](crate::message::MessageBuilder), asks the policy for a [`BodyPlan`] at end
//! of headers and for a [`Verdict`] at end of message, and applies it in its own protocol.
//! Nothing here names a protocol: a policy crate depends on this crate only, so the compiler
//! keeps protocol vocabulary out of it.

use crate::configfile::ConfigError;
use crate::envelope::Envelope;
use crate::message::{BodyPlan, HeaderField, Limits, Message};
use crate::service::ServiceSettings;
use crate::verdict::Verdict;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What to do with a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectDecision {
    /// Look at the messages of this connection.
    Continue,
    /// Leave the whole connection alone (PeerList, IgnoreHosts); the string is logged.
    Ignore(String),
}

impl ConnectDecision {
    /// `Ignore` when the client is on `list` (by address or by the name the MTA reported),
    /// naming the list in the log line; `Continue` otherwise.
    pub fn unless_listed(
        list: &crate::hostlist::HostList,
        list_name: &str,
        env: &Envelope,
    ) -> Self {
        let name = (!env.client_name.is_empty()).then_some(env.client_name.as_str());
        if list.matches(env.client_ip, name) {
            ConnectDecision::Ignore(format!("listed in {list_name}"))
        } else {
            ConnectDecision::Continue
        }
    }
}

/// The decision made at end of headers: what the front end must do with the body, and what the
/// policy wants to remember for end of message (so it decides once, not twice).
pub struct HeadersPlan<T> {
    pub body: BodyPlan,
    pub carry: T,
}

/// A daemon's validated configuration model: TOML (or the legacy `.conf`, converted) in, typed
/// settings out. The defaults give both daemons the same loading path.
pub trait DaemonConfig: Sized + Send + Sync + 'static {
    /// The daemon's name, for warnings while converting a legacy file.
    const DAEMON: &'static str;
    /// Parses TOML `text` as if read from `path` (relative paths resolve against its directory).
    fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError>;
    /// Converts a legacy `.conf` file (opendkim.conf, opendmarc.conf) to TOML.
    fn convert_legacy(path: &Path) -> Result<crate::legacyconf::Converted, ConfigError>;
    /// The process settings (socket, user, logging).
    fn service(&self) -> &ServiceSettings;
    /// Per-message buffering limits.
    fn limits(&self) -> &Limits;

    /// Reads, parses and validates `path`, TOML or legacy.
    fn load(path: &Path) -> Result<Self, ConfigError> {
        crate::legacyconf::load(path, Self::DAEMON, Self::convert_legacy, Self::from_toml)
    }
}

/// Implements [`DaemonConfig`] for a configuration struct with `service: ServiceSettings` and
/// `limits: Limits` fields and an inherent `from_toml`, and gives it an inherent `load`, so
/// each daemon states only its name and its legacy converter (`fn(&[Entry], &Path)`, given the
/// file's entries as read, Include followed).
#[macro_export]
macro_rules! daemon_config {
    ($config:ty, $daemon:literal, $convert:path) => {
        $crate::daemon_config!(@impl $config, $daemon, path => $convert(&$crate::legacyconf::read(path)?, path));
    };
    // A daemon whose legacy files come in several formats reads the file itself.
    ($config:ty, $daemon:literal, file = $convert:path) => {
        $crate::daemon_config!(@impl $config, $daemon, path => $convert(path));
    };
    (@impl $config:ty, $daemon:literal, $path:ident => $convert:expr) => {
        impl $crate::policy::DaemonConfig for $config {
            const DAEMON: &'static str = $daemon;

            fn from_toml(
                path: &::std::path::Path,
                text: &str,
            ) -> Result<Self, $crate::configfile::ConfigError> {
                <$config>::from_toml(path, text)
            }

            fn convert_legacy(
                $path: &::std::path::Path,
            ) -> Result<$crate::legacyconf::Converted, $crate::configfile::ConfigError> {
                $convert
            }

            fn service(&self) -> &$crate::service::ServiceSettings {
                &self.service
            }

            fn limits(&self) -> &$crate::message::Limits {
                &self.limits
            }
        }

        impl $config {
            /// Reads, parses and validates `path` (TOML or the legacy format).
            pub fn load(path: &::std::path::Path) -> Result<Self, $crate::configfile::ConfigError> {
                <Self as $crate::policy::DaemonConfig>::load(path)
            }
        }
    };
}

/// One daemon's policy. A value of this type is one configuration snapshot with the live
/// resources built from it (resolver, caches, stores); a reload builds a new one and sessions
/// in flight keep theirs.
pub trait Policy: Sized + Send + Sync + 'static {
    /// The daemon's name, for logs and usage text.
    const NAME: &'static str;
    /// Where the configuration is read from by default.
    const DEFAULT_CONFIG: &'static str;
    /// The validated configuration model.
    type Config: DaemonConfig;
    /// What the end-of-headers decision hands to the end-of-message evaluation.
    type Carry: Send + 'static;
    /// The optional envelope facts this policy reads (any configuration of it).
    const FACTS: crate::envelope::Facts = crate::envelope::Facts::ALL;

    /// The optional envelope facts this configuration reads: [`Policy::FACTS`] unless a fact
    /// is needed only by some configurations (dkim-milter reads MAIL FROM only to match ARC
    /// sealing rules).
    fn facts(&self) -> crate::envelope::Facts {
        Self::FACTS
    }

    /// Loads and validates a configuration file (TOML or the legacy `.conf` format).
    fn load(path: &Path) -> Result<Self::Config, ConfigError> {
        Self::Config::load(path)
    }
    /// Converts a legacy `.conf` file to the equivalent TOML text.
    fn convert(path: &Path) -> Result<String, ConfigError> {
        Self::Config::convert_legacy(path).map(|c| c.toml)
    }
    /// One line for `-n`: what was loaded.
    fn describe(cfg: &Self::Config) -> String;
    /// The process settings of a configuration (socket, user, logging, limits).
    fn service(cfg: &Self::Config) -> &ServiceSettings {
        cfg.service()
    }
    /// Builds the live policy (resolver, stores) from a configuration. May block on file I/O.
    fn build(cfg: Self::Config) -> Result<Self, String>;
    /// The configuration this policy was built from.
    fn config(&self) -> &Self::Config;

    /// Per-message buffering limits.
    fn limits(&self) -> Limits {
        self.config().limits().clone()
    }

    /// Names of MTA-provided session attributes the operator's rules refer to (OpenDKIM's
    /// MacroList), beyond the typed envelope fields every front end fills.
    fn wanted_attributes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether this configuration ever looks at a message body; when it does not, a front end
    /// may ask the MTA not to send bodies at all.
    fn needs_body(&self) -> bool {
        true
    }

    /// The authserv-id the operator configured, if any. When there is one, the MTA's own host
    /// name (milter's `j`, OpenSMTPD's greeting) is never used, so a front end for which that
    /// name costs something (an extra report event and wake-up per connection) need not ask.
    fn configured_authserv_id(&self) -> Option<&str> {
        None
    }

    /// Decides whether to look at this connection at all.
    fn on_connect(&self, env: &Envelope) -> ConnectDecision;

    /// At end of headers: what the body is needed for, and what to carry to end of message.
    fn plan(
        &self,
        env: &Envelope,
        headers: &[HeaderField],
        header_block: &[u8],
    ) -> HeadersPlan<Self::Carry>;

    /// The decision for one complete message. `carry` is what [`plan`](Self::plan) returned;
    /// `None` when the front end never reached end of headers (a message without any).
    fn evaluate(
        self: Arc<Self>,
        env: Envelope,
        msg: Message,
        carry: Option<Self::Carry>,
    ) -> impl Future<Output = Verdict> + Send;

    /// Upper bound for `evaluate`; past it the message is tempfailed and the evaluation is
    /// cancelled, so nothing it would have recorded is recorded.
    fn deadline(&self) -> Duration;
}

/// The current policy snapshot of a daemon, swapped whole on reload: sessions take an `Arc`
/// when they start and keep it to the end, so a reload never changes a message half-way.
pub struct Snapshots<P> {
    current: std::sync::RwLock<Arc<P>>,
}

impl<P> Snapshots<P> {
    pub fn new(value: P) -> Self {
        Self {
            current: std::sync::RwLock::new(Arc::new(value)),
        }
    }

    pub fn current(&self) -> Arc<P> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, value: P) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
    }
}
