//! One smtpd session as the policy sees it: the typed [`Envelope`] filled from report events,
//! and the message of the current transaction as it arrives line by line in the data-line
//! phase. The message is kept twice, for two different readers: the chassis' `MessageBuilder`
//! (what the policy evaluates, bounded in memory, with the header scan that sees every field),
//! and our own copy of the lines exactly as received (spooled to a temporary file past 1 MiB),
//! from which the rewritten message is written back to smtpd.

use crate::proto::{Decision, Version};
use chassis::envelope::{Authenticated, Envelope};
use chassis::message::{Message, MessageBuilder};
use chassis::policy::Policy;
use std::io::{self, BufRead, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::sync::Arc;
use tempfile::SpooledTempFile;

/// Bytes of a message's lines kept in memory before the copy moves to a temporary file.
const SPOOL_IN_MEMORY: usize = 1 << 20;

/// The client address in a `link-connect` source: `192.0.2.1:41000`, `[2001:db8::1]:41000`
/// or `2001:db8::1:41000` (smtpd's forms); `unix:/path` and anything else has none.
pub fn client_ip(src: &str) -> Option<IpAddr> {
    if let Some(rest) = src.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    if let Ok(ip) = src.parse() {
        return Some(ip);
    }
    src.rsplit_once(':').and_then(|(ip, _port)| ip.parse().ok())
}

fn text(params: &[u8]) -> String {
    String::from_utf8_lossy(params).into_owned()
}

fn strip_angle(s: &str) -> String {
    s.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

/// One SMTP session.
pub struct Session<P: Policy> {
    pub snap: Arc<P>,
    pub env: Envelope,
    /// The policy chose not to look at this connection: lines go back unchanged.
    pub ignored: bool,
    /// The message of the current transaction, while its lines arrive.
    pub message: Option<Incoming<P>>,
    /// A `tx-begin` report opened the current transaction (its queue id is known); without
    /// one (a filter that did not register for it), the message's first line opens it and
    /// smtpd's Received field gives the queue id.
    pub announced: bool,
}

impl<P: Policy> Session<P> {
    pub fn new(snap: Arc<P>) -> Self {
        Self {
            snap,
            env: Envelope::default(),
            ignored: false,
            message: None,
            announced: false,
        }
    }

    /// Takes in one report event of this session.
    pub fn report(&mut self, version: Version, event: &str, params: &[u8]) {
        if apply_report(&mut self.env, version, event, params) {
            self.message = None;
            self.announced = event == "tx-begin";
        }
    }

    /// The message of the current transaction, opened by its first line: a transaction that
    /// no `tx-begin` announced starts here (the previous one's envelope and queue id cleared),
    /// and reads its queue id from smtpd's Received field.
    pub fn message(&mut self, token: &str) -> &mut Incoming<P> {
        if self.message.is_none() && !self.announced {
            self.env.reset_transaction();
            self.env.queue_id = None;
        }
        let learn = !self.announced;
        let snap = &self.snap;
        self.message
            .get_or_insert_with(|| Incoming::new(snap, token, learn))
    }

    /// The finished message (an empty one if no line came before the final `.`); the next
    /// transaction needs a `tx-begin` of its own to count as announced.
    pub fn take_message(&mut self, token: &str) -> Incoming<P> {
        self.message(token);
        self.announced = false;
        self.message
            .take()
            .unwrap_or_else(|| Incoming::new(&self.snap, token, false))
    }

    /// One line of the current transaction's message (see [`Incoming::line`]).
    pub fn line(&mut self, token: &str, line: &[u8]) {
        self.message(token);
        if let Some(m) = self.message.as_mut() {
            m.line(&self.snap, &mut self.env, line);
        }
    }
}

/// Updates `env` from one report event; true when the event ends the current transaction (its
/// message, if any, is abandoned).
pub fn apply_report(env: &mut Envelope, version: Version, event: &str, params: &[u8]) -> bool {
    let params = text(params);
    let f: Vec<&str> = params.split('|').collect();
    let at = |i: usize| f.get(i).copied().unwrap_or("");
    match event {
        "link-connect" => {
            // rdns|fcrdns|src|dest
            env.client_name = at(0).to_string();
            env.client_ip = client_ip(at(2));
            if at(2).starts_with("unix:") {
                // Local enqueue (sendmail(8)/smtpctl through smtpd's socket): the local host,
                // as an MTA reports its own pickup to milters.
                env.client_name = "localhost".into();
                env.client_ip = Some(IpAddr::from([127, 0, 0, 1]));
            }
            env.listener = Some(at(3).to_string()).filter(|d| !d.is_empty());
        }
        // smtpd's admd (config) wins over the greeting name.
        "link-greeting" if env.mta_hostname.is_none() => {
            env.mta_hostname = Some(at(0).to_string()).filter(|h| !h.is_empty());
        }
        "link-identify" => env.helo = at(1).to_string(),
        "link-auth" => {
            // 0.6: username|result; 0.7: result|username.
            let (user, result) = match version {
                Version::V0_6 => (at(0), at(1)),
                Version::V0_7 => (at(1), at(0)),
            };
            env.auth = (result == "pass").then(|| Authenticated {
                user: user.to_string(),
                mechanism: String::new(),
            });
        }
        "tx-begin" => {
            env.reset_transaction();
            env.queue_id = Some(at(0).to_string()).filter(|q| !q.is_empty());
            return true;
        }
        // message-id|result|address
        "tx-mail" if at(1) == "ok" => env.mail_from = strip_angle(at(2)),
        "tx-rcpt" if at(1) == "ok" => env.rcpts.push(strip_angle(at(2))),
        "tx-reset" | "tx-rollback" => {
            env.reset_transaction();
            return true;
        }
        _ => {}
    }
    false
}

/// smtpd's message id in its own Received field (`… by HOST (OpenSMTPD) with ESMTP id
/// 0ff60d3c …`, the `%08x` of the id `tx-begin` reports and smtpd logs as `msgid=`); `None` if
/// the field is not smtpd's.
pub fn smtpd_received_id(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?;
    if !value.contains("(OpenSMTPD)") {
        return None;
    }
    let mut words = value.split_ascii_whitespace();
    while let Some(w) = words.next() {
        if w == "id" {
            let id = words.next()?.trim_end_matches(';');
            return (id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| id.to_ascii_lowercase());
        }
    }
    None
}

/// A message being received.
pub struct Incoming<P: Policy> {
    /// The token of the data-line requests, for our replies.
    pub token: String,
    builder: MessageBuilder,
    carry: Option<P::Carry>,
    copy: SpooledTempFile,
    copied: usize,
    in_headers: bool,
    /// The header field being read (name, colon, value, folds joined with CRLF).
    field: Vec<u8>,
    /// Why the message cannot be passed on (a line we could not read): tempfailed at commit.
    pub broken: Option<String>,
    /// The queue id is to be read from smtpd's Received field (no `tx-begin` report); cleared
    /// once the first Received field has been looked at.
    learn_queue_id: bool,
}

impl<P: Policy> Incoming<P> {
    /// A message whose first line is `token`'s. With `learn_queue_id` the queue id comes from
    /// smtpd's Received field rather than a `tx-begin` report.
    pub fn new(snap: &P, token: &str, learn_queue_id: bool) -> Self {
        Self {
            learn_queue_id,
            token: token.to_string(),
            // Field values are passed with the space after the colon, as written.
            builder: MessageBuilder::new(snap.limits(), true),
            carry: None,
            copy: SpooledTempFile::new(SPOOL_IN_MEMORY),
            copied: 0,
            in_headers: true,
            field: Vec::new(),
            broken: None,
        }
    }

    fn end_field(&mut self, env: &mut Envelope) {
        if self.field.is_empty() {
            return;
        }
        let field = std::mem::take(&mut self.field);
        let (name, value) = match field.iter().position(|b| *b == b':') {
            Some(i) => (&field[..i], &field[i + 1..]),
            None => (&field[..], &b""[..]),
        };
        // The topmost Received is smtpd's own (a filter earlier in a chain adds other fields,
        // not Received); older ones are other hops' and are never read for the id.
        if self.learn_queue_id && name.eq_ignore_ascii_case(b"Received") {
            self.learn_queue_id = false;
            env.queue_id = smtpd_received_id(value);
        }
        self.builder.header(name, value);
    }

    fn end_headers(&mut self, snap: &P, env: &mut Envelope) {
        self.end_field(env);
        self.in_headers = false;
        self.builder.end_of_headers();
        let planned = snap.plan(env, self.builder.headers(), self.builder.header_block());
        self.builder.plan_body(planned.body);
        self.carry = Some(planned.carry);
    }

    /// One line of the message as smtpd sent it (dot-escaped, no line end; not the final `.`).
    pub fn line(&mut self, snap: &P, env: &mut Envelope, escaped: &[u8]) {
        let line = escaped.strip_prefix(b".").unwrap_or(escaped);
        self.copied += line.len() + 1;
        if let Err(e) = self
            .copy
            .write_all(line)
            .and_then(|()| self.copy.write_all(b"\n"))
        {
            self.broken
                .get_or_insert(format!("cannot keep a copy of the message: {e}"));
        }
        if self.in_headers {
            if line.is_empty() {
                self.end_headers(snap, env);
                return;
            }
            if matches!(line.first(), Some(b' ' | b'\t')) && !self.field.is_empty() {
                self.field.extend_from_slice(b"\r\n");
                self.field.extend_from_slice(line);
                return;
            }
            if line.contains(&b':') {
                self.end_field(env);
                self.field.extend_from_slice(line);
                return;
            }
            // Not a header field: the body starts here (as MTAs read such a message).
            self.end_headers(snap, env);
        }
        self.builder.body(line);
        self.builder.body(b"\r\n");
    }

    /// The end of the message: what the policy evaluates, what `plan` carried, and our copy of
    /// the lines for writing the message back.
    pub fn finish(
        mut self,
        snap: &P,
        env: &mut Envelope,
    ) -> (io::Result<Message>, Option<P::Carry>, Copy) {
        if self.in_headers {
            self.end_headers(snap, env);
        }
        let msg = self.builder.finish();
        (msg, self.carry, Copy(self.copy, self.copied))
    }
}

/// Our copy of a message's lines, unescaped, one per `\n`, and its length.
pub struct Copy(SpooledTempFile, usize);

/// How a verdict changes the message on its way back: fields to put on top (in top-down order,
/// each `(name, value)` with folds as CRLF or LF), and the 1-based occurrences of
/// Authentication-Results fields to leave out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub on_top: Vec<(String, String)>,
    pub remove_auth_results: Vec<u32>,
}

impl Copy {
    /// True while the copy has not moved to a temporary file.
    pub fn in_memory(&self) -> bool {
        !self.0.is_rolled()
    }

    /// Bytes written so far (lines and their newlines).
    pub fn len_hint(&self) -> usize {
        self.1
    }

    /// Writes the message back through `emit`, one unescaped line at a time (no line end),
    /// with `rewrite` applied to the header section.
    pub fn write_back(
        self,
        rewrite: &Rewrite,
        emit: &mut impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        for (name, value) in &rewrite.on_top {
            let field = format!("{name}: {}", value.trim_start());
            for line in field.split('\n') {
                emit(line.strip_suffix('\r').unwrap_or(line).as_bytes())?;
            }
        }
        let mut file = self.0;
        file.seek(SeekFrom::Start(0))?;
        let mut reader = io::BufReader::new(&mut file);
        let mut line = Vec::new();
        let mut in_headers = true;
        let mut auth_results = 0u32;
        let mut skipping = false;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if in_headers {
                if line.is_empty() {
                    in_headers = false;
                } else if matches!(line.first(), Some(b' ' | b'\t')) {
                    if skipping {
                        continue;
                    }
                } else if let Some(colon) = line.iter().position(|b| *b == b':') {
                    let name = String::from_utf8_lossy(&line[..colon]);
                    skipping = false;
                    if name
                        .trim_end()
                        .eq_ignore_ascii_case("Authentication-Results")
                    {
                        auth_results += 1;
                        skipping = rewrite.remove_auth_results.contains(&auth_results);
                    }
                    if skipping {
                        continue;
                    }
                } else {
                    in_headers = false;
                }
            }
            emit(&line)?;
        }
    }
}

