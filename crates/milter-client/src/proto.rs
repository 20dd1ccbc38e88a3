// SPDX-License-Identifier: GPL-3.0-or-later
//! Pure packet encoding and decoding, separate from the socket code so that
//! every byte layout can be unit-tested with plain values.
//!
//! A packet is a big-endian `u32` length (counting the command byte and the
//! data), one command byte, then the data. Strings are NUL-terminated.

use crate::consts::*;
use crate::Error;

/// Upper bound on a packet from the milter. Real replies are small (body
/// replacement comes in chunks of at most 64 KiB), so a larger length means a
/// desynchronised or hostile peer; refusing it keeps a bogus length from
/// making us wait for (or buffer) gigabytes.
pub const MAX_PACKET: usize = 16 * 1024 * 1024;

/// The milter's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reply {
    /// `SMFIR_CONTINUE`.
    Continue,
    /// `SMFIR_ACCEPT`.
    Accept,
    /// `SMFIR_REJECT`.
    Reject,
    /// `SMFIR_TEMPFAIL`.
    Tempfail,
    /// `SMFIR_DISCARD`.
    Discard,
    /// `SMFIR_SKIP`: send no more events of this kind (body chunks, say).
    Skip,
    /// `SMFIR_REPLYCODE`, the text without its NUL, e.g. `"550 5.7.1 text"`.
    /// Multi-line replies keep their embedded CRLFs.
    ReplyCode(String),
    /// Nothing was read: the milter negotiated `SMFIP_NR_*` for this command,
    /// or `SMFIP_NO*` so the command was not sent at all, or there was
    /// nothing to send (an empty body).
    NoReply,
}

impl Reply {
    /// Whether this reply ends the transaction (or connection), i.e. the MTA
    /// would stop talking to the milter about this message.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Reply::Accept | Reply::Reject | Reply::Tempfail | Reply::Discard | Reply::ReplyCode(_)
        )
    }
}

/// A message modification requested at end of message.
///
/// Values are exactly as sent by the milter (without the NUL). Whether a
/// space gets added in front of header values depends on `SMFIP_HDR_LEADSPC`;
/// see [`crate::apply_modifications`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Modification {
    /// `SMFIR_ADDHEADER`: append a header.
    AddHeader {
        /// Header name.
        name: String,
        /// Header value.
        value: String,
    },
    /// `SMFIR_INSHEADER`: insert a header at a 0-based position.
    InsertHeader {
        /// Position; 0 is the very top.
        index: u32,
        /// Header name.
        name: String,
        /// Header value.
        value: String,
    },
    /// `SMFIR_CHGHEADER`: change the `index`-th (1-based) header called
    /// `name`; an empty value deletes it.
    ChangeHeader {
        /// Occurrence, 1-based.
        index: u32,
        /// Header name.
        name: String,
        /// New value; empty means delete.
        value: String,
    },
    /// `SMFIR_QUARANTINE` with its reason.
    Quarantine(String),
    /// `SMFIR_REPLBODY`: one chunk of the replacement body (several packets
    /// make up one replacement; see [`crate::replaced_body`]).
    ReplaceBody(Vec<u8>),
    /// `SMFIR_ADDRCPT`.
    AddRcpt(String),
    /// `SMFIR_ADDRCPT_PAR`: recipient and ESMTP arguments (empty if none).
    AddRcptExt(String, String),
    /// `SMFIR_DELRCPT`.
    DeleteRcpt(String),
    /// `SMFIR_CHGFROM`: sender and ESMTP arguments (empty if none).
    ChangeFrom(String, String),
}

impl Modification {
    /// The `SMFIF_*` action the milter must have negotiated to send this.
    pub fn required_action(&self) -> u32 {
        match self {
            Modification::AddHeader { .. } | Modification::InsertHeader { .. } => SMFIF_ADDHDRS,
            Modification::ChangeHeader { .. } => SMFIF_CHGHDRS,
            Modification::Quarantine(_) => SMFIF_QUARANTINE,
            Modification::ReplaceBody(_) => SMFIF_CHGBODY,
            Modification::AddRcpt(_) => SMFIF_ADDRCPT,
            Modification::AddRcptExt(..) => SMFIF_ADDRCPT_PAR,
            Modification::DeleteRcpt(_) => SMFIF_DELRCPT,
            Modification::ChangeFrom(..) => SMFIF_CHGFROM,
        }
    }
}

