//! Reading a TOML configuration into a typed model, once, with errors that name the file, the
//! line and the key so an operator can fix them without guessing.

use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration problem, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn new(
        file: &Path,
        line: Option<usize>,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_path_buf(),
            line,
            key: key.map(str::to_string),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key '{key}'")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Reads and parses `path` as TOML into `T`.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, None, None, format!("cannot read: {e}")))?;
    parse_toml(path, &text)
}

/// Parses TOML `text` (read from `path`) into `T`.
pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, key) = match e.span() {
            Some(span) => locate(text, span.start),
            None => (None, None),
        };
        // toml's message repeats a source excerpt; keep only the diagnosis.
        let message = e.message().trim().to_string();
        let key = key.or_else(|| quoted_field(&message));
        ConfigError {
            file: path.to_path_buf(),
            line,
            key,
            message,
        }
    })
}

/// Line number (1-based) of byte `offset`, and the dotted key defined on that line, if any.
fn locate(text: &str, offset: usize) -> (Option<usize>, Option<String>) {
    let offset = offset.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    let mut table = String::new();
    let mut key = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if i + 1 > line_no {
            break;
        }
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if i + 1 == line_no {
                key = Some(table.clone());
            }
            continue;
        }
        if i + 1 == line_no {
            if let Some((k, _)) = t.split_once('=') {
                let k = k.trim().trim_matches('"');
                key = Some(if table.is_empty() {
                    k.to_string()
                } else {
                    format!("{table}.{k}")
                });
            } else if !table.is_empty() {
                key = Some(table.clone());
            }
        }
    }
    // A value spanning several lines (arrays): walk back to the line holding `key =`.
    if key.is_none() || key.as_deref() == Some(table.as_str()) {
        let lines: Vec<&str> = text.lines().collect();
        for l in lines[..line_no.min(lines.len())].iter().rev() {
            let t = l.trim();
            if t.starts_with('[') {
                break;
            }
            if let Some((k, _)) = t.split_once('=') {
                let k = k.trim().trim_matches('"');
                key = Some(if table.is_empty() {
                    k.to_string()
                } else {
                    format!("{table}.{k}")
                });
                break;
            }
        }
    }
    (Some(line_no), key)
}

fn quoted_field(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = message[start..].find('`')? + start;
    Some(message[start..end].to_string())
}

/// The 1-based line where `key = ...` is assigned in TOML `text` (the first such line), for
/// errors found after parsing, when serde's spans are gone.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim_start();
            t.starts_with(key) && t[key.len()..].trim_start().starts_with('=')
        })
        .map(|i| i + 1)
}

/// An error about `key` of the TOML file `path` with contents `text`.
pub fn key_error(path: &Path, text: &str, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(path, line_of(text, key), Some(key), message)
}

/// Resolves a path from a config file relative to the file's directory (absolute paths stay).
pub fn relative_to(config_file: &Path, value: &Path) -> PathBuf {
    if value.is_absolute() {
        value.to_path_buf()
    } else {
        config_file.parent().unwrap_or(Path::new(".")).join(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
        #[serde(default)]
        limits: Limits,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Limits {
        max: Option<u32>,
    }

    #[test]
    fn type_error_names_line_and_dotted_key() {
        let text = "name = \"x\"\n\n[limits]\nmax = \"lots\"\n";
        let e = parse_toml::<Sample>(Path::new("/etc/x.toml"), text).unwrap_err();
        assert_eq!(e.line, Some(4));
        assert_eq!(e.key.as_deref(), Some("limits.max"));
        assert!(
            e.to_string()
                .starts_with("/etc/x.toml:4: key 'limits.max': "),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let text = "name = \"x\"\nnmae = 1\n";
        let e = parse_toml::<Sample>(Path::new("a.toml"), text).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(e.key.as_deref(), Some("nmae"));
    }

    #[test]
    fn missing_key_is_reported() {
        let e = parse_toml::<Sample>(Path::new("a.toml"), "").unwrap_err();
        assert!(e.message.contains("name"), "{e}");
    }
}
