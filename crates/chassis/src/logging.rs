//! Log setup for both daemons: stderr (systemd's journal picks it up) or syslog with the
//! daemon's name as ident and a configurable facility, as OpenDKIM/OpenDMARC log. Every line
//! about a message starts with the MTA's queue id, so operators can grep one message.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Destination {
    #[default]
    Stderr,
    Syslog,
    /// One JSON object per line on stderr, including one `verdict` object per message.
    Json,
}

/// `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub destination: Destination,
    /// error, warn, info, debug, trace; or a full tracing filter directive.
    pub level: String,
    /// Syslog facility name (mail, daemon, local0..local7).
    pub facility: String,
    /// Log successful verifications and signatures (OpenDKIM's SyslogSuccess).
    pub success: bool,
    /// Log why a message was not signed or verified (OpenDKIM's LogWhy).
    pub why: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            destination: Destination::Stderr,
            level: "info".into(),
            facility: "mail".into(),
            success: true,
            why: false,
        }
    }
}

fn facility(name: &str) -> Result<syslog_tracing::Facility, String> {
    use syslog_tracing::Facility::*;
    Ok(match name.to_ascii_lowercase().as_str() {
        "mail" => Mail,
        "daemon" => Daemon,
        "user" => User,
        "local0" => Local0,
        "local1" => Local1,
        "local2" => Local2,
        "local3" => Local3,
        "local4" => Local4,
        "local5" => Local5,
        "local6" => Local6,
        "local7" => Local7,
        other => return Err(format!("unknown syslog facility '{other}'")),
    })
}

/// Installs the global subscriber. Call once at start; a second call is a no-op (tests).
pub fn init(settings: &LogSettings, ident: &'static str) -> Result<(), String> {
    let filter = EnvFilter::try_new(&settings.level)
        .map_err(|e| format!("bad log level '{}': {e}", settings.level))?;
    match settings.destination {
        Destination::Stderr => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .try_init();
        }
        Destination::Json => {
            let _ = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .try_init();
        }
        Destination::Syslog => {
            let ident = std::ffi::CString::new(ident).map_err(|e| e.to_string())?;
            let ident: &'static std::ffi::CStr = Box::leak(ident.into_boxed_c_str());
            let writer = syslog_tracing::Syslog::new(
                ident,
                syslog_tracing::Options::LOG_PID,
                facility(&settings.facility)?,
            )
            .ok_or_else(|| "syslog is already initialised".to_string())?;
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_target(false)
                .with_level(false)
                .without_time()
                .with_ansi(false)
                .with_writer(writer)
                .try_init();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facilities() {
        assert!(facility("mail").is_ok());
        assert!(facility("LOCAL3").is_ok());
        assert!(facility("kern2").is_err());
    }
}
