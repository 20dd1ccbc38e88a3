//! opendmarc.conf, read as-is: each supported OpenDMARC option maps onto the TOML model, so the
//! old file keeps working and `dmarc-milter convert` prints the TOML. Unknown options are errors
//! naming the file and line; known options we do not implement are warnings.

use chassis::configfile::ConfigError;
use chassis::legacyconf::{self, strings, Converted, Entry, TomlBuilder};
use std::path::Path;
use toml::Value;

/// OpenDMARC options accepted with a warning (and the advice given).
const UNSUPPORTED: &[(&str, &str)] = &[
    ("AutoRestart", "use systemd's Restart="),
    ("AutoRestartCount", "use systemd's Restart="),
    ("AutoRestartRate", "use systemd's Restart="),
    ("Background", "dmarc-milter runs in the foreground"),
    ("BaseDirectory", ""),
    ("ChangeRootDirectory", "use systemd's sandboxing"),
    ("CopyFailuresTo", ""),
    ("EnableCoredumps", ""),
    ("FailureReports", "set failure_reports = true (with history) and run authmilter reports (docs/dmarc-reports.md)"),
    ("FailureReportsBcc", "failure reports come from authmilter reports (its email, fo= of the record; docs/dmarc-reports.md)"),
    ("FailureReportsOnNone", "failure reports come from authmilter reports (its email, fo= of the record; docs/dmarc-reports.md)"),
    ("FailureReportsSentBy", "failure reports come from authmilter reports (its email, fo= of the record; docs/dmarc-reports.md)"),
    (
        "HistoryFile",
        "history is kept in SQLite: set `history` in the TOML",
    ),
    ("MilterDebug", ""),
    (
        "PublicSuffixList",
        "the organizational domain comes from the RFC 9989 DNS tree walk",
    ),
    ("RecordAllMessages", "every evaluated message is recorded"),
    ("ReportCommand", ""),
    ("SyslogName", ""),
    ("AuthservIDWithJobID", ""),
    ("ARCServerID", ""),
    ("TemporaryDirectory", ""),
];

fn unsupported(name: &str) -> Option<&'static str> {
    UNSUPPORTED
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, advice)| *advice)
}

/// The domains of a DomainWhitelistFile: one a line, `#` comments, relative to the
/// configuration file.
fn sealer_file(e: &Entry) -> Result<Vec<String>, ConfigError> {
    let path = chassis::configfile::relative_to(&e.file, Path::new(e.value.trim()));
    let text = std::fs::read_to_string(&path)
        .map_err(|err| e.error(format!("cannot read {}: {err}", path.display())))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Converts the entries of an opendmarc.conf.
pub fn convert(entries: &[Entry], source: &Path) -> Result<Converted, ConfigError> {
    let mut b = TomlBuilder::default();
    for e in entries {
        if legacyconf::service_option(&mut b, e)? {
            continue;
        }
        let name = e.name.to_ascii_lowercase();
        let text = |e: &Entry| Value::String(e.value.clone());
        let flag = |e: &Entry| e.boolean().map(Value::Boolean);
        match name.as_str() {
            "trustedauthservids" => b.set(e, "trusted_authserv_ids", strings(e.list())),
            "ignorehosts" => b.set(e, "ignore_hosts", text(e)),
            // OpenDMARC 1.4's trusted ARC sealers (it wants every arc.chain domain listed; we
            // trust the newest listed sealer's own results: docs/dmarc-milter.md, ARC).
            "domainwhitelist" => b.set(e, "trusted_arc_sealers", strings(e.list())),
            "domainwhitelistfile" => b.set(e, "trusted_arc_sealers", strings(sealer_file(e)?)),
            "domainwhitelistsize" => {}
            "ignoreauthenticatedclients" => b.set(e, "ignore_authenticated_clients", flag(e)?),
            "ignoremailfrom" => b.set(e, "ignore_mail_from", strings(e.list())),
            "spfselfvalidate" => b.set(e, "spf_self_validate", flag(e)?),
            "spfignoreresults" => b.set(e, "spf_ignore_results", flag(e)?),
            "rejectfailures" => b.set(e, "reject_failures", flag(e)?),
            "rejectmultivaluefrom" => b.set(e, "reject_multi_value_from", flag(e)?),
            "requiredheaders" => b.set(e, "required_headers", flag(e)?),
            "softwareheader" => b.set(e, "software_header", flag(e)?),
            "holdquarantinedmessages" => {
                let v = if e.boolean()? { "quarantine" } else { "accept" };
                b.set(e, "actions.quarantine", Value::String(v.into()));
            }
            _ => match unsupported(&e.name) {
                Some(advice) => b.unsupported(e, "dmarc-milter", advice),
                None => return Err(e.error("unrecognized parameter")),
            },
        }
    }
    b.finish(source, "dmarc-milter")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(text: &str) -> Result<Converted, ConfigError> {
        let p = Path::new("/etc/opendmarc.conf");
        convert(&legacyconf::parse(p, text), p)
    }

    #[test]
    fn debian_style_file_converts() {
        let c = conv(
            "PidFile /run/opendmarc/opendmarc.pid\nPublicSuffixList /usr/share/publicsuffix\n\
             Socket local:/run/opendmarc/opendmarc.sock\nSyslog true\nUMask 0002\nUserID opendmarc\n\
             AuthservID mx.example.net\nTrustedAuthservIDs mx.example.net, mx2.example.net\nRejectFailures true\n\
             IgnoreAuthenticatedClients yes\nHoldQuarantinedMessages false\n",
        )
        .unwrap();
        let t: toml::Table = toml::from_str(&c.toml).unwrap();
        assert_eq!(
            t["socket"].as_str(),
            Some("local:/run/opendmarc/opendmarc.sock")
        );
        assert_eq!(t["socket_mode"].as_str(), Some("0775"));
        assert_eq!(t["trusted_authserv_ids"].as_array().unwrap().len(), 2);
        assert_eq!(t["reject_failures"].as_bool(), Some(true));
        assert_eq!(t["actions"]["quarantine"].as_str(), Some("accept"));
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].contains(":2: PublicSuffixList"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn arc_sealer_lists_convert_to_trusted_arc_sealers() {
        let c =
            conv("DomainWhitelist lists.example, fwd.example\nDomainWhitelistSize 100\n").unwrap();
        let t: toml::Table = toml::from_str(&c.toml).unwrap();
        let got: Vec<&str> = t["trusted_arc_sealers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(got, vec!["lists.example", "fwd.example"]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sealers"),
            "# trusted sealers\nlists.example\n\n  fwd.example # forwarder\n",
        )
        .unwrap();
        let p = dir.path().join("opendmarc.conf");
        let c = convert(&legacyconf::parse(&p, "DomainWhitelistFile sealers\n"), &p).unwrap();
        let t: toml::Table = toml::from_str(&c.toml).unwrap();
        assert_eq!(t["trusted_arc_sealers"].as_array().unwrap().len(), 2);
        let e = conv("DomainWhitelistFile /nonexistent/sealers\n").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/sealers"), "{e}");
    }

    #[test]
    fn unknown_option_is_an_error_with_line() {
        let e = conv("Socket inet:8893@localhost\nBogusOption 1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/opendmarc.conf:2: key 'BogusOption': unrecognized parameter"
        );
    }
}
