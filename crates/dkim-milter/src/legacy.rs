//! opendkim.conf, read as-is: each supported OpenDKIM option maps onto the same TOML model the
//! native configuration uses, so both files behave the same and `dkim-milter convert` can print
//! the TOML for operators who want to migrate. Unknown options are errors naming the file and
//! line (as in OpenDKIM); known options we do not implement are warnings naming the option.

use chassis::configfile::ConfigError;
use chassis::legacyconf::{self, Entry};
use chassis::verdict::ActionKind;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// The result of converting one file.
#[derive(Debug, Clone)]
pub struct Converted {
    pub toml: String,
    /// Dotted TOML key → the option and place it came from, to report errors in the operator's file.
    pub origin: HashMap<String, (String, PathBuf, usize)>,
    pub warnings: Vec<String>,
}

/// Options OpenDKIM knows that dkim-milter does not implement: accepted with a warning.
const UNSUPPORTED: &[&str] = &[
    "ATPSDomains",
    "ATPSHashAlgorithm",
    "AuthservIDWithJobID",
    "AutoRestart",
    "AutoRestartCount",
    "AutoRestartRate",
    "Background",
    "BaseDirectory",
    "BodyLengthDB",
    "ChangeRootDirectory",
    "ClockDrift",
    "Diagnostics",
    "DiagnosticDirectory",
    "DNSConnect",
    "DomainKeysCompat",
    "DontSignMailTo",
    "EnableCoredumps",
    "ExemptDomains",
    "FinalPolicyScript",
    "FixCRLF",
    "IdentityHeader",
    "IdentityHeaderRemove",
    "KeepAuthResults",
    "KeepTemporaryFiles",
    "LogResults",
    "MaximumSignedBytes",
    "MilterDebug",
    "MustBeSigned",
    "NoHeaderB",
    "OmitHeaders",
    "POPDBFile",
    "Quarantine",
    "QueryCache",
    "RedirectFailuresTo",
    "RemoveARAll",
    "RemoveARFrom",
    "RemoveOldSignatures",
    "ReplaceHeaders",
    "ReplaceRules",
    "ReportAddress",
    "ReportBccAddress",
    "RequestReports",
    "RequiredHeaders",
    "ResignAll",
    "ResignMailTo",
    "ResolverConfiguration",
    "ResolverTracing",
    "ScreenPolicyScript",
    "SelectCanonicalizationHeader",
    "SelectorHeader",
    "SelectorHeaderRemove",
    "SenderMacro",
    "SetupPolicyScript",
    "SignatureAlgorithm",
    "SingleAuthResult",
    "SMTPURI",
    "SoftwareHeader",
    "StrictHeaders",
    "StrictTestMode",
    "SubDomains",
    "SyslogName",
    "TestDNSData",
    "TestPublicKeys",
    "TrustAnchorFile",
    "TrustSignaturesFrom",
    "UnprotectedKey",
    "UnprotectedPolicy",
    "WeakSyntaxChecks",
    "AlwaysAddARHeader",
    "BogusKey",
    "BogusPolicy",
   
    "DisableCryptoInit",
    "LargeBodyDB",
];
const UNSUPPORTED_PREFIXES: &[&str] = &[
    "LDAP",
    "VBR-",
    "Reputation",
    "On-Reputation",
    "Statistics",
    "Lua",
];

fn is_unsupported(name: &str) -> bool {
    UNSUPPORTED.iter().any(|u| u.eq_ignore_ascii_case(name))
        || UNSUPPORTED_PREFIXES
            .iter()
            .any(|p| name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p))
}

struct Builder {
    top: Table,
    origin: HashMap<String, (String, PathBuf, usize)>,
}

impl Builder {
    fn set(&mut self, entry: &Entry, key: &str, value: Value) {
        let (table, leaf) = match key.split_once('.') {
            Some((t, leaf)) => {
                let sub = self
                    .top
                    .entry(t.to_string())
                    .or_insert_with(|| Value::Table(Table::new()));
                (sub.as_table_mut().expect("section is a table"), leaf)
            }
            None => (&mut self.top, key),
        };
        table.insert(leaf.to_string(), value);
        self.origin.insert(
            key.to_string(),
            (entry.name.clone(), entry.file.clone(), entry.line),
        );
    }
}

fn strings(v: Vec<String>) -> Value {
    Value::Array(v.into_iter().map(Value::String).collect())
}

