//! The smtpd-filters(7) line protocol: what smtpd writes to a filter's stdin and what the
//! filter may write back. Parsing never panics and never guesses: a line we cannot read is an
//! error value the caller logs; output is built here only, so every line we write has a form
//! smtpd accepts (smtpd exits, taking the whole MTA down, on a malformed filter line).
//!
//! Versions: smtpd 6.8 (Debian 12) speaks 0.6 and sends no `config|protocol` line, so the
//! version is read from field 2 of every `report|` and `filter|` line; 0.7 (smtpd 7.4 and
//! later) differs for us only in the field order of `link-auth`. Other versions are refused.

use chassis::envelope::Facts;
use std::fmt;

/// The protocol versions we speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V0_6,
    V0_7,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        match s {
            "0.6" => Some(Version::V0_6),
            "0.7" => Some(Version::V0_7),
            _ => None,
        }
    }
}

/// One line from smtpd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<'a> {
    /// `config|KEY|VALUE` (`config|ready` has no value).
    Config { key: &'a str, value: &'a [u8] },
    /// `report|VERSION|TIME|SUBSYSTEM|EVENT|SESSION[|PARAMS]`.
    Report {
        version: Version,
        subsystem: &'a str,
        event: &'a str,
        session: &'a str,
        params: &'a [u8],
    },
    /// `filter|VERSION|TIME|SUBSYSTEM|PHASE|SESSION|TOKEN[|PARAMS]`; for `data-line` the
    /// params are the line itself (which may contain `|`).
    Filter {
        version: Version,
        subsystem: &'a str,
        phase: &'a str,
        session: &'a str,
        token: &'a str,
        /// Raw bytes: a message line may carry 8-bit data.
        params: &'a [u8],
    },
}

/// Why a line could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    Empty,
    /// Not `config`, `report` or `filter`.
    UnknownKind(String),
    /// Fewer fields than the kind needs.
    Short {
        kind: &'static str,
        fields: usize,
    },
    /// A protocol version we do not speak.
    Version(String),
    /// A session id or token that is not hexadecimal (smtpd writes 16 hex digits).
    BadId(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => write!(f, "empty line"),
            ParseError::UnknownKind(k) => write!(f, "unknown line type '{k}'"),
            ParseError::Short { kind, fields } => {
                write!(f, "'{kind}' line with only {fields} field(s)")
            }
            ParseError::Version(v) => write!(
                f,
                "filter protocol version '{v}' is not supported (this filter speaks 0.6 and 0.7)"
            ),
            ParseError::BadId(id) => write!(f, "malformed session id or token '{id}'"),
        }
    }
}

fn text(field: &[u8]) -> Result<&str, ParseError> {
    std::str::from_utf8(field)
        .map_err(|_| ParseError::BadId(String::from_utf8_lossy(field).chars().take(40).collect()))
}

fn hex_id(field: &[u8]) -> Result<&str, ParseError> {
    let s = text(field)?;
    if !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s)
    } else {
        Err(ParseError::BadId(s.chars().take(40).collect()))
    }
}

/// The first `N` `|`-separated fields of `line` (the last one holds the rest of the line) and
/// how many there are; without allocating, since every message line goes through here.
fn fields<const N: usize>(line: &[u8]) -> ([&[u8]; N], usize) {
    let mut out = [&b""[..]; N];
    let mut n = 0;
    for (slot, f) in out.iter_mut().zip(line.splitn(N, |b| *b == b'|')) {
        *slot = f;
        n += 1;
    }
    (out, n)
}

fn version(field: &[u8]) -> Result<Version, ParseError> {
    let v = text(field)?;
    Version::parse(v).ok_or_else(|| ParseError::Version(v.chars().take(20).collect()))
}

/// Parses one line (without its newline).
pub fn parse(line: &[u8]) -> Result<Input<'_>, ParseError> {
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    let kind = line.split(|b| *b == b'|').next().unwrap_or(b"");
    match kind {
        b"config" => {
            let (f, n) = fields::<3>(line);
            if n < 2 {
                return Err(ParseError::Short {
                    kind: "config",
                    fields: 1,
                });
            }
            Ok(Input::Config {
                key: text(f[1])?,
                value: f[2],
            })
        }
        b"report" => {
            let (f, n) = fields::<7>(line);
            if n < 6 {
                return Err(ParseError::Short {
                    kind: "report",
                    fields: n,
                });
            }
            Ok(Input::Report {
                version: version(f[1])?,
                subsystem: text(f[3])?,
                event: text(f[4])?,
                session: hex_id(f[5])?,
                params: f[6],
            })
        }
        b"filter" => {
            let (f, n) = fields::<8>(line);
            if n < 7 {
                return Err(ParseError::Short {
                    kind: "filter",
                    fields: n,
                });
            }
            Ok(Input::Filter {
                version: version(f[1])?,
                subsystem: text(f[3])?,
                phase: text(f[4])?,
                session: hex_id(f[5])?,
                token: hex_id(f[6])?,
                params: f[7],
            })
        }
        other => Err(ParseError::UnknownKind(
            String::from_utf8_lossy(other).chars().take(40).collect(),
        )),
    }
}

