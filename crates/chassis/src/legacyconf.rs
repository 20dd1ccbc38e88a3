//! OpenDKIM/OpenDMARC-style configuration files (`Name value` lines), the format both projects
//! share: case-insensitive names, `#` comments anywhere, first-character booleans, and (OpenDKIM)
//! `Include` up to five levels deep. Each daemon maps the entries onto its own TOML model, so an
//! operator's old file keeps working and `convert` can print the equivalent TOML.

use crate::configfile::ConfigError;
use std::path::{Path, PathBuf};

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
