//! `dkim-milter convert FILE` for the signing set-ups OpenSMTPD users run before us, besides
//! opendkim.conf: DKIMproxy's `dkimproxy_out.conf` (an SMTP proxy between two extra smtpd
//! listeners) and Rspamd's `dkim_signing.conf` (signing through filter-rspamd). Each becomes
//! the same TOML model: `canonicalization` and one `[[sign]]` entry per domain. Options that
//! only made sense for the old program (DKIMproxy's listen/relay ports and process counts,
//! Rspamd's per-user checks) are listed as notes, never silently dropped.
//!
//! The file format is recognised by content: Rspamd's UCL has `key = value;` and braces,
//! DKIMproxy's has its own option names (`listen`, `relay`, `signature`, `keyfile`, `selector`);
//! anything else is opendkim.conf.

use chassis::configfile::ConfigError;
use chassis::legacyconf::{self, Converted};
use std::collections::HashMap;
use std::path::Path;

/// Which format a legacy file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenDkim,
    DkimProxy,
    Rspamd,
}

/// Recognises the format from the text.
pub fn format_of(text: &str) -> Format {
    let lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let mut proxy = 0;
    for l in lines {
        if l.contains('{') || (l.contains('=') && l.ends_with(';')) {
            return Format::Rspamd;
        }
        let key = l.split_whitespace().next().unwrap_or("");
        if matches!(
            key,
            "listen" | "relay" | "signature" | "sender_map" | "min_servers"
        ) {
            proxy += 1;
        }
    }
    if proxy > 0 {
        Format::DkimProxy
    } else {
        Format::OpenDkim
    }
}

/// The `convert_legacy` of dkim-milter: reads `path` and converts whichever format it is.
pub fn convert_file(path: &Path) -> Result<Converted, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, None, None, format!("cannot read: {e}")))?;
    match format_of(&text) {
        Format::OpenDkim => crate::legacy::convert(&legacyconf::read(path)?, path),
        Format::DkimProxy => from_dkimproxy(path, &text),
        Format::Rspamd => from_rspamd(path, &text),
    }
}

