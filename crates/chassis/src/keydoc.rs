//! Keeps the configuration reference pages (dkim-milter.conf(5), dmarc-milter.conf(5)) honest:
//! the keys a configuration model accepts, read from the model itself, against the keys a page
//! documents. The model is asked, not listed by hand: every table is `deny_unknown_fields`, so
//! parsing a file with an unknown key makes serde name every key the table accepts; a key whose
//! value is itself such a table (or an array of them) is asked again one level down. A key
//! added to a model without a page entry, or a page entry for a key that no longer exists,
//! fails the sync tests of both daemons.

use std::collections::BTreeSet;

/// The key no model has; serde's answer to it lists the keys the table does have.
const PROBE: &str = "__probe__";

/// Every key `parse` accepts, dotted (`limits.workers`; `sign.domain` for an array of tables
/// `[[sign]]`). `parse` parses a whole TOML file and returns its error message, if any.
pub fn model_keys(parse: &dyn Fn(&str) -> Option<String>) -> Result<BTreeSet<String>, String> {
    let mut keys = BTreeSet::new();
    collect(parse, &[], &mut keys)?;
    Ok(keys)
}

/// The TOML text that puts the probe key at `path` (each element a table key; `[]` marks an
/// array of tables).
fn probe_text(path: &[String], value: &str) -> String {
    let mut text = value.to_string();
    for part in path.iter().rev() {
        text = match part.strip_suffix("[]") {
            Some(name) => format!("{name} = [{{ {text} }}]"),
            None => format!("{part} = {{ {text} }}"),
        };
    }
    text
}

fn collect(
    parse: &dyn Fn(&str) -> Option<String>,
    path: &[String],
    keys: &mut BTreeSet<String>,
) -> Result<(), String> {
    let text = probe_text(path, &format!("{PROBE} = 0"));
    let message = parse(&text).ok_or_else(|| format!("the model accepts {text:?}"))?;
    let fields = expected_fields(&message)
        .ok_or_else(|| format!("no list of keys in the answer to {text:?}: {message}"))?;
    let prefix: Vec<&str> = path.iter().map(|p| p.trim_end_matches("[]")).collect();
    for field in fields {
        let mut child = path.to_vec();
        child.push(field.clone());
        if is_table(parse, &child) {
            collect(parse, &child, keys)?;
            continue;
        }
        let last = child.len() - 1;
        child[last] = format!("{field}[]");
        if is_table(parse, &child) {
            collect(parse, &child, keys)?;
            continue;
        }
        let mut dotted = prefix.join(".");
        if !dotted.is_empty() {
            dotted.push('.');
        }
        dotted.push_str(&field);
        keys.insert(dotted);
    }
    Ok(())
}

/// True when the value at `path` is a table that refuses unknown keys.
fn is_table(parse: &dyn Fn(&str) -> Option<String>, path: &[String]) -> bool {
    let text = probe_text(path, &format!("{PROBE} = 0"));
    parse(&text).is_some_and(|m| m.contains(&format!("unknown field `{PROBE}`")))
}