fn action(entry: &Entry) -> Result<Value, ConfigError> {
    ActionKind::parse(&entry.value)
        .map(|k| Value::String(k.to_string()))
        .ok_or_else(|| {
            entry.error(format!(
                "'{}' is not an action (accept, reject, tempfail, discard, quarantine)",
                entry.value
            ))
        })
}

/// Converts the entries of an opendkim.conf.
pub fn convert(entries: &[Entry]) -> Result<Converted, ConfigError> {
    let mut b = Builder {
        top: Table::new(),
        origin: HashMap::new(),
    };
    let mut warnings = Vec::new();
    // OpenDKIM's defaults where ours differ, so an imported file behaves as it did.
    let defaults = Entry {
        name: "(OpenDKIM default)".into(),
        value: String::new(),
        file: PathBuf::new(),
        line: 0,
    };
    b.set(
        &defaults,
        "canonicalization",
        Value::String("simple/simple".into()),
    );
    b.set(&defaults, "multiple_signatures", Value::Boolean(false));
    b.set(&defaults, "max_signatures_to_verify", Value::Integer(3));
    // On-Default first, specific On-* after, whatever the order in the file.
    let mut ordered: Vec<&Entry> = entries.iter().filter(|e| e.is("On-Default")).collect();
    ordered.extend(entries.iter().filter(|e| !e.is("On-Default")));
    for e in ordered {
        let name = e.name.to_ascii_lowercase();
        let int = |e: &Entry| e.integer().map(|n| Value::Integer(n as i64));
        match name.as_str() {
            "socket" => {
                let v = if e.value.chars().next().is_some_and(|c| c.is_ascii_digit())
                    && e.value.contains('@')
                {
                    format!("inet:{}", e.value)
                } else {
                    e.value.clone()
                };
                b.set(e, "socket", Value::String(v));
            }
            "mode" => b.set(e, "mode", Value::String(e.value.clone())),
            "canonicalization" => b.set(e, "canonicalization", Value::String(e.value.clone())),
            "domain" => {
                let list = e.list();
                if list.len() != 1 {
                    return Err(e.error(
                        "several domains with one KeyFile: use KeyTable and SigningTable instead",
                    ));
                }
                b.set(e, "domain", Value::String(list[0].clone()));
            }
            "selector" => b.set(e, "selector", Value::String(e.value.clone())),
            "keyfile" => b.set(e, "key_file", Value::String(e.value.clone())),
            "keytable" => b.set(e, "key_table", Value::String(e.value.clone())),
            "signingtable" => b.set(e, "signing_table", Value::String(e.value.clone())),
            "internalhosts" => b.set(e, "internal_hosts", Value::String(e.value.clone())),
            "peerlist" => b.set(e, "peer_list", Value::String(e.value.clone())),
            "externalignorelist" => {
                b.set(e, "external_ignore_list", Value::String(e.value.clone()))
            }
            "mta" => b.set(e, "mta", strings(e.list())),
            "macrolist" => b.set(e, "macro_list", strings(e.list())),
            "senderheaders" => b.set(e, "sender_headers", strings(e.list())),
            "signheaders" => b.set(e, "sign_headers", strings(e.list())),
            "oversignheaders" => b.set(e, "oversign_headers", strings(e.list())),
            "signaturettl" => b.set(e, "signature_ttl", int(e)?),
            "minimumkeybits" => b.set(e, "minimum_key_bits", int(e)?),
            "maximumsignaturestoverify" => b.set(e, "max_signatures_to_verify", int(e)?),
            "multiplesignatures" => b.set(e, "multiple_signatures", Value::Boolean(e.boolean()?)),
            "requiresafekeys" => b.set(e, "require_safe_keys", Value::Boolean(e.boolean()?)),
            "authservid" => {
                let v = if e.value.eq_ignore_ascii_case("HOSTNAME") {
                    nix::unistd::gethostname()
                        .ok()
                        .and_then(|h| h.into_string().ok())
                        .unwrap_or_else(|| "localhost".into())
                } else {
                    e.value.clone()
                };
                b.set(e, "authserv_id", Value::String(v));
            }
            "on-default" => {
                let a = action(e)?;
                for k in [
                    "bad_signature",
                    "key_not_found",
                    "no_signature",
                    "dns_error",
                    "internal_error",
                    "signature_error",
                    "security",
                ] {
                    b.set(e, &format!("actions.{k}"), a.clone());
                }
            }
            "on-badsignature" => b.set(e, "actions.bad_signature", action(e)?),
            "on-keynotfound" => b.set(e, "actions.key_not_found", action(e)?),
            "on-nosignature" => b.set(e, "actions.no_signature", action(e)?),
            "on-dnserror" => b.set(e, "actions.dns_error", action(e)?),
            "on-internalerror" => b.set(e, "actions.internal_error", action(e)?),
            "on-signatureerror" => b.set(e, "actions.signature_error", action(e)?),
            "on-security" => b.set(e, "actions.security", action(e)?),
            "nameservers" => b.set(e, "resolver.nameservers", strings(e.list())),
            "dnstimeout" => b.set(e, "resolver.timeout", Value::Float(e.integer()? as f64)),
            "syslog" => {
                let d = if e.boolean()? { "syslog" } else { "stderr" };
                b.set(e, "log.destination", Value::String(d.into()));
            }
            "syslogfacility" => b.set(e, "log.facility", Value::String(e.value.clone())),
            "syslogsuccess" => b.set(e, "log.success", Value::Boolean(e.boolean()?)),
            "logwhy" => b.set(e, "log.why", Value::Boolean(e.boolean()?)),
            "userid" => b.set(e, "user", Value::String(e.value.clone())),
            "pidfile" => b.set(e, "pid_file", Value::String(e.value.clone())),
            "umask" => {
                let mask = chassis::service::parse_mode(&e.value)
                    .ok_or_else(|| e.error(format!("'{}' is not an octal umask", e.value)))?;
                b.set(
                    e,
                    "socket_mode",
                    Value::String(format!("{:04o}", 0o777 & !mask)),
                );
            }
            "maximumheaders" => b.set(e, "limits.max_header_bytes", int(e)?),
            "temporarydirectory" => b.set(e, "limits.temp_dir", Value::String(e.value.clone())),
            _ if is_unsupported(&e.name) => {
                warnings.push(format!(
                    "{}:{}: {} is not supported by dkim-milter and is ignored",
                    e.file.display(),
                    e.line,
                    e.name
                ));
            }
            _ => return Err(e.error("unrecognized parameter")),
        }
    }
    let toml = toml::to_string(&b.top)
        .map_err(|err| ConfigError::new(Path::new("(converted)"), None, None, err.to_string()))?;
    Ok(Converted {
        toml,
        origin: b.origin,
        warnings,
    })
}