/// The report events we always follow to know the session (see [`crate::session`]): the
/// connection, its end, and AUTH.
pub const REPORTS: &[&str] = &["link-connect", "link-disconnect", "link-auth"];

/// The reports of MAIL FROM: the transaction's start with smtpd's message id, and the
/// address. Without them (a policy that does not read MAIL FROM) the message id is read from
/// smtpd's own Received field, the first line of every message it hands to a filter
/// ([`crate::session::smtpd_received_id`]), and the filter is not woken at MAIL; `tx-rollback`,
/// which smtpd sends only for a transaction that failed (never for one that commits, so it
/// costs no wake-up), then ends a message that will get no final `.`.
pub const MAIL_REPORTS: &[&str] = &["tx-begin", "tx-mail"];

/// The filter phases we answer: the message lines, and the commit that takes our disposition.
pub const PHASES: &[&str] = &["data-line", "commit"];

/// The registration smtpd expects after `config|ready`, ending with `register|ready`. HELO
/// (`link-identify`), MAIL FROM ([`MAIL_REPORTS`]) and the recipients (`tx-rcpt`) only when the
/// policy reads them, and smtpd's greeting name (`link-greeting`, the authserv-id fallback)
/// only when `greeting` says it may be used: each such report arrives at a moment of its own
/// (the greeting a little after the connect report), so each costs the filter a wake-up per
/// message.
pub fn registration(facts: Facts, greeting: bool) -> Vec<String> {
    let optional = [
        (greeting, "link-greeting"),
        (facts.helo, "link-identify"),
        (facts.mail_from, MAIL_REPORTS[0]),
        (facts.mail_from, MAIL_REPORTS[1]),
        (!facts.mail_from, "tx-rollback"),
        (facts.recipients, "tx-rcpt"),
    ];
    let mut out: Vec<String> = REPORTS
        .iter()
        .copied()
        .chain(optional.iter().filter(|(on, _)| *on).map(|(_, e)| *e))
        .map(|e| format!("register|report|smtp-in|{e}"))
        .collect();
    out.extend(
        PHASES
            .iter()
            .map(|p| format!("register|filter|smtp-in|{p}")),
    );
    out.push("register|ready".into());
    out
}

/// One line of the message handed back in the data-line phase. `line` is the unescaped text
/// (no CR or LF); it is dot-escaped here (RFC 5321 §4.5.2), as smtpd expects it.
pub fn data_line(session: &str, token: &str, line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + 64);
    push_data_line(&mut out, session, token, line);
    out.pop();
    out
}

/// [`data_line`] appended to `out`, with its newline: a message is written back as a batch
/// of lines, built in place.
pub fn push_data_line(out: &mut Vec<u8>, session: &str, token: &str, line: &[u8]) {
    out.extend_from_slice(b"filter-dataline|");
    out.extend_from_slice(session.as_bytes());
    out.push(b'|');
    out.extend_from_slice(token.as_bytes());
    out.push(b'|');
    if line.first() == Some(&b'.') {
        out.push(b'.');
    }
    out.extend_from_slice(line);
    out.push(b'\n');
}

/// The end of the message in the data-line phase.
pub fn data_end(session: &str, token: &str) -> String {
    format!("filter-dataline|{session}|{token}|.")
}

/// What the filter says at a filter phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Proceed,
    /// A reply such as `550 5.7.1 text`: a 4xx or 5xx code, then text on one line.
    Reject(String),
}