/// The names in serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a` or
/// `b`", or "expected `a`"); None when the message is not that answer.
fn expected_fields(message: &str) -> Option<Vec<String>> {
    if !message.contains(&format!("unknown field `{PROBE}`")) {
        return None;
    }
    let (_, list) = message.split_once("expected ")?;
    if list.starts_with("nothing") || list.starts_with("no fields") {
        return Some(Vec::new());
    }
    Some(
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// The keys a reference page in roff documents: the first word of each `.B` line that opens a
/// `.TP` entry, prefixed with the table of the `.SS [table]` (or `.SS [[table]]`) subsection it
/// stands in; entries under any other heading are top-level keys. `.SH`/`.SS` headings that
/// are not a table end the subsection.
pub fn documented_keys(page: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut table: Option<String> = None;
    let mut after_tp = false;
    for line in page.lines() {
        if let Some(title) = line
            .strip_prefix(".SS ")
            .or_else(|| line.strip_prefix(".SH "))
        {
            let t = title.trim().trim_matches('"');
            table = t
                .strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .map(|t| t.trim_matches(|c| c == '[' || c == ']').to_string());
            after_tp = false;
            continue;
        }
        if line.starts_with(".TP") {
            after_tp = true;
            continue;
        }
        if after_tp {
            after_tp = false;
            if let Some(rest) = line.strip_prefix(".B ") {
                let key = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_matches('"');
                let key = key.replace("\\-", "-").replace("\\(ru", "_");
                if !key.is_empty() {
                    keys.insert(match &table {
                        Some(t) => format!("{t}.{key}"),
                        None => key,
                    });
                }
            }
        }
    }
    keys
}

/// `Err` listing the keys in the model but not on the page and those on the page but not in
/// the model.
pub fn compare(model: &BTreeSet<String>, page: &BTreeSet<String>) -> Result<(), String> {
    let missing: Vec<&String> = model.difference(page).collect();
    let stale: Vec<&String> = page.difference(model).collect();
    if missing.is_empty() && stale.is_empty() {
        return Ok(());
    }
    Err(format!(
        "keys in the configuration model but not on the page: {missing:?}; keys on the page \
         that the model does not accept: {stale:?}"
    ))
}

/// A daemon's whole reference-page test: `page` (a man page) documents every key of the model
/// that `parse` accepts (at least `min_keys` of them, so a probe that finds nothing fails), and
/// no other; and groff renders it without a warning.
pub fn check_reference_page(
    page: &std::path::Path,
    parse: &dyn Fn(&str) -> Option<String>,
    min_keys: usize,
) -> Result<(), String> {
    let text = std::fs::read_to_string(page).map_err(|e| format!("{}: {e}", page.display()))?;
    let model = model_keys(parse)?;
    if model.len() < min_keys {
        return Err(format!(
            "only {} keys found in the model (expected at least {min_keys}): {model:?}",
            model.len()
        ));
    }
    compare(&model, &documented_keys(&text)).map_err(|e| format!("{}: {e}", page.display()))?;
    let out = std::process::Command::new("groff")
        .args(["-man", "-ww", "-z"])
        .arg(page)
        .output()
        .map_err(|e| format!("groff (groff-base) is needed to check the man page: {e}"))?;
    let warnings = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !warnings.is_empty() {
        return Err(format!("{}: groff: {warnings}", page.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// A fake model shaped like the daemons': top-level keys, a table, an array of tables,
    /// and keys whose values are not tables (a list, an enum).
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Fake {
        #[serde(default)]
        socket: String,
        #[serde(default)]
        hosts: Vec<String>,
        #[serde(default)]
        mode: Option<Mode>,
        #[serde(default)]
        limits: Limits,
        #[serde(default)]
        sign: Vec<Sign>,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    #[allow(dead_code)]
    struct Limits {
        workers: usize,
        timeout: u64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sign {
        domain: String,
        selector: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Strict,
        Lax,
    }

    fn fake_parse(text: &str) -> Option<String> {
        toml::from_str::<Fake>(text)
            .err()
            .map(|e| e.message().to_string())
    }

    const PAGE: &str = r#".TH FAKE 5
.SH KEYS
.TP
.B socket
Where to listen.
.TP
.B hosts
Hosts.
.TP
.B mode
strict or lax.
.SS [limits]
.TP
.B workers
Threads.
.TP
.B timeout
Seconds.
.SS [[sign]]
.TP
.B domain
The domain.
.TP
.B selector
The selector.
.SH FILES
.TP
.B /etc/fake.toml
Not a key: FILES is no table, but entries there are top-level, so none may be listed.
"#;

    #[test]
    fn reads_every_key_of_a_model() {
        let keys = model_keys(&fake_parse).unwrap();
        let want: BTreeSet<String> = [
            "socket",
            "hosts",
            "mode",
            "limits.workers",
            "limits.timeout",
            "sign.domain",
            "sign.selector",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(keys, want);
    }

    #[test]
    fn the_check_fails_in_both_directions() {
        let model = model_keys(&fake_parse).unwrap();
        let page_without_files = PAGE.split(".SH FILES").next().unwrap();
        let page = documented_keys(page_without_files);
        assert_eq!(compare(&model, &page), Ok(()));

        // A key of the model left off the page.
        let short = page_without_files.replace(".TP\n.B timeout\nSeconds.\n", "");
        let err = compare(&model, &documented_keys(&short)).unwrap_err();
        assert!(
            err.contains("not on the page: [\"limits.timeout\"]"),
            "{err}"
        );

        // A page entry for a key the model does not have (here: a file listed as an entry).
        let err = compare(&model, &documented_keys(PAGE)).unwrap_err();
        assert!(
            err.contains("does not accept: [\"/etc/fake.toml\"]"),
            "{err}"
        );

        // A key added to the model but not documented: the same answer, from a wider model.
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Wider {
            #[serde(default)]
            socket: String,
            #[serde(default)]
            hosts: Vec<String>,
            #[serde(default)]
            mode: Option<Mode>,
            #[serde(default)]
            limits: Limits,
            #[serde(default)]
            sign: Vec<Sign>,
            #[serde(default)]
            new_key: bool,
        }
        let wider = |t: &str| {
            toml::from_str::<Wider>(t)
                .err()
                .map(|e| e.message().to_string())
        };
        let err = compare(&model_keys(&wider).unwrap(), &page).unwrap_err();
        assert!(err.contains("not on the page: [\"new_key\"]"), "{err}");
    }

    #[test]
    fn a_model_that_accepts_anything_is_an_error() {
        assert!(model_keys(&|_| None).is_err());
    }
}
