//! dmarc-milter plugged into the shared process lifecycle (command line, reload, shutdown).

use crate::config::Config;
use crate::filter::DmarcFilter;
use crate::runtime::Runtime;
use chassis::configfile::ConfigError;
use chassis::lifecycle::Daemon;
use chassis::service::ServiceSettings;
use std::path::Path;

pub struct DmarcDaemon;

impl Daemon for DmarcDaemon {
    const NAME: &'static str = "dmarc-milter";
    const DEFAULT_CONFIG: &'static str = "/etc/dmarc-milter.toml";
    type Config = Config;
    type Filter = DmarcFilter;

    fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load(path)
    }

    fn convert(path: &Path) -> Result<String, ConfigError> {
        crate::legacy::convert_file(path).map(|c| c.toml)
    }

    fn describe(cfg: &Config) -> String {
        let history = match &cfg.history {
            Some(p) => format!("history {}", p.display()),
            None => "no history store".to_string(),
        };
        let dkim = if cfg.trusts_upstream() {
            format!("DKIM results from {}", cfg.trusted_authserv_ids.join(", "))
        } else {
            "DKIM verified here".to_string()
        };
        format!("{dkim}; {history}")
    }

    fn service(cfg: &Config) -> &ServiceSettings {
        &cfg.service
    }

    fn build(cfg: Config) -> Result<DmarcFilter, String> {
        Ok(DmarcFilter::new(Runtime::new(cfg)?))
    }

    fn reload(filter: &DmarcFilter, cfg: Config) -> Result<(), String> {
        filter.replace(Runtime::new(cfg)?);
        Ok(())
    }
}
