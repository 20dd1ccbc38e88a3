//! opendkim.conf / opendmarc.conf text, converted to each daemon's TOML.
//!
//! Property checked besides "never panics": whatever a converter produces is valid TOML (it is
//! what `convert` prints and what the daemon then loads). Includes are not followed (that is
//! `legacyconf::read`, which opens files), so nothing here touches the file system.
#![no_main]

use std::path::Path;

use chassis::configfile::ConfigError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/etc/opendkim.conf");
    let _ = chassis::legacyconf::is_legacy(Path::new("/etc/x"), &text);
    let entries = chassis::legacyconf::parse(path, &text);
    for e in &entries {
        let _ = e.boolean();
        let _ = e.integer();
        let _ = e.list();
    }
    let dkim = dkim_policy::legacy::convert(&entries, path);
    let dmarc = dmarc_policy::legacy::convert(&entries, Path::new("/etc/opendmarc.conf"));
    for (who, converted) in [("dkim", dkim), ("dmarc", dmarc)] {
        match converted {
            Ok(c) => {
                if let Err(e) = c.toml.parse::<toml::Table>() {
                    panic!("{who} conversion is not TOML: {e}\n{}", c.toml);
                }
                for key in c.origin.keys() {
                    let probe = ConfigError::new(path, None, Some(key), "probe");
                    let _ = chassis::legacyconf::relocate(probe, &c);
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
