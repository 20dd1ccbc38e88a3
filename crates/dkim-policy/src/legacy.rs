//! opendkim.conf, read as-is: each supported OpenDKIM option maps onto the same TOML model the
//! native configuration uses, so both files behave the same and `dkim-milter convert` can print
//! the TOML for operators who want to migrate. Unknown options are errors naming the file and
//! line (as in OpenDKIM); known options we do not implement are warnings naming the option.

use chassis::configfile::ConfigError;
use chassis::legacyconf::{self, strings, Converted, Entry, TomlBuilder};
use chassis::verdict::ActionKind;
use std::path::Path;
use toml::Value;

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
            // Bytes, not `str` slicing: a non-ASCII name must not split a character (panic).
            .any(|p| {
                name.as_bytes()
                    .get(..p.len())
                    .is_some_and(|b| b.eq_ignore_ascii_case(p.as_bytes()))
            })
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

/// Converts the entries of an opendkim.conf (`source` names the file in the header comment).
pub fn convert(entries: &[Entry], source: &Path) -> Result<Converted, ConfigError> {
    let mut b = TomlBuilder::default();
    // OpenDKIM's defaults where ours differ, so an imported file behaves as it did.
    b.default_value("canonicalization", Value::String("simple/simple".into()));
    b.default_value("multiple_signatures", Value::Boolean(false));
    b.default_value("max_signatures_to_verify", Value::Integer(3));
    // On-Default first, specific On-* after, whatever the order in the file.
    let mut ordered: Vec<&Entry> = entries.iter().filter(|e| e.is("On-Default")).collect();
    ordered.extend(entries.iter().filter(|e| !e.is("On-Default")));
    for e in ordered {
        if legacyconf::service_option(&mut b, e)? {
            continue;
        }
        let name = e.name.to_ascii_lowercase();
        let int = |e: &Entry| e.integer().map(|n| Value::Integer(n as i64));
        let text = |e: &Entry| Value::String(e.value.clone());
        match name.as_str() {
            "mode" => b.set(e, "mode", text(e)),
            "canonicalization" => b.set(e, "canonicalization", text(e)),
            "domain" => {
                let list = e.list();
                if list.len() != 1 {
                    return Err(e.error(
                        "several domains with one KeyFile: use KeyTable and SigningTable instead",
                    ));
                }
                b.set(e, "domain", Value::String(list[0].clone()));
            }
            "selector" => b.set(e, "selector", text(e)),
            "keyfile" => b.set(e, "key_file", text(e)),
            "keytable" => b.set(e, "key_table", text(e)),
            "signingtable" => b.set(e, "signing_table", text(e)),
            "internalhosts" => b.set(e, "internal_hosts", text(e)),
            "peerlist" => b.set(e, "peer_list", text(e)),
            "externalignorelist" => b.set(e, "external_ignore_list", text(e)),
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
            "syslogsuccess" => b.set(e, "log.success", Value::Boolean(e.boolean()?)),
            "logwhy" => b.set(e, "log.why", Value::Boolean(e.boolean()?)),
            "maximumheaders" => b.set(e, "limits.max_header_bytes", int(e)?),
            "temporarydirectory" => b.set(e, "limits.temp_dir", text(e)),
            _ if is_unsupported(&e.name) => b.unsupported(e, "dkim-milter", ""),
            _ => return Err(e.error("unrecognized parameter")),
        }
    }
    b.finish(source, "dkim-milter")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert_entries(e: &[Entry]) -> Result<Converted, ConfigError> {
        convert(e, Path::new("/etc/opendkim.conf"))
    }

    fn entries(text: &str) -> Vec<Entry> {
        legacyconf::parse(Path::new("/etc/opendkim.conf"), text)
    }

    #[test]
    fn debian_style_file_converts() {
        let text = "Syslog yes\nSyslogSuccess yes\nCanonicalization relaxed/simple\nOversignHeaders From\n\
                    UserID opendkim\nUMask 007\nSocket local:/run/opendkim/opendkim.sock\nPidFile /run/opendkim/opendkim.pid\n\
                    TrustAnchorFile /usr/share/dns/root.key\nOn-Default t\nOn-BadSignature a\nMode sv\n";
        let c = convert(&entries(text), Path::new("/etc/opendkim.conf")).unwrap();
        let t: toml::Table = toml::from_str(&c.toml).unwrap();
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
    fn non_ascii_option_name_is_an_error_not_a_panic() {
        // Found by fuzz/ (target legacyconf): the prefix check sliced inside a character.
        let e = convert(
            &entries("Domain\u{fffd}\u{fffd}.com\n"),
            Path::new("/etc/opendkim.conf"),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(is_unsupported("LDAPBindUser") && !is_unsupported("LDA\u{e9}"));
    }

    #[test]
    fn unknown_option_is_an_error_with_line() {
        let e = convert_entries(&entries("Mode sv\nFrobnicate yes\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/opendkim.conf:2: key 'Frobnicate': unrecognized parameter"
        );
    }

    #[test]
    fn bad_action_and_bool_name_the_line() {
        let e = convert_entries(&entries("On-BadSignature bounce\n")).unwrap_err();
        assert_eq!(e.line, Some(1));
        let e = convert_entries(&entries("\nSyslog maybe\n")).unwrap_err();
        assert_eq!(e.line, Some(2));
    }
}
