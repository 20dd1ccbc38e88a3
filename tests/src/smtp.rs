//! A tiny blocking SMTP client for tests that talk to a real MTA ([`crate::mta`]).
//!
//! It sends one message per connection (EHLO, optional AUTH PLAIN, MAIL, RCPT..., DATA) and
//! returns the reply that decided the transaction: the reply to the end of DATA, or the first
//! reply that refused something earlier (greeting, EHLO, AUTH, MAIL, RCPT, DATA), so a test can
//! assert on a 4xx/5xx as well as on "250 2.0.0 Ok: queued as ...". Every read and write is
//! bounded by [`IO_TIMEOUT`].

use base64::Engine;
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Upper bound on each connect, read and write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// One (possibly multi-line) SMTP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text after the code, lines joined with "\n" (e.g. "5.7.0 bad DKIM signature data").
    pub text: String,
}

impl Reply {
    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// The queue id from a positive reply to the end of DATA: Postfix's "250 2.0.0 Ok: queued
    /// as QUEUEID" or Sendmail's "250 2.0.0 QUEUEID Message accepted for delivery".
    pub fn queue_id(&self) -> Option<&str> {
        if let Some(rest) = self.text.split("queued as ").nth(1) {
            return rest.split_whitespace().next();
        }
        let words: Vec<&str> = self.text.split_whitespace().collect();
        match words[..] {
            [_, qid, "Message", "accepted", "for", "delivery", ..] => Some(qid),
            _ => None,
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// Every line sent and received, for error messages.
    transcript: String,
}

impl Conn {
    fn read_reply(&mut self) -> io::Result<Reply> {
        let mut code = None;
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("server closed the connection:\n{}", self.transcript),
                ));
            }
            self.transcript.push_str("S: ");
            self.transcript.push_str(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            let bad = || {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad SMTP reply line {line:?}"),
                )
            };
            let c: u16 = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
            if code.is_some_and(|prev| prev != c) {
                return Err(bad());
            }
            code = Some(c);
            lines.push(line.get(4..).unwrap_or("").to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply {
                    code: c,
                    text: lines.join("\n"),
                });
            }
        }
    }

    fn command(&mut self, cmd: &str) -> io::Result<Reply> {
        self.transcript.push_str("C: ");
        self.transcript.push_str(cmd);
        self.transcript.push('\n');
        self.writer.write_all(cmd.as_bytes())?;
        self.writer.write_all(b"\r\n")?;
        self.read_reply()
    }

    fn quit(&mut self) {
        let _ = self.command("QUIT");
    }
}

/// The DATA payload of `data`: every bare LF made CRLF, a final CRLF added if missing, lines
/// starting with "." dot-stuffed, and the terminating ".\r\n" appended.
pub fn data_payload(data: &[u8]) -> Vec<u8> {
    let crlf = crate::mta::to_crlf(data);
    let mut out = Vec::with_capacity(crlf.len() + 16);
    let mut at_line_start = true;
    for &b in &crlf {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Sends `data` (a whole message, headers and body) from `from` to `rcpts` through the SMTP
/// server at `addr`, greeting with `helo` (EHLO) and authenticating with AUTH PLAIN when `auth`
/// is given. Returns the reply to the end of DATA, or the first refusing reply before it (the
/// session is then ended with QUIT). Err only for I/O and protocol errors.
pub fn send(
    addr: SocketAddr,
    helo: &str,
    from: &str,
    rcpts: &[&str],
    data: &[u8],
    auth: Option<(&str, &str)>,
) -> io::Result<Reply> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut c = Conn {
        reader: BufReader::new(stream.try_clone()?),
        writer: stream,
        transcript: String::new(),
    };
    let greeting = c.read_reply()?;
    if greeting.code != 220 {
        c.quit();
        return Ok(greeting);
    }
    let r = c.command(&format!("EHLO {helo}"))?;
    if r.code != 250 {
        c.quit();
        return Ok(r);
    }
    if let Some((user, pass)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        let r = c.command(&format!("AUTH PLAIN {token}"))?;
        if r.code != 235 {
            c.quit();
            return Ok(r);
        }
    }
    let r = c.command(&format!("MAIL FROM:<{from}>"))?;
    if r.code != 250 {
        c.quit();
        return Ok(r);
    }
    for rcpt in rcpts {
        let r = c.command(&format!("RCPT TO:<{rcpt}>"))?;
        if r.code != 250 && r.code != 251 {
            c.quit();
            return Ok(r);
        }
    }
    let r = c.command("DATA")?;
    if r.code != 354 {
        c.quit();
        return Ok(r);
    }
    c.transcript.push_str("C: <message>\n");
    c.writer.write_all(&data_payload(data))?;
    let r = c.read_reply()?;
    c.quit();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_stuffed_and_terminated() {
        assert_eq!(data_payload(b"a\n.b\r\n..c"), b"a\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(data_payload(b".\r\n"), b"..\r\n.\r\n");
    }

    #[test]
    fn queue_id_is_parsed() {
        let r = Reply {
            code: 250,
            text: "2.0.0 Ok: queued as 4F1A2B3C4D".into(),
        };
        assert_eq!(r.queue_id(), Some("4F1A2B3C4D"));
        assert_eq!(r.to_string(), "250 2.0.0 Ok: queued as 4F1A2B3C4D");
        let r = Reply {
            code: 250,
            text: "2.0.0 5AP0x1Ab012345 Message accepted for delivery".into(),
        };
        assert_eq!(r.queue_id(), Some("5AP0x1Ab012345"));
        let r = Reply {
            code: 250,
            text: "2.0.0 Ok".into(),
        };
        assert_eq!(r.queue_id(), None);
    }
}