/// What the milter answered to end of message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EomResult {
    /// Modifications, in the order received.
    pub modifications: Vec<Modification>,
    /// The final reply.
    pub reply: Reply,
}

/// One decoded packet from the milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `SMFIR_OPTNEG`.
    OptNeg {
        /// Protocol version.
        version: u32,
        /// Requested actions.
        actions: u32,
        /// Requested protocol flags.
        protocol: u32,
        /// Macro list requests (`SMFIF_SETSYMLIST`): stage index and the
        /// space-separated macro names.
        macro_requests: Vec<(u32, String)>,
    },
    /// `SMFIR_PROGRESS`.
    Progress,
    /// An answer to a command.
    Reply(Reply),
    /// A modification (only valid in answer to `SMFIC_BODYEOB`).
    Modification(Modification),
}

/// Frames one packet: length, command byte, data.
///
/// Fails only when the data cannot be described by a `u32` length.
pub fn encode_packet(cmd: u8, data: &[u8]) -> Result<Vec<u8>, Error> {
    let len = u32::try_from(data.len() + 1)
        .map_err(|_| Error::InvalidArgument(format!("packet of {} bytes", data.len())))?;
    let mut out = Vec::with_capacity(5 + data.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.push(cmd);
    out.extend_from_slice(data);
    Ok(out)
}

/// Builds the data part of a command.
#[derive(Debug, Default, Clone)]
pub struct DataBuilder {
    buf: Vec<u8>,
}

impl DataBuilder {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one byte.
    pub fn u8(mut self, b: u8) -> Self {
        self.buf.push(b);
        self
    }

    /// Appends a big-endian `u16`.
    pub fn u16(mut self, v: u16) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a big-endian `u32`.
    pub fn u32(mut self, v: u32) -> Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a string and its terminating NUL. An embedded NUL would
    /// silently split the string on the other side, so it is an error.
    pub fn cstr(mut self, s: impl AsRef<[u8]>) -> Result<Self, Error> {
        let s = s.as_ref();
        if s.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "NUL byte inside string {:?}",
                String::from_utf8_lossy(s)
            )));
        }
        self.buf.extend_from_slice(s);
        self.buf.push(0);
        Ok(self)
    }

    /// Appends raw bytes.
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// The finished data.
    pub fn build(self) -> Vec<u8> {
        self.buf
    }
}

/// Data of `SMFIC_OPTNEG`.
pub fn optneg_data(version: u32, actions: u32, protocol: u32) -> Vec<u8> {
    DataBuilder::new()
        .u32(version)
        .u32(actions)
        .u32(protocol)
        .build()
}

/// Data of `SMFIC_MACRO`: the command the macros belong to, then
/// `name\0value\0` pairs.
pub fn macro_data(for_cmd: u8, pairs: &[(&[u8], &[u8])]) -> Result<Vec<u8>, Error> {
    let mut b = DataBuilder::new().u8(for_cmd);
    for (name, value) in pairs {
        b = b.cstr(name)?.cstr(value)?;
    }
    Ok(b.build())
}

/// The peer address in `SMFIC_CONNECT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConnectAddr {
    /// Family `'4'` or `'6'`, port and address text.
    Inet(std::net::SocketAddr),
    /// Family `'L'`: a UNIX-domain socket path (port 0).
    Unix(String),
    /// Family `'U'`: unknown; no port or address follows.
    Unknown,
}

/// Data of `SMFIC_CONNECT`.
pub fn connect_data(hostname: &[u8], addr: &ConnectAddr) -> Result<Vec<u8>, Error> {
    let b = DataBuilder::new().cstr(hostname)?;
    Ok(match addr {
        ConnectAddr::Inet(sa) => {
            let family = if sa.is_ipv4() { b'4' } else { b'6' };
            // The address goes out as plain text ("192.0.2.1", "2001:db8::1"),
            // as Postfix sends it; libmilter parses it with inet_pton.
            b.u8(family)
                .u16(sa.port())
                .cstr(sa.ip().to_string())?
                .build()
        }
        ConnectAddr::Unix(path) => b.u8(b'L').u16(0).cstr(path)?.build(),
        ConnectAddr::Unknown => b.u8(b'U').build(),
    })
}

