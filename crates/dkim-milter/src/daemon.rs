//! dkim-milter plugged into the shared process lifecycle (command line, reload, shutdown).

use crate::config::Config;
use crate::filter::DkimFilter;
use crate::runtime::Runtime;
use chassis::configfile::ConfigError;
use chassis::lifecycle::Daemon;
use chassis::service::ServiceSettings;
use std::path::Path;

pub struct DkimDaemon;

impl Daemon for DkimDaemon {
    const NAME: &'static str = "dkim-milter";
    const DEFAULT_CONFIG: &'static str = "/etc/dkim-milter.toml";
    type Config = Config;
    type Filter = DkimFilter;

    fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load(path)
    }

    fn convert(path: &Path) -> Result<String, ConfigError> {
        crate::legacy::convert_file(path).map(|c| c.toml)
    }

    fn describe(cfg: &Config) -> String {
        format!(
            "{} key(s), {} signing rule(s)",
            cfg.keys.len(),
            cfg.signing_table.rules.len()
        )
    }

    fn service(cfg: &Config) -> &ServiceSettings {
        &cfg.service
    }

    fn build(cfg: Config) -> Result<DkimFilter, String> {
        Ok(DkimFilter::new(Runtime::new(cfg)?))
    }

    fn reload(filter: &DkimFilter, cfg: Config) -> Result<(), String> {
        filter.replace(Runtime::new(cfg)?);
        Ok(())
    }
}
