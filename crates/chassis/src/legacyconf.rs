//! OpenDKIM/OpenDMARC-style configuration files (`Name value` lines), the format both projects
//! share: case-insensitive names, `#` comments anywhere, first-character booleans, and (OpenDKIM)
//! `Include` up to five levels deep. Each daemon maps the entries onto its own TOML model, so an
//! operator's old file keeps working and `convert` can print the equivalent TOML.

use crate::configfile::ConfigError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// One `Name value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name as written.
    pub name: String,
    pub value: String,
    pub file: PathBuf,
    pub line: usize,
}

impl Entry {
    /// Case-insensitive name comparison, as OpenDKIM's `strcasecmp`.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// An error about this entry, naming its file and line.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(&self.file, Some(self.line), Some(&self.name), message)
    }

    /// OpenDKIM's boolean rule: only the first character counts.
    pub fn boolean(&self) -> Result<bool, ConfigError> {
        match self.value.chars().next() {
            Some('T' | 't' | 'Y' | 'y' | '1') => Ok(true),
            Some('F' | 'f' | 'N' | 'n' | '0') => Ok(false),
            _ => Err(self.error(format!(
                "'{}' is not a boolean (yes/no, true/false, 1/0)",
                self.value
            ))),
        }
    }

    /// A non-negative integer.
    pub fn integer(&self) -> Result<u64, ConfigError> {
        self.value
            .trim()
            .parse()
            .map_err(|_| self.error(format!("'{}' is not a number", self.value)))
    }

    /// A comma-separated list (`csl:` prefix optional), as for MTA, SenderHeaders, ...
    pub fn list(&self) -> Vec<String> {
        let v = self.value.strip_prefix("csl:").unwrap_or(&self.value);
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// A legacy file converted to TOML text, with where each TOML key came from.
#[derive(Debug, Clone)]
pub struct Converted {
    pub toml: String,
    /// Dotted TOML key → the option and place it came from, to report errors in the operator's file.
    pub origin: HashMap<String, (String, PathBuf, usize)>,
    pub warnings: Vec<String>,
}

/// Builds the TOML document while remembering the origin of every key.
#[derive(Default)]
pub struct TomlBuilder {
    top: Table,
    origin: HashMap<String, (String, PathBuf, usize)>,
    pub warnings: Vec<String>,
}

impl TomlBuilder {
    /// Sets `key` (`name` or `section.name`) from `entry`.
    pub fn set(&mut self, entry: &Entry, key: &str, value: Value) {
        let (table, leaf) = match key.split_once('.') {
            Some((t, leaf)) => {
                let sub = self
                    .top
                    .entry(t.to_string())
                    .or_insert_with(|| Value::Table(Table::new()));
                match sub.as_table_mut() {
                    Some(t) => (t, leaf),
                    None => return,
                }
            }
            None => (&mut self.top, key),
        };
        table.insert(leaf.to_string(), value);
        self.origin.insert(
            key.to_string(),
            (entry.name.clone(), entry.file.clone(), entry.line),
        );
    }

    /// Sets a default that is not from the file (OpenDKIM/OpenDMARC's own default).
    pub fn default_value(&mut self, key: &str, value: Value) {
        let marker = Entry {
            name: "(default)".into(),
            value: String::new(),
            file: PathBuf::new(),
            line: 0,
        };
        self.set(&marker, key, value);
    }

    /// Records that `entry` names an option we know but do not implement.
    pub fn unsupported(&mut self, entry: &Entry, daemon: &str, advice: &str) {
        let extra = if advice.is_empty() {
            String::new()
        } else {
            format!(" ({advice})")
        };
        self.warnings.push(format!(
            "{}:{}: {} is not supported by {daemon} and is ignored{extra}",
            entry.file.display(),
            entry.line,
            entry.name
        ));
    }

    /// The TOML text, headed by where it came from and the warnings.
    pub fn finish(self, source: &Path, daemon: &str) -> Result<Converted, ConfigError> {
        let body = toml::to_string(&self.top)
            .map_err(|e| ConfigError::new(source, None, None, e.to_string()))?;
        let notes: String = self
            .warnings
            .iter()
            .map(|w| format!("# note: {w}\n"))
            .collect();
        let toml = format!(
            "# Converted from {} by {daemon} convert.\n{notes}\n{body}",
            source.display()
        );
        Ok(Converted {
            toml,
            origin: self.origin,
            warnings: self.warnings,
        })
    }
}

/// Loads a daemon's configuration file, TOML or legacy: legacy files are converted with
/// `convert` (warnings printed and logged), then both go through `from_toml`, with errors in a
/// converted file pointed back at the operator's line.
pub fn load<T>(
    path: &Path,
    daemon: &str,
    convert: impl Fn(&Path) -> Result<Converted, ConfigError>,
    from_toml: impl Fn(&Path, &str) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, None, None, format!("cannot read: {e}")))?;
    if !is_legacy(path, &text) {
        return from_toml(path, &text);
    }
    let converted = convert(path)?;
    for w in &converted.warnings {
        eprintln!("{daemon}: warning: {w}");
        tracing::warn!("{w}");
    }
    from_toml(path, &converted.toml).map_err(|e| relocate(e, &converted))
}

