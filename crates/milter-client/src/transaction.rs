// SPDX-License-Identifier: GPL-3.0-or-later
//! A whole SMTP transaction, presented to a milter the way Postfix does.

use crate::consts::*;
use crate::{ConnectOptions, Endpoint, Error, MilterClient, Modification, Negotiated, Reply};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The protocol stage at which a milter gave its last answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// `SMFIC_CONNECT`.
    Connect,
    /// `SMFIC_HELO`.
    Helo,
    /// `SMFIC_MAIL`.
    Mail,
    /// `SMFIC_RCPT`.
    Rcpt,
    /// `SMFIC_DATA`.
    Data,
    /// `SMFIC_HEADER`.
    Header,
    /// `SMFIC_EOH`.
    Eoh,
    /// `SMFIC_BODY`.
    Body,
    /// `SMFIC_BODYEOB`.
    Eom,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Everything an MTA tells a milter about one message on one connection.
///
/// Construct with struct update syntax over [`Default`], or start from
/// [`Transaction::from_message`] and the `with_*` methods. Defaults: a client
/// `client.example.net` at `192.0.2.10:50000` (TEST-NET, so "external"),
/// HELO `client.example.net`, sender `sender@example.net`, recipient
/// `rcpt@example.org`, no macros, all actions and protocol flags offered,
/// [`crate::DEFAULT_TIMEOUT`].
///
/// Macros of each list are sent tagged for their stage right before that
/// stage's command. Like Postfix, they are sent even when the milter asked
/// not to get the command itself (`SMFIP_NO*`), so they are always
/// available to later callbacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Client host name (`SMFIC_CONNECT`).
    pub client_name: String,
    /// Client address; `None` is sent as family `'U'` (unknown).
    pub client_addr: Option<SocketAddr>,
    /// HELO/EHLO argument.
    pub helo: String,
    /// Envelope sender without angle brackets (`""` for the null sender).
    pub mail_from: String,
    /// ESMTP arguments of MAIL FROM (`"BODY=8BITMIME"`, ...).
    pub mail_args: Vec<String>,
    /// Envelope recipients without angle brackets, one `SMFIC_RCPT` each.
    pub rcpts: Vec<String>,
    /// Header fields in order: name, and the value exactly as in the message
    /// after `Name:` (so usually starting with a space), folded lines joined
    /// with a bare `"\n"`.
    pub headers: Vec<(String, String)>,
    /// The body with CRLF line ends.
    pub body: Vec<u8>,
    /// Macros for `SMFIC_CONNECT` (e.g. `j`, `{daemon_name}`).
    pub connect_macros: Vec<(String, String)>,
    /// Macros for `SMFIC_HELO`.
    pub helo_macros: Vec<(String, String)>,
    /// Macros for `SMFIC_MAIL` (e.g. `i`, `{auth_type}`, `{auth_authen}`).
    pub mail_macros: Vec<(String, String)>,
    /// Macros for each `SMFIC_RCPT`.
    pub rcpt_macros: Vec<(String, String)>,
    /// Macros for `SMFIC_DATA`.
    pub data_macros: Vec<(String, String)>,
    /// Macros for `SMFIC_EOH`.
    pub eoh_macros: Vec<(String, String)>,
    /// Macros for `SMFIC_BODYEOB` (Postfix sends `i` here by default).
    pub eom_macros: Vec<(String, String)>,
    /// `SMFIF_*` actions offered in negotiation.
    pub offer_actions: u32,
    /// `SMFIP_*` protocol flags offered in negotiation. Clear
    /// `SMFIP_HDR_LEADSPC` here to test the stripped-space mode.
    pub offer_protocol: u32,
    /// Timeout for every single read/write.
    pub timeout: Duration,
}