/// A signing entry and where it came from.
struct Sign {
    domain: String,
    selector: String,
    key_file: String,
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn render(source: &Path, from: &str, canon: &str, signs: &[Sign], notes: &[String]) -> Converted {
    let mut toml = format!(
        "# Converted from {} ({from}) by dkim-milter convert.\n",
        source.display()
    );
    for n in notes {
        toml.push_str(&format!("# note: {n}\n"));
    }
    toml.push_str(&format!(
        "\n# Verify mail from outside, sign mail from trusted clients (see internal_hosts, mta).\nmode = \"sv\"\ncanonicalization = {}\n",
        toml_string(canon)
    ));
    for s in signs {
        toml.push_str(&format!(
            "\n[[sign]]\ndomain = {}\nselector = {}\nkey_file = {}\n",
            toml_string(&s.domain),
            toml_string(&s.selector),
            toml_string(&s.key_file)
        ));
    }
    Converted {
        toml,
        origin: HashMap::new(),
        warnings: notes.to_vec(),
    }
}

fn bad(path: &Path, line: usize, key: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::new(path, Some(line), Some(key), msg.into())
}

/// DKIMproxy's `c=` in `signature dkim(c=…)`: one word names the header canonicalization and
/// leaves the body `simple` (RFC 6376 §3.5, as Mail::DKIM writes it).
fn dkimproxy_canon(c: &str) -> Option<String> {
    let c = c.trim().to_ascii_lowercase();
    let ok = |w: &str| w == "simple" || w == "relaxed";
    match c.split_once('/') {
        Some((h, b)) if ok(h) && ok(b) => Some(format!("{h}/{b}")),
        None if ok(&c) => Some(format!("{c}/simple")),
        _ => None,
    }
}

/// Converts a `dkimproxy_out.conf`.
pub fn from_dkimproxy(path: &Path, text: &str) -> Result<Converted, ConfigError> {
    let mut domains: Vec<String> = Vec::new();
    let mut selector = None;
    let mut keyfile = None;
    let mut canon = "simple/simple".to_string();
    let mut notes = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once(char::is_whitespace)
            .map(|(k, v)| (k, v.trim()))
            .unwrap_or((line, ""));
        match key {
            "domain" => domains.extend(
                value
                    .split(',')
                    .map(|d| d.trim().to_ascii_lowercase())
                    .filter(|d| !d.is_empty()),
            ),
            "selector" => selector = Some(value.to_string()),
            "keyfile" => keyfile = Some(value.to_string()),
            "signature" => {
                let (kind, args) = value
                    .split_once('(')
                    .map(|(k, a)| (k.trim(), a.trim_end_matches(')')))
                    .unwrap_or((value, ""));
                match kind {
                    "dkim" => {
                        for arg in args.split(',') {
                            match arg.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                                Some(("c", c)) => {
                                    canon = dkimproxy_canon(c).ok_or_else(|| {
                                        bad(path, n, key, format!("unknown canonicalization '{c}'"))
                                    })?
                                }
                                Some(("a", a)) if a.eq_ignore_ascii_case("rsa-sha256") => {}
                                Some(("a", a)) => notes.push(format!(
                                    "line {n}: a={a} is not used: dkim-milter signs rsa-sha256 (or ed25519-sha256 with an Ed25519 key)"
                                )),
                                Some((k, v)) => notes.push(format!(
                                    "line {n}: signature option {k}={v} is not converted"
                                )),
                                None => {}
                            }
                        }
                    }
                    "domainkeys" => notes.push(format!(
                        "line {n}: DomainKeys signatures are obsolete (RFC 4870, historic) and are not made"
                    )),
                    other => {
                        return Err(bad(path, n, key, format!("unknown signature type '{other}'")))
                    }
                }
            }
            "listen" | "relay" => notes.push(format!(
                "line {n}: {key} {value}: DKIMproxy's extra smtpd listener is not needed; smtpd runs dkim-milter as a filter (docs/opensmtpd.md)"
            )),
            "min_servers" | "min_spare_servers" | "max_servers" | "max_spare_servers" | "user"
            | "group" | "daemonize" | "pidfile" | "reject_error" | "conf_file" => {
                notes.push(format!("line {n}: {key} has no meaning for a filter; dropped"))
            }
            "sender_map" => {
                return Err(bad(
                    path,
                    n,
                    key,
                    "sender_map files are not converted; write one [[sign]] entry per domain",
                ))
            }
            other => notes.push(format!("line {n}: unknown DKIMproxy option '{other}' ignored")),
        }
    }
    let selector = selector.ok_or_else(|| bad(path, 1, "selector", "no selector line"))?;
    let keyfile = keyfile.ok_or_else(|| bad(path, 1, "keyfile", "no keyfile line"))?;
    if domains.is_empty() {
        return Err(bad(path, 1, "domain", "no domain line"));
    }
    let signs: Vec<Sign> = domains
        .into_iter()
        .map(|domain| Sign {
            domain,
            selector: selector.clone(),
            key_file: keyfile.clone(),
        })
        .collect();
    notes.push(
        "key files must be readable by dkim-milter only (chmod 600), or set require_safe_keys = false"
            .into(),
    );
    Ok(render(path, "DKIMproxy", &canon, &signs, &notes))
}

/// A UCL value or block, as much of UCL as `dkim_signing.conf` files use.
#[derive(Debug, Clone, PartialEq)]
enum Ucl {
    Value(String),
    Block(Vec<(String, Ucl)>),
}