/// `filter-result|SESSION|TOKEN|proceed` or `…|reject|CODE TEXT`. A reject reply that is not
/// a 4xx/5xx code followed by text becomes a generic tempfail, so smtpd never sees a bad line.
pub fn result(session: &str, token: &str, decision: &Decision) -> String {
    match decision {
        Decision::Proceed => format!("filter-result|{session}|{token}|proceed"),
        Decision::Reject(reply) => {
            let reply: String = reply
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let valid = reply.len() > 4
                && matches!(reply.as_bytes()[0], b'4' | b'5')
                && reply.as_bytes()[1..3].iter().all(u8::is_ascii_digit)
                && reply.as_bytes()[3] == b' ';
            let reply = if valid {
                reply
            } else {
                "451 4.7.0 filter error, try again later".to_string()
            };
            format!("filter-result|{session}|{token}|reject|{reply}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines() {
        assert_eq!(
            parse(b"config|smtpd-version|6.8.0p2"),
            Ok(Input::Config {
                key: "smtpd-version",
                value: b"6.8.0p2"
            })
        );
        assert_eq!(
            parse(b"config|ready"),
            Ok(Input::Config {
                key: "ready",
                value: b""
            })
        );
    }

    #[test]
    fn report_lines() {
        let l = b"report|0.6|1700000000.123456|smtp-in|link-connect|7a5b3c1d2e3f4a5b|mail.example|pass|192.0.2.1:41000|127.0.0.1:25";
        assert_eq!(
            parse(l),
            Ok(Input::Report {
                version: Version::V0_6,
                subsystem: "smtp-in",
                event: "link-connect",
                session: "7a5b3c1d2e3f4a5b",
                params: b"mail.example|pass|192.0.2.1:41000|127.0.0.1:25"
            })
        );
        // No params at all.
        assert!(matches!(
            parse(b"report|0.7|1.0|smtp-in|link-disconnect|00ff"),
            Ok(Input::Report {
                version: Version::V0_7,
                params: b"",
                ..
            })
        ));
    }

    #[test]
    fn data_lines_keep_every_byte_after_the_token() {
        let l = b"filter|0.6|1.0|smtp-in|data-line|0a|0b|Subject: a|b||c\xe9";
        assert!(matches!(
            parse(l),
            Ok(Input::Filter {
                phase: "data-line",
                token: "0b",
                params: b"Subject: a|b||c\xe9",
                ..
            })
        ));
        // An empty line of the message (the header/body separator).
        assert!(matches!(
            parse(b"filter|0.6|1.0|smtp-in|data-line|0a|0b|"),
            Ok(Input::Filter { params: b"", .. })
        ));
    }

    #[test]
    fn bad_lines_are_errors() {
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert!(matches!(
            parse(b"report|0.6|1.0|smtp-in|\xff|0a"),
            Err(ParseError::BadId(_))
        ));
        assert!(matches!(parse(b"hello"), Err(ParseError::UnknownKind(_))));
        assert!(matches!(
            parse(b"report|0.6|1.0"),
            Err(ParseError::Short { kind: "report", .. })
        ));
        assert!(matches!(
            parse(b"filter|0.6|1.0|smtp-in|commit|0a"),
            Err(ParseError::Short { kind: "filter", .. })
        ));
        assert_eq!(
            parse(b"report|0.5|1.0|smtp-in|link-connect|0a|x"),
            Err(ParseError::Version("0.5".into()))
        );
        assert!(matches!(
            parse(b"filter|0.6|1.0|smtp-in|commit|zz|0b"),
            Err(ParseError::BadId(_))
        ));
    }

    #[test]
    fn output_forms() {
        let all = registration(Facts::ALL, true);
        assert_eq!(all.last().map(String::as_str), Some("register|ready"));
        assert!(all.contains(&"register|filter|smtp-in|data-line".to_string()));
        assert!(all.contains(&"register|report|smtp-in|tx-rcpt".to_string()));
        assert!(all.contains(&"register|report|smtp-in|link-identify".to_string()));
        assert!(all.contains(&"register|report|smtp-in|link-greeting".to_string()));
        let lean = registration(
            Facts {
                helo: false,
                mail_from: false,
                recipients: false,
            },
            false,
        );
        assert!(all.contains(&"register|report|smtp-in|tx-begin".to_string()));
        assert!(all.contains(&"register|report|smtp-in|tx-mail".to_string()));
        assert!(!all.iter().any(|l| l.ends_with("tx-rollback")));
        assert!(lean.contains(&"register|report|smtp-in|tx-rollback".to_string()));
        assert_eq!(lean.len(), all.len() - 5 + 1);
        assert!(!lean.iter().any(|l| l.ends_with("tx-rcpt")
            || l.ends_with("link-identify")
            || l.ends_with("link-greeting")
            || l.ends_with("tx-begin")
            || l.ends_with("tx-mail")));
        assert!(lean.contains(&"register|report|smtp-in|link-connect".to_string()));
        let mut out = b"x\n".to_vec();
        push_data_line(&mut out, "s", "t", b".dot");
        assert_eq!(out, b"x\nfilter-dataline|s|t|..dot\n");
        assert_eq!(data_line("s", "t", b"hello"), b"filter-dataline|s|t|hello");
        assert_eq!(
            data_line("s", "t", b".hidden"),
            b"filter-dataline|s|t|..hidden"
        );
        assert_eq!(data_line("s", "t", b""), b"filter-dataline|s|t|");
        assert_eq!(
            data_line("s", "t", b"8-bit \xe9"),
            b"filter-dataline|s|t|8-bit \xe9"
        );
        assert_eq!(data_end("s", "t"), "filter-dataline|s|t|.");
        assert_eq!(
            result("s", "t", &Decision::Proceed),
            "filter-result|s|t|proceed"
        );
        assert_eq!(
            result("s", "t", &Decision::Reject("550 5.7.1 no".into())),
            "filter-result|s|t|reject|550 5.7.1 no"
        );
        // Never a malformed reply: a bad code or a newline cannot reach smtpd.
        assert_eq!(
            result("s", "t", &Decision::Reject("250 ok".into())),
            "filter-result|s|t|reject|451 4.7.0 filter error, try again later"
        );
        assert_eq!(
            result("s", "t", &Decision::Reject("550 5.7.1 a\nb".into())),
            "filter-result|s|t|reject|550 5.7.1 a b"
        );
    }
}
