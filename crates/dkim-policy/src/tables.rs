//! OpenDKIM's KeyTable and SigningTable, read unchanged from the files operators already have.
//!
//! KeyTable: `keyname  domain:selector:/path/to/key` (`%` in domain or path = the sender's
//! domain). SigningTable, plain form: `pattern  keyname[:signer]`, looked up in OpenDKIM's order
//! (`user@host`, `host`, `user@.parent` and `.parent` for each parent, `user@*`, `*`);
//! `refile:` form: `*` wildcard patterns tried in file order.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A table problem with file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

impl std::error::Error for TableError {}

/// Where a key's material comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file path, possibly containing `%` (substituted with the sender's domain at signing time).
    Path(PathBuf),
    /// Inline PEM or base64 DER data in the table itself.
    Inline(String),
}

/// One KeyTable row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub name: String,
    pub domain: String,
    pub selector: String,
    pub source: KeySource,
}

impl KeyEntry {
    /// True when the entry depends on the sender's domain (`%` in domain or path).
    pub fn is_templated(&self) -> bool {
        self.domain.contains('%')
            || matches!(&self.source, KeySource::Path(p) if p.to_string_lossy().contains('%'))
    }

    /// The entry with `%` replaced by `sender_domain`.
    pub fn for_domain(&self, sender_domain: &str) -> KeyEntry {
        let source = match &self.source {
            KeySource::Path(p) => KeySource::Path(PathBuf::from(
                p.to_string_lossy().replace('%', sender_domain),
            )),
            other => other.clone(),
        };
        KeyEntry {
            name: self.name.clone(),
            domain: self.domain.replace('%', sender_domain),
            selector: self.selector.clone(),
            source,
        }
    }
}

/// Lines of an OpenDKIM data-set file: `(line number, key, rest)` with comments and blanks dropped.
fn data_lines(text: &str) -> impl Iterator<Item = (usize, &str, &str)> {
    text.lines().enumerate().filter_map(|(i, raw)| {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            return None;
        }
        let (k, v) = match line.find(char::is_whitespace) {
            Some(pos) => (&line[..pos], line[pos..].trim()),
            None => (line, ""),
        };
        Some((i + 1, k, v))
    })
}

/// Strips OpenDKIM's data-set prefix: `file:`, `refile:` or a bare path. Other backends (db:,
/// dsn:, ldap:, lua:...) are not supported and say so.
pub fn dataset_path(spec: &str) -> Result<(bool, PathBuf), String> {
    let spec = spec.trim();
    if let Some(p) = spec.strip_prefix("refile:") {
        return Ok((true, PathBuf::from(p)));
    }
    if let Some(p) = spec.strip_prefix("file:") {
        return Ok((false, PathBuf::from(p)));
    }
    if spec.starts_with('/') || spec.starts_with("./") || spec.starts_with("../") {
        return Ok((false, PathBuf::from(spec)));
    }
    match spec.split_once(':') {
        Some((kind, _)) => Err(format!(
            "data set type '{kind}:' is not supported (use file: or refile:)"
        )),
        None => Ok((false, PathBuf::from(spec))),
    }
}

/// The whole KeyTable, by key name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyTable {
    pub entries: Vec<KeyEntry>,
}