impl Default for Transaction {
    fn default() -> Self {
        Transaction {
            client_name: "client.example.net".into(),
            client_addr: Some(SocketAddr::from(([192, 0, 2, 10], 50000))),
            helo: "client.example.net".into(),
            mail_from: "sender@example.net".into(),
            mail_args: Vec::new(),
            rcpts: vec!["rcpt@example.org".into()],
            headers: Vec::new(),
            body: Vec::new(),
            connect_macros: Vec::new(),
            helo_macros: Vec::new(),
            mail_macros: Vec::new(),
            rcpt_macros: Vec::new(),
            data_macros: Vec::new(),
            eoh_macros: Vec::new(),
            eom_macros: Vec::new(),
            offer_actions: ALL_ACTIONS,
            offer_protocol: ALL_PROTOCOL,
            timeout: crate::DEFAULT_TIMEOUT,
        }
    }
}

impl Transaction {
    /// Splits an RFC 5322 message (CRLF or bare LF line ends) into headers
    /// and body, as an MTA presents them to a milter.
    ///
    /// Header values keep everything after the colon (leading space
    /// included); continuation lines are joined with a bare `"\n"` and keep
    /// their leading whitespace; the final line end is dropped. The headers
    /// end at the first empty line, or, as in Postfix, at the first line
    /// that is neither a header nor a continuation (which then starts the
    /// body). The body gets CRLF line ends, and a final CRLF if it lacks one,
    /// since a body received over SMTP always ends with a line end.
    ///
    /// Header text that is not UTF-8 is converted lossily (U+FFFD): the
    /// high-level API is string-based. To send arbitrary bytes, use
    /// [`MilterClient::header_bytes`].
    pub fn from_message(raw: &[u8]) -> Self {
        let (headers, body) = split_message(raw);
        Transaction {
            headers,
            body,
            ..Default::default()
        }
    }

    /// Sets the client host name and address.
    pub fn with_client(mut self, name: &str, addr: Option<SocketAddr>) -> Self {
        self.client_name = name.into();
        self.client_addr = addr;
        self
    }

    /// Sets the HELO name.
    pub fn with_helo(mut self, helo: &str) -> Self {
        self.helo = helo.into();
        self
    }

    /// Sets the envelope sender (without angle brackets).
    pub fn with_mail_from(mut self, from: &str) -> Self {
        self.mail_from = from.into();
        self
    }

    /// Replaces the recipients (without angle brackets).
    pub fn with_rcpts(mut self, rcpts: &[&str]) -> Self {
        self.rcpts = rcpts.iter().map(|r| r.to_string()).collect();
        self
    }

    /// Appends a header (`value` as after the colon, usually with a space).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body (should have CRLF line ends).
    pub fn with_body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }

    /// Sets the offered `SMFIP_*` flags.
    pub fn with_offer_protocol(mut self, protocol: u32) -> Self {
        self.offer_protocol = protocol;
        self
    }
}

fn split_message(raw: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut pos = 0;
    let mut body_start = raw.len();
    while pos < raw.len() {
        let end = raw[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |i| pos + i + 1);
        let mut line = &raw[pos..end];
        line = line.strip_suffix(b"\n").unwrap_or(line);
        line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            body_start = end;
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            if let Some((_, value)) = headers.last_mut() {
                value.push('\n');
                value.push_str(&String::from_utf8_lossy(line));
                pos = end;
                continue;
            }
            // A continuation without a header to continue: not a header
            // block after all.
            body_start = pos;
            break;
        }
        let Some((name, value)) = header_line(line) else {
            body_start = pos;
            break;
        };
        headers.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
        pos = end;
    }
    (headers, crlf_body(&raw[body_start.min(raw.len())..]))
}

/// `Name: value` -> (name, " value"). The name is printable ASCII other than
/// colon; whitespace may separate it from the colon (as Postfix's
/// `is_header` allows), and is not part of the name.
fn header_line(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let name_len = line
        .iter()
        .position(|&b| !(33..=126).contains(&b) || b == b':')?;
    if name_len == 0 {
        return None;
    }
    let rest = &line[name_len..];
    let ws = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let rest = rest[ws..].strip_prefix(b":")?;
    Some((&line[..name_len], rest))
}