/// Data of commands made of a list of strings (`SMFIC_MAIL`, `SMFIC_RCPT`).
pub fn strings_data<S: AsRef<[u8]>>(args: &[S]) -> Result<Vec<u8>, Error> {
    let mut b = DataBuilder::new();
    for a in args {
        b = b.cstr(a)?;
    }
    Ok(b.build())
}

/// Reads NUL-terminated strings and integers out of reply data, refusing
/// anything short or left over.
struct Cursor<'a> {
    code: u8,
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn bad(&self, why: &str) -> Error {
        Error::Malformed(format!("reply {:?}: {why}", self.code as char))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let Some((head, rest)) = self.data.split_first_chunk::<4>() else {
            return Err(self.bad("truncated integer"));
        };
        self.data = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn bytes_z(&mut self) -> Result<&'a [u8], Error> {
        let Some(nul) = self.data.iter().position(|&b| b == 0) else {
            return Err(self.bad("string without terminating NUL"));
        };
        let s = &self.data[..nul];
        self.data = &self.data[nul + 1..];
        Ok(s)
    }

    fn string(&mut self) -> Result<String, Error> {
        let b = self.bytes_z()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.bad("string is not UTF-8"))
    }

    fn nonempty_string(&mut self, what: &str) -> Result<String, Error> {
        let s = self.string()?;
        if s.is_empty() {
            return Err(self.bad(&format!("empty {what}")));
        }
        Ok(s)
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn end(&self) -> Result<(), Error> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(self.bad(&format!("{} unexpected trailing bytes", self.data.len())))
        }
    }
}