/// Reads and converts an opendkim.conf (following Include).
pub fn convert_file(path: &Path) -> Result<Converted, ConfigError> {
    let entries = legacyconf::read(path)?;
    let mut c = convert(&entries)?;
    let header = format!(
        "# Converted from {} by dkim-milter convert.\n",
        path.display()
    );
    let notes: String = c
        .warnings
        .iter()
        .map(|w| format!("# note: {w}\n"))
        .collect();
    c.toml = format!("{header}{notes}\n{}", c.toml);
    Ok(c)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<Entry> {
        legacyconf::parse(Path::new("/etc/opendkim.conf"), text)
    }

    #[test]
    fn debian_style_file_converts() {
        let text = "Syslog yes\nSyslogSuccess yes\nCanonicalization relaxed/simple\nOversignHeaders From\n\
                    UserID opendkim\nUMask 007\nSocket local:/run/opendkim/opendkim.sock\nPidFile /run/opendkim/opendkim.pid\n\
                    TrustAnchorFile /usr/share/dns/root.key\nOn-Default t\nOn-BadSignature a\nMode sv\n";
        let c = convert(&entries(text)).unwrap();
        let t: Table = toml::from_str(&c.toml).unwrap();
        assert_eq!(
            t["socket"].as_str(),
            Some("local:/run/opendkim/opendkim.sock")
        );
        assert_eq!(t["socket_mode"].as_str(), Some("0770"));
        assert_eq!(t["canonicalization"].as_str(), Some("relaxed/simple"));
        assert_eq!(t["actions"]["bad_signature"].as_str(), Some("accept"));
        assert_eq!(t["actions"]["no_signature"].as_str(), Some("tempfail"));
        assert_eq!(t["log"]["destination"].as_str(), Some("syslog"));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains(":9: TrustAnchorFile"));
    }

    #[test]
    fn unknown_option_is_an_error_with_line() {
        let e = convert(&entries("Mode sv\nFrobnicate yes\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/opendkim.conf:2: key 'Frobnicate': unrecognized parameter"
        );
    }

    #[test]
    fn bad_action_and_bool_name_the_line() {
        let e = convert(&entries("On-BadSignature bounce\n")).unwrap_err();
        assert_eq!(e.line, Some(1));
        let e = convert(&entries("\nSyslog maybe\n")).unwrap_err();
        assert_eq!(e.line, Some(2));
    }
}