fn crlf_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 32 + 2);
    let mut prev = 0u8;
    for &b in body {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What a milter made of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The negotiation result.
    pub negotiated: Negotiated,
    /// Where the last answer came from: [`Stage::Eom`] unless the milter
    /// ended the transaction earlier.
    pub stage: Stage,
    /// That answer.
    pub reply: Reply,
    /// Modifications requested at end of message (empty if it never got
    /// there).
    pub modifications: Vec<Modification>,
}

impl Outcome {
    /// Whether `SMFIP_HDR_LEADSPC` was negotiated (the `leadspc` argument of
    /// [`crate::apply_modifications`]).
    pub fn leadspc(&self) -> bool {
        self.negotiated.leadspc()
    }
}

/// Connects, negotiates, presents `tx`, and quits.
///
/// Follows Postfix: commands the milter opted out of (`SMFIP_NO*`) are not
/// sent but their macros are; commands marked `SMFIP_NR_*` are not waited
/// for; headers go out with exactly one leading space stripped unless
/// `SMFIP_HDR_LEADSPC` was negotiated; body chunks are at most 64 KiB; a
/// `Skip` answer stops further events of that kind (recipients, headers, body
/// chunks). At the first final answer (accept, reject, tempfail, discard or
/// an explicit reply code), from whatever stage, the run stops: it sends
/// `SMFIC_ABORT` if a message was under way, then `SMFIC_QUIT`. Every
/// recipient is thus a stopping point; a real MTA would carry on with the
/// remaining ones after a rejected recipient, but for tests "where did it
/// stop" is the useful answer.
///
/// Errors in the closing `ABORT`/`QUIT` are ignored: the outcome is known by
/// then, and a milter may legitimately have closed the connection already.
pub async fn run(ep: &Endpoint, tx: &Transaction) -> Result<Outcome, Error> {
    let opts = ConnectOptions {
        timeout: tx.timeout,
        ..ConnectOptions::default()
    };
    run_with(ep, tx, &opts).await
}

/// [`run`] over a connection set up with `opts` (whose timeout replaces
/// `tx.timeout`): for the load generator, which needs to choose the socket
/// behaviour.
pub async fn run_with(
    ep: &Endpoint,
    tx: &Transaction,
    opts: &ConnectOptions,
) -> Result<Outcome, Error> {
    let mut client = MilterClient::connect_with(ep, opts).await?;
    let negotiated = client
        .negotiate(tx.offer_actions, tx.offer_protocol)
        .await?;
    let (stage, reply, modifications) = drive(&mut client, tx).await?;
    if stage != Stage::Eom && stage >= Stage::Mail {
        let _ = client.abort().await;
    }
    let _ = client.quit().await;
    Ok(Outcome {
        negotiated,
        stage,
        reply,
        modifications,
    })
}

fn pairs(list: &[(String, String)]) -> Vec<(&str, &str)> {
    list.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
}

async fn send_macros(
    client: &mut MilterClient,
    cmd: u8,
    list: &[(String, String)],
) -> Result<(), Error> {
    if list.is_empty() {
        return Ok(());
    }
    client.macros(cmd, &pairs(list)).await
}

/// Stops the transaction when the reply is final.
macro_rules! stop_if_final {
    ($reply:expr, $stage:expr) => {{
        let r = $reply;
        if r.is_final() {
            return Ok(($stage, r, Vec::new()));
        }
        r
    }};
}