impl KeyTable {
    /// Parses KeyTable text read from `file`; relative key paths resolve against `base`.
    pub fn parse(file: &Path, text: &str, base: &Path) -> Result<KeyTable, TableError> {
        let mut entries: Vec<KeyEntry> = Vec::new();
        for (line, name, rest) in data_lines(text) {
            let err = |m: String| TableError {
                file: file.to_path_buf(),
                line,
                message: m,
            };
            let mut parts = rest.splitn(3, ':');
            let (domain, selector, key) = match (parts.next(), parts.next(), parts.next()) {
                (Some(d), Some(s), Some(k)) if !d.is_empty() && !s.is_empty() && !k.is_empty() => {
                    (d, s, k)
                }
                _ => {
                    return Err(err(format!(
                        "key '{name}': expected 'domain:selector:keyfile', got '{rest}'"
                    )))
                }
            };
            if entries.iter().any(|e| e.name == name) {
                return Err(err(format!("key '{name}' is defined twice")));
            }
            let source = if key.starts_with('/') || key.starts_with("./") || key.starts_with("../")
            {
                let p = PathBuf::from(key);
                KeySource::Path(if p.is_absolute() { p } else { base.join(p) })
            } else if key.contains("-----BEGIN") || !key.contains('/') && key.len() > 60 {
                KeySource::Inline(key.to_string())
            } else {
                KeySource::Path(base.join(key))
            };
            entries.push(KeyEntry {
                name: name.to_string(),
                domain: domain.trim().to_ascii_lowercase(),
                selector: selector.trim().to_string(),
                source,
            });
        }
        Ok(KeyTable { entries })
    }

    pub fn get(&self, name: &str) -> Option<&KeyEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// One SigningTable row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningRule {
    pub pattern: String,
    pub key_name: String,
    /// The optional signer identity (`i=`), `%` allowed.
    pub signer: Option<String>,
    pub line: usize,
}

/// A SigningTable in either of its two forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningTable {
    pub wildcard: bool,
    pub rules: Vec<SigningRule>,
    by_pattern: HashMap<String, Vec<usize>>,
}

/// A SigningTable match: which key, and which identity to sign as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningMatch {
    pub key_name: String,
    pub signer: Option<String>,
}

impl SigningTable {
    /// Parses SigningTable text; `wildcard` is true for `refile:` tables.
    pub fn parse(file: &Path, text: &str, wildcard: bool) -> Result<SigningTable, TableError> {
        let mut rules = Vec::new();
        let mut by_pattern: HashMap<String, Vec<usize>> = HashMap::new();
        for (line, pattern, rest) in data_lines(text) {
            if rest.is_empty() {
                return Err(TableError {
                    file: file.to_path_buf(),
                    line,
                    message: format!("pattern '{pattern}' has no key name"),
                });
            }
            // Several values may follow a pattern in plain tables (whitespace separated).
            for value in rest.split_whitespace() {
                let (key_name, signer) = match value.split_once(':') {
                    Some((k, s)) => (k.to_string(), Some(s.to_string())),
                    None => (value.to_string(), None),
                };
                let pattern = pattern.to_ascii_lowercase();
                by_pattern
                    .entry(pattern.clone())
                    .or_default()
                    .push(rules.len());
                rules.push(SigningRule {
                    pattern,
                    key_name,
                    signer,
                    line,
                });
            }
        }
        Ok(SigningTable {
            wildcard,
            rules,
            by_pattern,
        })
    }

    /// Every rule that matches `user@domain`, in OpenDKIM's precedence order (file order for
    /// `refile:` tables). Callers take the first unless multiple signatures are enabled.
    pub fn lookup(&self, user: &str, domain: &str) -> Vec<SigningMatch> {
        let user = user.to_ascii_lowercase();
        let domain = domain.to_ascii_lowercase();
        let address = format!("{user}@{domain}");
        let indexes: Vec<usize> = if self.wildcard {
            (0..self.rules.len())
                .filter(|&i| wildcard_match(&self.rules[i].pattern, &address))
                .collect()
        } else {
            let mut keys = vec![address.clone(), domain.clone()];
            let mut rest = domain.as_str();
            while let Some(pos) = rest.find('.') {
                rest = &rest[pos + 1..];
                keys.push(format!("{user}@.{rest}"));
                keys.push(format!(".{rest}"));
            }
            keys.push(format!("{user}@*"));
            keys.push("*".to_string());
            let mut seen = Vec::new();
            for k in keys {
                if let Some(list) = self.by_pattern.get(&k) {
                    for &i in list {
                        if !seen.contains(&i) {
                            seen.push(i);
                        }
                    }
                }
            }
            seen
        };
        indexes
            .into_iter()
            .map(|i| {
                let r = &self.rules[i];
                SigningMatch {
                    key_name: r.key_name.replace('%', &domain),
                    signer: r.signer.as_ref().map(|s| s.replace('%', &domain)),
                }
            })
            .collect()
    }
}