/// Decodes one packet from the milter.
///
/// Strict on purpose: data where none belongs, missing NULs, trailing bytes,
/// non-UTF-8 text and unknown codes are all errors, because this client exists
/// to catch milters that get the protocol wrong. (Text is decoded as UTF-8 so
/// tests can compare with `&str`; the milters under test only ever send
/// ASCII or UTF-8 there.)
pub fn decode_response(code: u8, data: &[u8]) -> Result<Response, Error> {
    let mut c = Cursor { code, data };
    let resp = match code {
        SMFIR_CONTINUE => Response::Reply(Reply::Continue),
        SMFIR_ACCEPT => Response::Reply(Reply::Accept),
        SMFIR_REJECT => Response::Reply(Reply::Reject),
        SMFIR_TEMPFAIL => Response::Reply(Reply::Tempfail),
        SMFIR_DISCARD => Response::Reply(Reply::Discard),
        SMFIR_SKIP => Response::Reply(Reply::Skip),
        SMFIR_PROGRESS => Response::Progress,
        SMFIR_REPLYCODE => {
            let text = c.string()?;
            let b = text.as_bytes();
            // Same sanity check as Postfix: a 4xx/5xx code, then space or
            // hyphen. Anything else cannot be turned into an SMTP reply.
            if b.len() < 4
                || !matches!(b[0], b'4' | b'5')
                || !b[1].is_ascii_digit()
                || !b[2].is_ascii_digit()
                || !matches!(b[3], b' ' | b'-')
            {
                return Err(c.bad(&format!("not an SMTP 4xx/5xx reply: {text:?}")));
            }
            Response::Reply(Reply::ReplyCode(text))
        }
        SMFIR_OPTNEG => {
            let version = c.u32()?;
            let actions = c.u32()?;
            let protocol = c.u32()?;
            let mut macro_requests = Vec::new();
            while !c.is_empty() {
                let stage = c.u32()?;
                macro_requests.push((stage, c.string()?));
            }
            Response::OptNeg {
                version,
                actions,
                protocol,
                macro_requests,
            }
        }
        SMFIR_ADDHEADER => {
            let name = c.nonempty_string("header name")?;
            let value = c.string()?;
            Response::Modification(Modification::AddHeader { name, value })
        }
        SMFIR_INSHEADER | SMFIR_CHGHEADER => {
            let index = c.u32()?;
            let name = c.nonempty_string("header name")?;
            let value = c.string()?;
            Response::Modification(if code == SMFIR_INSHEADER {
                Modification::InsertHeader { index, name, value }
            } else {
                Modification::ChangeHeader { index, name, value }
            })
        }
        SMFIR_QUARANTINE => {
            Response::Modification(Modification::Quarantine(c.nonempty_string("reason")?))
        }
        SMFIR_REPLBODY => {
            let chunk = data.to_vec();
            c.data = &[];
            Response::Modification(Modification::ReplaceBody(chunk))
        }
        SMFIR_ADDRCPT => {
            Response::Modification(Modification::AddRcpt(c.nonempty_string("recipient")?))
        }
        SMFIR_DELRCPT => {
            Response::Modification(Modification::DeleteRcpt(c.nonempty_string("recipient")?))
        }
        SMFIR_ADDRCPT_PAR | SMFIR_CHGFROM => {
            let addr = c.nonempty_string("address")?;
            // The ESMTP arguments string is optional on the wire.
            let args = if c.is_empty() {
                String::new()
            } else {
                c.string()?
            };
            Response::Modification(if code == SMFIR_CHGFROM {
                Modification::ChangeFrom(addr, args)
            } else {
                Modification::AddRcptExt(addr, args)
            })
        }
        _ => return Err(c.bad("unknown reply code")),
    };
    c.end()?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_packets() {
        assert_eq!(encode_packet(b'T', b"").unwrap(), b"\0\0\0\x01T");
        assert_eq!(encode_packet(b'H', b"x\0").unwrap(), b"\0\0\0\x03Hx\0");
        let big = vec![7u8; 70000];
        let p = encode_packet(b'B', &big).unwrap();
        assert_eq!(&p[..5], &[0, 1, 0x11, 0x71, b'B']);
        assert_eq!(p.len(), 70005);
    }

    #[test]
    fn encodes_optneg() {
        assert_eq!(
            optneg_data(6, ALL_ACTIONS, ALL_PROTOCOL),
            [0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff]
        );
    }

    #[test]
    fn encodes_macros() {
        let d = macro_data(
            b'C',
            &[(b"j", b"mx.example.org"), (b"{daemon_name}", b"smtpd")],
        )
        .unwrap();
        assert_eq!(d, b"Cj\0mx.example.org\0{daemon_name}\0smtpd\0");
        assert_eq!(macro_data(b'E', &[]).unwrap(), b"E");
        assert!(matches!(
            macro_data(b'E', &[(b"i", b"a\0b")]),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn encodes_connect() {
        let v4 = connect_data(
            b"mail.example.net",
            &ConnectAddr::Inet("192.0.2.1:4567".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(v4, b"mail.example.net\x004\x11\xd7192.0.2.1\0");
        let v6 = connect_data(
            b"h",
            &ConnectAddr::Inet("[2001:db8::1]:25".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(v6, b"h\x006\x00\x192001:db8::1\0");
        let unix = connect_data(b"localhost", &ConnectAddr::Unix("/tmp/s".into())).unwrap();
        assert_eq!(unix, b"localhost\0L\0\0/tmp/s\0");
        let unknown = connect_data(b"[unknown]", &ConnectAddr::Unknown).unwrap();
        assert_eq!(unknown, b"[unknown]\0U");
    }

    #[test]
    fn encodes_string_lists() {
        assert_eq!(
            strings_data(&["<a@b>", "SIZE=10", "BODY=8BITMIME"]).unwrap(),
            b"<a@b>\0SIZE=10\0BODY=8BITMIME\0"
        );
        assert_eq!(
            strings_data(&[b"From".as_slice(), b" \xe9t\xe9\n\tx"]).unwrap(),
            b"From\0 \xe9t\xe9\n\tx\0"
        );
    }

    #[test]
    fn decodes_simple_replies() {
        for (code, r) in [
            (b'c', Reply::Continue),
            (b'a', Reply::Accept),
            (b'r', Reply::Reject),
            (b't', Reply::Tempfail),
            (b'd', Reply::Discard),
            (b's', Reply::Skip),
        ] {
            assert_eq!(decode_response(code, b"").unwrap(), Response::Reply(r));
            assert!(matches!(
                decode_response(code, b"x"),
                Err(Error::Malformed(_))
            ));
        }
        assert_eq!(decode_response(b'p', b"").unwrap(), Response::Progress);
    }

    #[test]
    fn decodes_replycode() {
        assert_eq!(
            decode_response(b'y', b"550 5.7.1 nope\0").unwrap(),
            Response::Reply(Reply::ReplyCode("550 5.7.1 nope".into()))
        );
        assert_eq!(
            decode_response(b'y', b"451-4.7.1 a\r\n451 4.7.1 b\0").unwrap(),
            Response::Reply(Reply::ReplyCode("451-4.7.1 a\r\n451 4.7.1 b".into()))
        );
        for bad in [
            &b"550 5.7.1 nope"[..],
            b"250 ok\0",
            b"55\0",
            b"550x\0",
            b"550 a\0junk",
            b"550 \xff\0",
        ] {
            assert!(
                matches!(decode_response(b'y', bad), Err(Error::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn decodes_optneg() {
        let mut d = optneg_data(6, 0x11, SMFIP_NOCONNECT | SMFIP_HDR_LEADSPC);
        assert_eq!(
            decode_response(b'O', &d).unwrap(),
            Response::OptNeg {
                version: 6,
                actions: 0x11,
                protocol: 0x100001,
                macro_requests: vec![]
            }
        );
        d.extend_from_slice(b"\0\0\0\x02{auth_type} i\0");
        assert_eq!(
            decode_response(b'O', &d).unwrap(),
            Response::OptNeg {
                version: 6,
                actions: 0x11,
                protocol: 0x100001,
                macro_requests: vec![(2, "{auth_type} i".into())]
            }
        );
        assert!(decode_response(b'O', &d[..11]).is_err());
        assert!(decode_response(b'O', &d[..14]).is_err());
    }

    #[test]
    fn decodes_modifications() {
        let m = |code: u8, data: &[u8]| match decode_response(code, data).unwrap() {
            Response::Modification(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            m(b'h', b"X-A\0 v\0"),
            Modification::AddHeader {
                name: "X-A".into(),
                value: " v".into()
            }
        );
        assert_eq!(
            m(b'i', b"\0\0\0\x02X-B\0w\0"),
            Modification::InsertHeader {
                index: 2,
                name: "X-B".into(),
                value: "w".into()
            }
        );
        assert_eq!(
            m(b'm', b"\0\0\0\x01Subject\0\0"),
            Modification::ChangeHeader {
                index: 1,
                name: "Subject".into(),
                value: "".into()
            }
        );
        assert_eq!(m(b'q', b"held\0"), Modification::Quarantine("held".into()));
        assert_eq!(
            m(b'b', b"a\r\n\0b"),
            Modification::ReplaceBody(b"a\r\n\0b".to_vec())
        );
        assert_eq!(m(b'+', b"<x@y>\0"), Modification::AddRcpt("<x@y>".into()));
        assert_eq!(
            m(b'2', b"<x@y>\0NOTIFY=NEVER\0"),
            Modification::AddRcptExt("<x@y>".into(), "NOTIFY=NEVER".into())
        );
        assert_eq!(
            m(b'2', b"<x@y>\0"),
            Modification::AddRcptExt("<x@y>".into(), "".into())
        );
        assert_eq!(
            m(b'-', b"<x@y>\0"),
            Modification::DeleteRcpt("<x@y>".into())
        );
        assert_eq!(
            m(b'e', b"<s@y>\0"),
            Modification::ChangeFrom("<s@y>".into(), "".into())
        );
    }

    #[test]
    fn refuses_malformed_modifications() {
        for (code, data) in [
            (b'h', &b"X-A\0v"[..]),
            (b'h', b"X-A"),
            (b'h', b"\0v\0"),
            (b'h', b"X-A\0v\0extra"),
            (b'i', b"\0\0\x02X\0v\0"),
            (b'm', b""),
            (b'q', b"\0"),
            (b'+', b""),
            (b'e', b"<a>\0b\0c\0"),
            (b'h', b"X\0\xc3\0"),
            (b'Z', b""),
            (b'O', b""),
        ] {
            assert!(
                matches!(decode_response(code, data), Err(Error::Malformed(_))),
                "{:?} {data:?}",
                code as char
            );
        }
    }
}