async fn drive(
    client: &mut MilterClient,
    tx: &Transaction,
) -> Result<(Stage, Reply, Vec<Modification>), Error> {
    let leadspc = client.negotiated().is_some_and(|n| n.leadspc());

    send_macros(client, SMFIC_CONNECT, &tx.connect_macros).await?;
    stop_if_final!(
        client.connect_info(&tx.client_name, tx.client_addr).await?,
        Stage::Connect
    );

    send_macros(client, SMFIC_HELO, &tx.helo_macros).await?;
    stop_if_final!(client.helo(&tx.helo).await?, Stage::Helo);

    let from = format!("<{}>", tx.mail_from);
    let mut args: Vec<&str> = vec![&from];
    args.extend(tx.mail_args.iter().map(String::as_str));
    send_macros(client, SMFIC_MAIL, &tx.mail_macros).await?;
    stop_if_final!(client.mail(&args).await?, Stage::Mail);

    let mut skip_rcpt = false;
    for rcpt in &tx.rcpts {
        // After a Skip, Postfix sends neither the event nor its macros.
        if skip_rcpt {
            continue;
        }
        send_macros(client, SMFIC_RCPT, &tx.rcpt_macros).await?;
        let to = format!("<{rcpt}>");
        let r = stop_if_final!(client.rcpt(&[&to]).await?, Stage::Rcpt);
        skip_rcpt = r == Reply::Skip;
    }

    send_macros(client, SMFIC_DATA, &tx.data_macros).await?;
    stop_if_final!(client.data().await?, Stage::Data);

    for (name, value) in &tx.headers {
        let value = if leadspc {
            value.as_str()
        } else {
            value.strip_prefix(' ').unwrap_or(value)
        };
        let r = stop_if_final!(client.header(name, value).await?, Stage::Header);
        if r == Reply::Skip {
            break;
        }
    }

    send_macros(client, SMFIC_EOH, &tx.eoh_macros).await?;
    stop_if_final!(client.eoh().await?, Stage::Eoh);

    // body() already stops at Skip.
    stop_if_final!(client.body(&tx.body).await?, Stage::Body);

    send_macros(client, SMFIC_BODYEOB, &tx.eom_macros).await?;
    let eom = client.eom().await?;
    Ok((Stage::Eom, eom.reply, eom.modifications))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn splits_crlf_message() {
        let tx = Transaction::from_message(
            b"From: a@example.org\r\nSubject: hello\r\n\tworld\r\nX-Empty:\r\nX-Tight:v\r\n\r\nline 1\r\nline 2\r\n",
        );
        assert_eq!(
            tx.headers,
            hs(&[
                ("From", " a@example.org"),
                ("Subject", " hello\n\tworld"),
                ("X-Empty", ""),
                ("X-Tight", "v"),
            ])
        );
        assert_eq!(tx.body, b"line 1\r\nline 2\r\n");
    }

    #[test]
    fn splits_lf_message_and_normalises_body() {
        let tx = Transaction::from_message(b"A: 1\nB:  2 \n  more\n\nx\ny\r\nz");
        assert_eq!(tx.headers, hs(&[("A", " 1"), ("B", "  2 \n  more")]));
        assert_eq!(tx.body, b"x\r\ny\r\nz\r\n");
    }

    #[test]
    fn header_only_and_empty_body() {
        let tx = Transaction::from_message(b"A: 1\r\n");
        assert_eq!(tx.headers, hs(&[("A", " 1")]));
        assert!(tx.body.is_empty());
        let tx = Transaction::from_message(b"A: 1\r\n\r\n");
        assert!(tx.body.is_empty());
    }

    #[test]
    fn non_header_line_starts_body() {
        let tx = Transaction::from_message(b"A: 1\r\nnot a header\r\nB: 2\r\n");
        assert_eq!(tx.headers, hs(&[("A", " 1")]));
        assert_eq!(tx.body, b"not a header\r\nB: 2\r\n");
        let tx = Transaction::from_message(b" leading\r\nA: 1\r\n");
        assert!(tx.headers.is_empty());
        assert_eq!(tx.body, b" leading\r\nA: 1\r\n");
    }

    #[test]
    fn space_before_colon_is_not_part_of_name() {
        let tx = Transaction::from_message(b"Subject : x\r\n\r\n");
        assert_eq!(tx.headers, hs(&[("Subject", " x")]));
    }

    #[test]
    fn eight_bit_headers_are_lossy() {
        let tx = Transaction::from_message(b"Subject: caf\xe9 \xc3\xa9\r\n\r\n");
        assert_eq!(tx.headers, hs(&[("Subject", " caf\u{fffd} \u{e9}")]));
    }

    #[test]
    fn render_round_trips() {
        let raw = b"From: a@example.org\r\nSubject: hello\r\n\tworld\r\n\r\nbody\r\n";
        let tx = Transaction::from_message(raw);
        assert_eq!(crate::render(&tx.headers, &tx.body), raw);
    }
}