/// Parses `key = value;` pairs and `name { … }` blocks (comments with `#`, values quoted or not).
fn parse_ucl(path: &Path, text: &str) -> Result<Vec<(String, Ucl)>, ConfigError> {
    let mut stack: Vec<(String, Vec<(String, Ucl)>)> = vec![(String::new(), Vec::new())];
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let mut line = raw.trim();
        if let Some(hash) = line.find('#').filter(|h| !line[..*h].contains('"')) {
            line = line[..hash].trim();
        }
        while !line.is_empty() {
            if let Some(rest) = line.strip_prefix('}') {
                let (name, items) = stack
                    .pop()
                    .filter(|_| !stack.is_empty())
                    .ok_or_else(|| bad(path, n, "}", "unbalanced '}'"))?;
                let top = stack.last_mut().expect("root");
                top.1.push((name, Ucl::Block(items)));
                line = rest.trim_start_matches(';').trim();
                continue;
            }
            if let Some(open) = line.find('{').filter(|o| !line[..*o].contains('=')) {
                let name = line[..open].trim().trim_matches('"').to_string();
                stack.push((name, Vec::new()));
                line = line[open + 1..].trim();
                continue;
            }
            let (key, rest) = line
                .split_once('=')
                .ok_or_else(|| bad(path, n, line, "expected 'key = value;'"))?;
            let rest = rest.trim();
            let (value, after) = if let Some(q) = rest.strip_prefix('"') {
                let end = q
                    .find('"')
                    .ok_or_else(|| bad(path, n, key.trim(), "unterminated string"))?;
                (q[..end].to_string(), q[end + 1..].trim())
            } else {
                let end = rest.find([';', '}']).unwrap_or(rest.len());
                (rest[..end].trim().to_string(), &rest[end..])
            };
            stack
                .last_mut()
                .expect("root")
                .1
                .push((key.trim().to_string(), Ucl::Value(value)));
            line = after.trim_start_matches(';').trim();
        }
    }
    if stack.len() != 1 {
        return Err(bad(path, text.lines().count(), "{", "unclosed block"));
    }
    Ok(stack.pop().expect("root").1)
}

fn value<'a>(items: &'a [(String, Ucl)], key: &str) -> Option<&'a str> {
    items.iter().find_map(|(k, v)| match v {
        Ucl::Value(s) if k == key => Some(s.as_str()),
        _ => None,
    })
}

