//! dmarc-milter: dmarc-policy served over the milter protocol, or as an OpenSMTPD filter with
//! `--opensmtpd`, by the shared front ends. The command line is the shared daemon one
//! (chassis::cli), named and documented here.

use chassis::cli::{DaemonInfo, DaemonTask};
use chassis::policy::Policy as _;

type Policy = dmarc_policy::runtime::Runtime;

const INFO: DaemonInfo = DaemonInfo {
    name: Policy::NAME,
    default_config: Policy::DEFAULT_CONFIG,
    about: "DMARC, SPF and DKIM-results milter (OpenDMARC replacement)",
    long_about: "dmarc-milter checks SPF itself, takes DKIM results from its own verification \
        or from trusted upstream Authentication-Results, evaluates the sender's DMARC policy and \
        acts on it, behind Postfix or Sendmail (milter protocol) or OpenSMTPD (--opensmtpd). It \
        reads its TOML configuration or an unchanged opendmarc.conf, adds \
        Authentication-Results, and records every message in an SQLite history store for \
        aggregate reports. It stays in the foreground and logs to stderr, syslog or JSON as \
        configured.",
    version: env!("CARGO_PKG_VERSION"),
};

fn main() -> std::process::ExitCode {
    match INFO.parse_env() {
        Err(code) => std::process::ExitCode::from(code),
        Ok(DaemonTask::Serve {
            config,
            opensmtpd: true,
        }) => smtpdfront::lifecycle::main::<Policy>(config, INFO.version),
        Ok(task) => milterfront::lifecycle::main::<Policy>(task, INFO.version),
    }
}