/// `*` matches any run of characters (including none); everything else literally, case-insensitively.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi].eq_ignore_ascii_case(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: Vec<SigningMatch>) -> Vec<String> {
        v.into_iter().map(|m| m.key_name).collect()
    }

    #[test]
    fn keytable_opendkim_format() {
        let text = "# comment\npreskey  example.com:foo:/etc/dkimkeys/president\n\
                    dyn  %:mail:/etc/dkimkeys/%.private\nrel example.net:sel:keys/net.pem\n";
        let t = KeyTable::parse(Path::new("/etc/KeyTable"), text, Path::new("/etc/dkim")).unwrap();
        assert_eq!(t.entries.len(), 3);
        let p = t.get("preskey").unwrap();
        assert_eq!(
            (p.domain.as_str(), p.selector.as_str()),
            ("example.com", "foo")
        );
        assert_eq!(p.source, KeySource::Path("/etc/dkimkeys/president".into()));
        let d = t.get("dyn").unwrap().for_domain("example.org");
        assert_eq!(d.domain, "example.org");
        assert_eq!(
            d.source,
            KeySource::Path("/etc/dkimkeys/example.org.private".into())
        );
        assert_eq!(
            t.get("rel").unwrap().source,
            KeySource::Path("/etc/dkim/keys/net.pem".into())
        );
    }

    #[test]
    fn keytable_errors_name_file_and_line() {
        let e = KeyTable::parse(Path::new("/k"), "\nbad example.com:sel\n", Path::new("/"))
            .unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("/k:2: key 'bad'"), "{e}");
    }

    #[test]
    fn plain_signing_table_lookup_order() {
        let text = "*  catchall\n.example.com  parent\nexample.com  host\nboss@example.com  boss\nuser@.example.com userparent\n";
        let t = SigningTable::parse(Path::new("/s"), text, false).unwrap();
        assert_eq!(
            names(t.lookup("boss", "example.com")),
            vec!["boss", "host", "catchall"]
        );
        assert_eq!(
            names(t.lookup("user", "mail.example.com")),
            vec!["userparent", "parent", "catchall"]
        );
        assert_eq!(names(t.lookup("x", "other.org")), vec!["catchall"]);
    }

    #[test]
    fn refile_signing_table_is_file_order_with_wildcards() {
        let text = "president@example.com  preskey\n*@example.com  comkey\n*@example.com  edkey:%\n*@example.net netkey\n";
        let t = SigningTable::parse(Path::new("/s"), text, true).unwrap();
        assert_eq!(
            names(t.lookup("president", "example.com")),
            vec!["preskey", "comkey", "edkey"]
        );
        let m = t.lookup("someone", "Example.COM");
        assert_eq!(m[1].signer.as_deref(), Some("example.com"));
        assert!(t.lookup("a", "example.org").is_empty());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*@example.com", "a@example.com"));
        assert!(!wildcard_match("*@example.com", "a@sub.example.com"));
        assert!(wildcard_match("*@*.example.com", "a@sub.example.com"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("a*b", "ac"));
    }

    #[test]
    fn dataset_prefixes() {
        assert_eq!(
            dataset_path("refile:/x").unwrap(),
            (true, PathBuf::from("/x"))
        );
        assert_eq!(
            dataset_path("file:/x").unwrap(),
            (false, PathBuf::from("/x"))
        );
        assert_eq!(dataset_path("/x").unwrap(), (false, PathBuf::from("/x")));
        assert!(dataset_path("db:/x.db").is_err());
    }
}