/// Converts Rspamd's `dkim_signing.conf` (local.d/ or override.d/): per-domain
/// `domain { NAME { selector = …; path = …; } }` blocks, with the top-level `selector` and
/// `path` (with `$domain` and `$selector`) as defaults.
pub fn from_rspamd(path: &Path, text: &str) -> Result<Converted, ConfigError> {
    let items = parse_ucl(path, text)?;
    let default_selector = value(&items, "selector");
    let default_path = value(&items, "path");
    let mut notes = Vec::new();
    let mut signs = Vec::new();
    for (key, v) in &items {
        match (key.as_str(), v) {
            ("domain", Ucl::Block(domains)) => {
                for (name, d) in domains {
                    let Ucl::Block(d) = d else {
                        continue;
                    };
                    let selector = value(d, "selector").or(default_selector).ok_or_else(|| {
                        bad(path, 1, "selector", format!("no selector for domain {name}"))
                    })?;
                    let file = value(d, "path").or(default_path).ok_or_else(|| {
                        bad(path, 1, "path", format!("no key path for domain {name}"))
                    })?;
                    signs.push(Sign {
                        domain: name.to_ascii_lowercase(),
                        selector: selector.to_string(),
                        key_file: file.replace("$domain", name).replace("$selector", selector),
                    });
                }
            }
            ("selector" | "path", _) => {}
            ("sign_authenticated" | "sign_local" | "sign_inbound", Ucl::Value(v)) => notes.push(format!(
                "{key} = {v}: dkim-milter signs for authenticated and internal_hosts clients and listeners named in mta"
            )),
            ("allow_username_mismatch" | "use_domain" | "use_esld" | "allow_hdrfrom_mismatch"
            | "try_fallback" | "check_pubkey" | "allow_envfrom_empty", Ucl::Value(v)) => notes.push(format!(
                "{key} = {v}: no equivalent; dkim-milter signs when the From address matches a [[sign]] domain or its subdomains"
            )),
            (other, _) => notes.push(format!("option '{other}' is not converted")),
        }
    }
    if signs.is_empty() {
        return Err(bad(
            path,
            1,
            "domain",
            "no domain { … } block: list the domains to sign for (a path template alone names none)",
        ));
    }
    notes.push("key files must be readable by dkim-milter only (chmod 600), or set require_safe_keys = false".into());
    Ok(render(
        path,
        "Rspamd dkim_signing",
        "relaxed/relaxed",
        &signs,
        &notes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROXY: &str = "# dkimproxy_out.conf\nlisten    127.0.0.1:10027\nrelay     127.0.0.1:10028\n\
        domain    example.org,Example.COM\nsignature dkim(c=relaxed)\nsignature domainkeys(c=nofws)\n\
        keyfile   /var/lib/dkimproxy/private.key\nselector  sel1\nmin_servers 5\n";

    const RSPAMD: &str = "# local.d/dkim_signing.conf\npath = \"/var/lib/rspamd/dkim/$domain.$selector.key\";\n\
        selector = \"dkim\";\nallow_username_mismatch = true;\n\ndomain {\n  example.com {\n    selector = \"2024\";\n  }\n\
        example.net {\n    path = \"/etc/keys/net.key\";\n    selector = \"s1\";\n  }\n}\n";

    #[test]
    fn formats_are_told_apart() {
        assert_eq!(format_of(PROXY), Format::DkimProxy);
        assert_eq!(format_of(RSPAMD), Format::Rspamd);
        assert_eq!(
            format_of("Mode sv\nKeyFile /k\nSelector s\nDomain example.com\n"),
            Format::OpenDkim
        );
    }

    fn toml_of(c: &Converted) -> toml::Table {
        c.toml.parse().unwrap()
    }

    #[test]
    fn dkimproxy_domains_selector_key_and_canonicalization() {
        let c = from_dkimproxy(Path::new("/etc/dkimproxy/dkimproxy_out.conf"), PROXY).unwrap();
        let t = toml_of(&c);
        assert_eq!(t["canonicalization"].as_str(), Some("relaxed/simple"));
        let signs = t["sign"].as_array().unwrap();
        let got: Vec<(String, String, String)> = signs
            .iter()
            .map(|s| {
                (
                    s["domain"].as_str().unwrap().to_string(),
                    s["selector"].as_str().unwrap().to_string(),
                    s["key_file"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "example.org".into(),
                    "sel1".into(),
                    "/var/lib/dkimproxy/private.key".into()
                ),
                (
                    "example.com".into(),
                    "sel1".into(),
                    "/var/lib/dkimproxy/private.key".into()
                ),
            ]
        );
        assert!(c.warnings.iter().any(|w| w.contains("DomainKeys")));
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("listen 127.0.0.1:10027")));
        assert!(from_dkimproxy(Path::new("x"), "domain a.example\nkeyfile /k\n").is_err());
        let e = from_dkimproxy(Path::new("x.conf"), "signature dkim(c=odd)\n").unwrap_err();
        assert!(e.to_string().contains("x.conf:1"), "{e}");
    }

    #[test]
    fn rspamd_domain_blocks_with_defaults_and_templates() {
        let c = from_rspamd(Path::new("dkim_signing.conf"), RSPAMD).unwrap();
        let t = toml_of(&c);
        let signs = t["sign"].as_array().unwrap();
        assert_eq!(signs.len(), 2);
        assert_eq!(signs[0]["domain"].as_str(), Some("example.com"));
        assert_eq!(signs[0]["selector"].as_str(), Some("2024"));
        assert_eq!(
            signs[0]["key_file"].as_str(),
            Some("/var/lib/rspamd/dkim/example.com.2024.key")
        );
        assert_eq!(signs[1]["key_file"].as_str(), Some("/etc/keys/net.key"));
        assert_eq!(signs[1]["selector"].as_str(), Some("s1"));
        assert!(c
            .warnings
            .iter()
            .any(|w| w.starts_with("allow_username_mismatch = true")));
        let e = from_rspamd(
            Path::new("d.conf"),
            "path = \"/k/$domain\";\nselector = \"s\";\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("no domain"), "{e}");
        assert!(from_rspamd(Path::new("d.conf"), "domain {\n").is_err());
    }
}