/// The options OpenDKIM and OpenDMARC share (socket, authserv-id, DNS timeout, logging, user,
/// pid file, umask), converted the same way for both daemons. Returns false for any other
/// option, which the daemon's own converter then handles.
pub fn service_option(b: &mut TomlBuilder, e: &Entry) -> Result<bool, ConfigError> {
    let text = || Value::String(e.value.clone());
    match e.name.to_ascii_lowercase().as_str() {
        "socket" => b.set(e, "socket", Value::String(socket_value(&e.value))),
        "authservid" => b.set(e, "authserv_id", Value::String(authserv_id_value(&e.value))),
        "dnstimeout" => b.set(e, "resolver.timeout", Value::Float(e.integer()? as f64)),
        "syslog" => {
            let d = if e.boolean()? { "syslog" } else { "stderr" };
            b.set(e, "log.destination", Value::String(d.into()));
        }
        "syslogfacility" => b.set(e, "log.facility", text()),
        "userid" => b.set(e, "user", text()),
        "pidfile" => b.set(e, "pid_file", text()),
        "umask" => b.set(e, "socket_mode", umask_to_mode(e)?),
        _ => return Ok(false),
    }
    Ok(true)
}

/// A list of strings as a TOML array.
pub fn strings(v: Vec<String>) -> Value {
    Value::Array(v.into_iter().map(Value::String).collect())
}

/// Maps an error found in the converted TOML back to the operator's line.
pub fn relocate(err: ConfigError, c: &Converted) -> ConfigError {
    match err.key.as_ref().and_then(|k| c.origin.get(k)) {
        Some((name, file, line)) if *line > 0 => {
            ConfigError::new(file, Some(*line), Some(name), err.message)
        }
        _ => err,
    }
}

/// The host name for `AuthservID HOSTNAME`.
pub fn authserv_id_value(value: &str) -> String {
    if value.eq_ignore_ascii_case("HOSTNAME") {
        crate::forged::hostname()
    } else {
        value.to_string()
    }
}

/// The socket mode implied by a `UMask` value.
pub fn umask_to_mode(entry: &Entry) -> Result<Value, ConfigError> {
    let mask = crate::service::parse_mode(&entry.value)
        .ok_or_else(|| entry.error(format!("'{}' is not an octal umask", entry.value)))?;
    Ok(Value::String(format!("{:04o}", 0o777 & !mask)))
}

/// `Socket` values may omit `inet:` (`8891@localhost`).
pub fn socket_value(value: &str) -> String {
    if value.chars().next().is_some_and(|c| c.is_ascii_digit()) && value.contains('@') {
        format!("inet:{value}")
    } else {
        value.to_string()
    }
}

const MAX_INCLUDE_DEPTH: usize = 5;

/// Reads `path` and every file it includes, in order.
pub fn read(path: &Path) -> Result<Vec<Entry>, ConfigError> {
    let mut out = Vec::new();
    read_into(path, 0, &mut out)?;
    Ok(out)
}

fn read_into(path: &Path, depth: usize, out: &mut Vec<Entry>) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, None, None, format!("cannot read: {e}")))?;
    for entry in parse(path, &text) {
        if entry.is("Include") {
            if depth + 1 >= MAX_INCLUDE_DEPTH {
                return Err(entry.error(format!(
                    "includes nested deeper than {MAX_INCLUDE_DEPTH} levels"
                )));
            }
            let target = crate::configfile::relative_to(path, Path::new(&entry.value));
            read_into(&target, depth + 1, out)?;
        } else {
            out.push(entry);
        }
    }
    Ok(())
}

/// Parses the text of one file (no includes followed).
pub fn parse(path: &Path, text: &str) -> Vec<Entry> {
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                return None;
            }
            let (name, value) = match line.find(char::is_whitespace) {
                Some(pos) => (&line[..pos], line[pos..].trim()),
                None => (line, ""),
            };
            Some(Entry {
                name: name.to_string(),
                value: value.to_string(),
                file: path.to_path_buf(),
                line: i + 1,
            })
        })
        .collect()
}

/// Does `path` look like an OpenDKIM/OpenDMARC file rather than TOML? By extension first
/// (`.conf` vs `.toml`), then by content: TOML assigns with `=`.
pub fn is_legacy(path: &Path, text: &str) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => false,
        Some("conf") => true,
        _ => !text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .all(|l| l.contains('=') || l.starts_with('[')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_values_comments_and_booleans() {
        let e = parse(
            Path::new("/etc/opendkim.conf"),
            "# c\nSyslog\t\tyes\nmode sv # trailing\n\nKeyFile /k\n",
        );
        assert_eq!(e.len(), 3);
        assert!(e[0].is("syslog") && e[0].boolean().unwrap());
        assert_eq!(
            (e[1].name.as_str(), e[1].value.as_str(), e[1].line),
            ("mode", "sv", 3)
        );
        assert!(e[2].boolean().is_err());
        let err = e[2].boolean().unwrap_err().to_string();
        assert!(
            err.starts_with("/etc/opendkim.conf:5: key 'KeyFile'"),
            "{err}"
        );
    }

    #[test]
    fn includes_nest_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.conf"),
            "Mode s\nInclude b.conf\nSyslog no\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.conf"), "Socket inet:1@127.0.0.1\n").unwrap();
        let e = read(&dir.path().join("a.conf")).unwrap();
        let names: Vec<&str> = e.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, vec!["Mode", "Socket", "Syslog"]);
        std::fs::write(dir.path().join("loop.conf"), "Include loop.conf\n").unwrap();
        assert!(read(&dir.path().join("loop.conf")).is_err());
    }

    #[test]
    fn lists_and_detection() {
        let e = &parse(Path::new("x"), "MTA csl:a, b,,c\n")[0];
        assert_eq!(e.list(), vec!["a", "b", "c"]);
        assert!(is_legacy(Path::new("/etc/opendkim.conf"), "Mode sv"));
        assert!(!is_legacy(Path::new("/etc/x.toml"), "Mode sv"));
        assert!(!is_legacy(Path::new("/etc/x"), "mode = \"sv\"\n[log]\n"));
        assert!(is_legacy(Path::new("/etc/x"), "Mode sv\n"));
    }
}