/// The disposition smtpd gets at commit for a verdict's action. OpenSMTPD has no quarantine or
/// discard at this phase: those messages are delivered (the log line says so).
pub fn decision(action: &chassis::verdict::Action, qid: &str) -> Decision {
    use chassis::verdict::Action;
    match action {
        Action::Accept => Decision::Proceed,
        Action::Reject(r) | Action::Tempfail(r) => Decision::Reject(r.to_string()),
        Action::Quarantine(why) => {
            tracing::warn!("{qid}: OpenSMTPD filters cannot quarantine ({why}); delivering");
            Decision::Proceed
        }
        Action::Discard => {
            tracing::warn!("{qid}: OpenSMTPD filters cannot discard at commit; delivering");
            Decision::Proceed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses() {
        assert_eq!(client_ip("192.0.2.1:41000"), "192.0.2.1".parse().ok());
        assert_eq!(client_ip("[2001:db8::1]:25"), "2001:db8::1".parse().ok());
        assert_eq!(client_ip("2001:db8::1:41000"), "2001:db8::1".parse().ok());
        assert_eq!(client_ip("2001:db8::1"), "2001:db8::1".parse().ok());
        assert_eq!(client_ip("unix:/var/run/smtpd.sock"), None);
    }

    #[test]
    fn envelope_from_reports_as_smtpd_6_8_sends_them() {
        let mut env = Envelope::default();
        let v = Version::V0_6;
        apply_report(
            &mut env,
            v,
            "link-connect",
            b"mail.example|pass|192.0.2.7:40182|127.0.0.1:587",
        );
        apply_report(&mut env, v, "link-greeting", b"mx.test.example");
        apply_report(&mut env, v, "link-identify", b"EHLO|client.test");
        apply_report(&mut env, v, "link-auth", b"alice|pass");
        assert!(apply_report(&mut env, v, "tx-begin", b"0ff60d3c"));
        apply_report(&mut env, v, "tx-mail", b"0ff60d3c|ok|a@example.com");
        apply_report(&mut env, v, "tx-rcpt", b"0ff60d3c|ok|b@example.org");
        apply_report(
            &mut env,
            v,
            "tx-rcpt",
            b"0ff60d3c|permfail|nobody@example.org",
        );
        assert_eq!(env.client_ip, "192.0.2.7".parse().ok());
        assert_eq!(env.client_name, "mail.example");
        assert_eq!(env.listener.as_deref(), Some("127.0.0.1:587"));
        assert_eq!(env.mta_hostname.as_deref(), Some("mx.test.example"));
        assert_eq!(env.helo, "client.test");
        assert_eq!(env.auth.as_ref().map(|a| a.user.as_str()), Some("alice"));
        assert_eq!(env.queue_id(), "0ff60d3c");
        assert_eq!(env.mail_from, "a@example.com");
        assert_eq!(env.rcpts, ["b@example.org"]);
        // 0.7 swaps link-auth's fields; a failed authentication is none.
        apply_report(&mut env, Version::V0_7, "link-auth", b"pass|bob");
        assert_eq!(env.auth.as_ref().map(|a| a.user.as_str()), Some("bob"));
        apply_report(&mut env, v, "link-auth", b"mallory|fail");
        assert!(env.auth.is_none());
        assert!(apply_report(&mut env, v, "tx-reset", b"0ff60d3c"));
        assert!(env.rcpts.is_empty());
        // A session on smtpd's socket (local enqueue) is the local host.
        apply_report(
            &mut env,
            v,
            "link-connect",
            b"mx.test.example|pass|unix:/var/run/smtpd.sock|unix:/var/run/smtpd.sock",
        );
        assert_eq!(env.client_ip, "127.0.0.1".parse().ok());
        assert_eq!(env.client_name, "localhost");
        assert_eq!(client_ip(""), None);
    }

    #[test]
    fn queue_id_from_smtpds_received_field() {
        // As smtpd 6.8 writes it (value after the colon, folds as CRLF), with and without TLS.
        let plain = b" from bench.example (mx.test.example [127.0.0.1])\r\n\tby mx.test.example \
            (OpenSMTPD) with ESMTP id 987f29b8;\r\n\tFri, 4 Dec 2026 02:51:02 +0000 (UTC)";
        assert_eq!(smtpd_received_id(plain).as_deref(), Some("987f29b8"));
        let tls = b" from c (c [192.0.2.1])\r\n\tby mx (OpenSMTPD) with ESMTPSA id 0FF60D3C\r\n\t\
            (TLSv1.3:TLS_AES_256_GCM_SHA384:256:NO)\r\n\tfor <b@example.org>;\r\n\tFri, 4 Dec 2026";
        assert_eq!(smtpd_received_id(tls).as_deref(), Some("0ff60d3c"));
        // Another MTA's field, or an id that is not smtpd's %08x, gives none.
        assert_eq!(
            smtpd_received_id(b" from a by b (Postfix) with ESMTP id 4Q1xYz2abc;"),
            None
        );
        assert_eq!(
            smtpd_received_id(b" from a by b (OpenSMTPD) with ESMTP id 12345;"),
            None
        );
        assert_eq!(
            smtpd_received_id(b" from a by b (OpenSMTPD) with ESMTP id"),
            None
        );
        assert_eq!(smtpd_received_id(b"\xff (OpenSMTPD) id 987f29b8"), None);
    }

    fn copy_of(lines: &[&[u8]]) -> Copy {
        let mut f = SpooledTempFile::new(16);
        for l in lines {
            f.write_all(l).unwrap();
            f.write_all(b"\n").unwrap();
        }
        Copy(f, 0)
    }

    fn written(copy: Copy, rewrite: &Rewrite) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        copy.write_back(rewrite, &mut |l| {
            out.push(l.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn forged_fields_and_their_folds_are_left_out_others_kept() {
        let copy = copy_of(&[
            b"Authentication-Results: mx; dkim=pass",
            b"\theader.d=forged.example",
            b"authentication-results : other; spf=pass",
            b"Subject: s",
            b"Authentication-Results: mx; dmarc=pass",
            b"",
            b"Authentication-Results: in the body stays",
            b".leading dot \xe9",
        ]);
        let rewrite = Rewrite {
            on_top: vec![("Authentication-Results".into(), "mx;\r\n\tdkim=none".into())],
            remove_auth_results: vec![1, 3],
        };
        let out = written(copy, &rewrite);
        let expected: Vec<&[u8]> = vec![
            b"Authentication-Results: mx;",
            b"\tdkim=none",
            b"authentication-results : other; spf=pass",
            b"Subject: s",
            b"",
            b"Authentication-Results: in the body stays",
            b".leading dot \xe9",
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn a_message_without_body_separator_is_written_back_whole() {
        let copy = copy_of(&[b"Subject: only headers", b"not a header line", b"x: y"]);
        let out = written(copy, &Rewrite::default());
        assert_eq!(out.len(), 3);
        assert_eq!(out[2], b"x: y");
    }
}
