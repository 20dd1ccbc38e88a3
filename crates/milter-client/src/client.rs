// SPDX-License-Identifier: GPL-3.0-or-later
//! One milter connection, one method per protocol command.

use crate::consts::*;
use crate::proto::{self, ConnectAddr, DataBuilder, Response};
use crate::{Endpoint, EomResult, Error, Modification, Reply};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

/// How long any single read, write or connect may take by default. Long
/// enough for a milter doing DNS lookups against a slow test resolver, short
/// enough that a hung milter fails the test instead of hanging CI.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The outcome of option negotiation: what the milter asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Negotiated {
    /// Protocol version the milter speaks.
    pub version: u32,
    /// `SMFIF_*` actions the milter requested.
    pub actions: u32,
    /// `SMFIP_*` protocol flags the milter requested.
    pub protocol: u32,
}

impl Negotiated {
    /// Whether all bits of `flag` (`SMFIP_*`) are set.
    pub fn has_protocol(&self, flag: u32) -> bool {
        self.protocol & flag == flag
    }

    /// Whether `SMFIP_HDR_LEADSPC` was negotiated.
    pub fn leadspc(&self) -> bool {
        self.has_protocol(SMFIP_HDR_LEADSPC)
    }

    /// Whether all bits of `action` (`SMFIF_*`) are set.
    pub fn has_action(&self, action: u32) -> bool {
        self.actions & action == action
    }
}

/// Anything we can speak the protocol over.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection to a milter, seen from the MTA side.
///
/// The typed methods follow the negotiated flags so that callers cannot
/// break the protocol by accident: a command the milter opted out of with
/// `SMFIP_NO*` is not sent, and a command it declared `SMFIP_NR_*` for is not
/// answered; both return [`Reply::NoReply`]. To send something the milter did
/// not ask for (robustness tests), use [`send_command`](Self::send_command)
/// and [`read_reply`](Self::read_reply).
///
/// Every read and write is bounded by the timeout (default
/// [`DEFAULT_TIMEOUT`]); expiry is [`Error::Timeout`].
pub struct MilterClient {
    io: BufReader<Box<dyn Io>>,
    timeout: Duration,
    negotiated: Option<Negotiated>,
    macro_requests: Vec<(u32, String)>,
    /// Packets not yet written, when writes are coalesced.
    pending: Vec<u8>,
    coalesce: bool,
}

/// How [`MilterClient::connect_with`] sets up a connection.
///
/// The defaults are those of [`MilterClient::connect`]: `TCP_NODELAY` set,
/// the kernel's own acknowledgement behaviour, one write per packet. The
/// load generator turns them around to behave like a less careful MTA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Bound on the connect and on every later read and write.
    pub timeout: Duration,
    /// Set `TCP_NODELAY` on TCP connections (default `true`). Without it,
    /// Nagle's algorithm holds back a small write while an earlier one is
    /// unacknowledged.
    pub nodelay: bool,
    /// Acknowledgements (Linux `TCP_QUICKACK`, set again after the connect
    /// and after every read, since the kernel resets it on its own):
    /// `None` (default) leaves the kernel's heuristics alone, which delay
    /// acks on an interactive connection; `Some(true)` acks every segment at
    /// once; `Some(false)` delays acks (up to ~40 ms) unless they can ride on
    /// data we send. A client that delays its acks exposes a milter that
    /// writes one reply in several small writes without `TCP_NODELAY`: the
    /// second write waits for the ack of the first. Ignored for UNIX-domain
    /// sockets.
    pub quickack: Option<bool>,
    /// Keep packets in a buffer and write them all at once right before the
    /// next read (default `false`): macros travel in the same write as their
    /// command, as from an MTA with a buffered stream. With it off, every
    /// packet is its own write.
    pub coalesce_writes: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: DEFAULT_TIMEOUT,
            nodelay: true,
            quickack: None,
            coalesce_writes: false,
        }
    }
}

/// A TCP stream that sets quick-ack mode on or off whenever data has been
/// read (the kernel leaves and enters it on its own; setting it again after
/// every read keeps the chosen behaviour).
struct AckControl {
    stream: TcpStream,
    quickack: bool,
}

impl AckControl {
    fn set_quickack(&self) {
        // Best effort: a failure only means the kernel decides.
        let _ = socket2::SockRef::from(&self.stream).set_tcp_quickack(self.quickack);
    }
}

impl AsyncRead for AckControl {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.stream).poll_read(cx, buf);
        if r.is_ready() {
            self.set_quickack();
        }
        r
    }
}

impl AsyncWrite for AckControl {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl std::fmt::Debug for MilterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MilterClient")
            .field("timeout", &self.timeout)
            .field("negotiated", &self.negotiated)
            .finish_non_exhaustive()
    }
}

impl MilterClient {
    /// Connects with the default timeout.
    pub async fn connect(ep: &Endpoint) -> Result<Self, Error> {
        Self::connect_with_timeout(ep, DEFAULT_TIMEOUT).await
    }

    /// Connects, using `timeout` for the connect and every later operation.
    ///
    /// TCP connections get `TCP_NODELAY`: the protocol is strictly
    /// request/response with small packets, and Nagle's algorithm would add
    /// delay to nearly every round trip (ruinous for the benchmark).
    pub async fn connect_with_timeout(ep: &Endpoint, timeout: Duration) -> Result<Self, Error> {
        Self::connect_with(
            ep,
            &ConnectOptions {
                timeout,
                ..ConnectOptions::default()
            },
        )
        .await
    }

    /// Connects with explicit socket options (see [`ConnectOptions`]).
    pub async fn connect_with(ep: &Endpoint, opts: &ConnectOptions) -> Result<Self, Error> {
        let timeout = opts.timeout;
        let io: Box<dyn Io> = match ep {
            Endpoint::Tcp(addr) => {
                let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
                    .await
                    .map_err(|_| Error::Timeout(timeout))??;
                s.set_nodelay(opts.nodelay)?;
                match opts.quickack {
                    None => Box::new(s),
                    Some(quickack) => {
                        let s = AckControl {
                            stream: s,
                            quickack,
                        };
                        s.set_quickack();
                        Box::new(s)
                    }
                }
            }
            Endpoint::Unix(path) => Box::new(
                tokio::time::timeout(timeout, UnixStream::connect(path))
                    .await
                    .map_err(|_| Error::Timeout(timeout))??,
            ),
        };
        let mut c = Self::from_boxed(io);
        c.timeout = timeout;
        c.coalesce = opts.coalesce_writes;
        Ok(c)
    }

    /// Wraps an already connected stream (e.g. one end of
    /// `tokio::io::duplex` in tests).
    pub fn from_stream<S>(stream: S) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::from_boxed(Box::new(stream))
    }

    fn from_boxed(io: Box<dyn Io>) -> Self {
        MilterClient {
            io: BufReader::new(io),
            timeout: DEFAULT_TIMEOUT,
            negotiated: None,
            macro_requests: Vec::new(),
            pending: Vec::new(),
            coalesce: false,
        }
    }

    /// Turns write coalescing on or off (see
    /// [`ConnectOptions::coalesce_writes`]). Turning it off does not write
    /// what is pending; the next read or [`flush`](Self::flush) does.
    pub fn set_coalesce_writes(&mut self, on: bool) {
        self.coalesce = on;
    }

    /// Writes the packets held back by write coalescing, in one write.
    pub async fn flush(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let packet = std::mem::take(&mut self.pending);
        self.write_now(&packet).await?;
        // Keep the allocation for the next batch.
        self.pending = packet;
        self.pending.clear();
        Ok(())
    }

    async fn write_now(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let t = self.timeout;
        let io = &mut self.io;
        tokio::time::timeout(t, async move {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        .map_err(|_| Error::Timeout(t))??;
        Ok(())
    }

    /// Changes the timeout for later operations.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The current timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The result of the last successful [`negotiate`](Self::negotiate).
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// Macro lists the milter requested in its negotiation reply (stage
    /// index, space-separated names). Recorded for inspection only; the
    /// caller decides which macros to send.
    pub fn macro_requests(&self) -> &[(u32, String)] {
        &self.macro_requests
    }

    fn protocol(&self) -> u32 {
        self.negotiated.map_or(0, |n| n.protocol)
    }

    /// Sends one packet as is. No flag is consulted; this is the escape
    /// hatch for sending what a well-behaved MTA would not.
    ///
    /// With write coalescing on, the packet is only queued; it goes out
    /// with the next read, [`flush`](Self::flush) or [`quit`](Self::quit).
    pub async fn send_command(&mut self, cmd: u8, data: &[u8]) -> Result<(), Error> {
        let packet = proto::encode_packet(cmd, data)?;
        if self.coalesce {
            self.pending.extend_from_slice(&packet);
            return Ok(());
        }
        self.flush().await?;
        self.write_now(&packet).await
    }

    /// Reads one packet: command byte and data. Writes pending packets
    /// first.
    pub async fn read_packet(&mut self) -> Result<(u8, Vec<u8>), Error> {
        self.flush().await?;
        let t = self.timeout;
        let io = &mut self.io;
        tokio::time::timeout(t, async move {
            let mut len = [0u8; 4];
            match io.read_exact(&mut len).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(Error::Closed)
                }
                Err(e) => return Err(e.into()),
            }
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 {
                return Err(Error::Malformed("zero-length packet".into()));
            }
            if len > proto::MAX_PACKET {
                return Err(Error::Malformed(format!(
                    "packet length {len} exceeds {}",
                    proto::MAX_PACKET
                )));
            }
            // read_to_end over `take` grows the buffer as bytes arrive, so a
            // lying length costs nothing until the data actually comes.
            let mut buf = Vec::new();
            (&mut *io).take(len as u64).read_to_end(&mut buf).await?;
            if buf.len() < len {
                return Err(Error::Malformed(format!(
                    "connection closed after {} of {len} packet bytes",
                    buf.len()
                )));
            }
            let data = buf.split_off(1);
            Ok((buf[0], data))
        })
        .await
        .map_err(|_| Error::Timeout(t))?
    }

    /// Reads the answer to a command other than end of message: skips
    /// `SMFIR_PROGRESS`, and refuses modifications and negotiation packets
    /// (they are only valid elsewhere) as well as `SMFIR_SKIP` when
    /// `SMFIP_SKIP` was not negotiated.
    pub async fn read_reply(&mut self, cmd: u8) -> Result<Reply, Error> {
        loop {
            let (code, data) = self.read_packet().await?;
            let unexpected = |why| Error::UnexpectedReply {
                command: cmd as char,
                reply: code as char,
                why,
            };
            match proto::decode_response(code, &data)? {
                Response::Progress => continue,
                Response::Reply(Reply::Skip)
                    if self.negotiated.is_some() && self.protocol() & SMFIP_SKIP == 0 =>
                {
                    return Err(unexpected("SMFIP_SKIP was not negotiated"))
                }
                Response::Reply(r) => return Ok(r),
                Response::Modification(_) => {
                    return Err(unexpected(
                        "modifications are only allowed at end of message",
                    ))
                }
                Response::OptNeg { .. } => {
                    return Err(unexpected("negotiation reply outside negotiation"))
                }
            }
        }
    }

    /// Sends `cmd` unless `no_flag` was negotiated, and reads the reply
    /// unless `nr_flag` was.
    async fn exchange(
        &mut self,
        cmd: u8,
        data: &[u8],
        no_flag: u32,
        nr_flag: u32,
    ) -> Result<Reply, Error> {
        let proto = self.protocol();
        if proto & no_flag != 0 {
            return Ok(Reply::NoReply);
        }
        self.send_command(cmd, data).await?;
        if proto & nr_flag != 0 {
            return Ok(Reply::NoReply);
        }
        self.read_reply(cmd).await
    }

    /// `SMFIC_OPTNEG`: offers version 6 with `actions` (`SMFIF_*`) and
    /// `protocol` (`SMFIP_*`), and returns what the milter asked for.
    ///
    /// Refused (like Postfix does): a version above 6 or below 2, or actions
    /// we did not offer. Also refused, stricter than Postfix: protocol flags
    /// we did not offer, because a milter that assumes e.g. `HDR_LEADSPC`
    /// without getting it would misread every header.
    pub async fn negotiate(&mut self, actions: u32, protocol: u32) -> Result<Negotiated, Error> {
        self.negotiated = None;
        self.macro_requests.clear();
        let data = proto::optneg_data(SMFI_VERSION, actions, protocol);
        self.send_command(SMFIC_OPTNEG, &data).await?;
        let (code, data) = self.read_packet().await?;
        if code != SMFIR_OPTNEG {
            // Decode first so that garbage is reported as such.
            proto::decode_response(code, &data)?;
            return Err(Error::UnexpectedReply {
                command: SMFIC_OPTNEG as char,
                reply: code as char,
                why: "expected the negotiation reply",
            });
        }
        let Response::OptNeg {
            version,
            actions: req_actions,
            protocol: req_protocol,
            macro_requests,
        } = proto::decode_response(code, &data)?
        else {
            unreachable!("SMFIR_OPTNEG always decodes to Response::OptNeg")
        };
        if !(2..=SMFI_VERSION).contains(&version) {
            return Err(Error::Negotiation(format!(
                "milter speaks protocol version {version}, we speak {SMFI_VERSION}"
            )));
        }
        if req_actions & !actions != 0 {
            return Err(Error::Negotiation(format!(
                "milter requests actions {req_actions:#x}, we offered {actions:#x}"
            )));
        }
        if req_protocol & !protocol != 0 {
            return Err(Error::Negotiation(format!(
                "milter requests protocol flags {req_protocol:#x}, we offered {protocol:#x}"
            )));
        }
        let n = Negotiated {
            version,
            actions: req_actions,
            protocol: req_protocol,
        };
        self.negotiated = Some(n);
        self.macro_requests = macro_requests;
        Ok(n)
    }

    /// `SMFIC_MACRO`: defines macros for the command `for_cmd` (`b'C'`,
    /// `b'H'`, `b'M'`, `b'R'`, `b'T'`, `b'N'`, `b'E'`). Must come right before
    /// that command. Never answered.
    pub async fn macros(&mut self, for_cmd: u8, pairs: &[(&str, &str)]) -> Result<(), Error> {
        let pairs: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        self.macros_bytes(for_cmd, &pairs).await
    }

    /// [`macros`](Self::macros) with arbitrary bytes.
    pub async fn macros_bytes(
        &mut self,
        for_cmd: u8,
        pairs: &[(&[u8], &[u8])],
    ) -> Result<(), Error> {
        let data = proto::macro_data(for_cmd, pairs)?;
        self.send_command(SMFIC_MACRO, &data).await
    }

    /// `SMFIC_CONNECT`. `None` sends family `'U'` (unknown), as an MTA does
    /// for a client it cannot identify.
    pub async fn connect_info(
        &mut self,
        hostname: &str,
        addr: Option<SocketAddr>,
    ) -> Result<Reply, Error> {
        let addr = addr.map_or(ConnectAddr::Unknown, ConnectAddr::Inet);
        self.connect_info_raw(hostname.as_bytes(), &addr).await
    }

    /// `SMFIC_CONNECT` for a client on a UNIX-domain socket (family `'L'`).
    pub async fn connect_info_unix(&mut self, hostname: &str, path: &str) -> Result<Reply, Error> {
        self.connect_info_raw(hostname.as_bytes(), &ConnectAddr::Unix(path.to_owned()))
            .await
    }

    /// `SMFIC_CONNECT` with a raw host name.
    pub async fn connect_info_raw(
        &mut self,
        hostname: &[u8],
        addr: &ConnectAddr,
    ) -> Result<Reply, Error> {
        let data = proto::connect_data(hostname, addr)?;
        self.exchange(SMFIC_CONNECT, &data, SMFIP_NOCONNECT, SMFIP_NR_CONN)
            .await
    }

    /// `SMFIC_HELO`.
    pub async fn helo(&mut self, helo: &str) -> Result<Reply, Error> {
        let data = DataBuilder::new().cstr(helo)?.build();
        self.exchange(SMFIC_HELO, &data, SMFIP_NOHELO, SMFIP_NR_HELO)
            .await
    }

    /// `SMFIC_MAIL`: `args[0]` is the sender in angle brackets (`"<a@b>"`),
    /// the rest are ESMTP arguments (`"SIZE=1234"`).
    pub async fn mail(&mut self, args: &[&str]) -> Result<Reply, Error> {
        let data = proto::strings_data(args)?;
        self.exchange(SMFIC_MAIL, &data, SMFIP_NOMAIL, SMFIP_NR_MAIL)
            .await
    }

    /// `SMFIC_RCPT`: like [`mail`](Self::mail), for one recipient.
    pub async fn rcpt(&mut self, args: &[&str]) -> Result<Reply, Error> {
        let data = proto::strings_data(args)?;
        self.exchange(SMFIC_RCPT, &data, SMFIP_NORCPT, SMFIP_NR_RCPT)
            .await
    }

    /// `SMFIC_DATA`.
    pub async fn data(&mut self) -> Result<Reply, Error> {
        self.exchange(SMFIC_DATA, &[], SMFIP_NODATA, SMFIP_NR_DATA)
            .await
    }

    /// `SMFIC_HEADER`, value sent exactly as given: stripping the leading
    /// space (or not, under `SMFIP_HDR_LEADSPC`) is the caller's business;
    /// [`crate::run`] does it.
    pub async fn header(&mut self, name: &str, value: &str) -> Result<Reply, Error> {
        self.header_bytes(name.as_bytes(), value.as_bytes()).await
    }

    /// [`header`](Self::header) with arbitrary bytes (8-bit, hostile input).
    pub async fn header_bytes(&mut self, name: &[u8], value: &[u8]) -> Result<Reply, Error> {
        let data = DataBuilder::new().cstr(name)?.cstr(value)?.build();
        self.exchange(SMFIC_HEADER, &data, SMFIP_NOHDRS, SMFIP_NR_HDR)
            .await
    }

    /// `SMFIC_EOH`.
    pub async fn eoh(&mut self) -> Result<Reply, Error> {
        self.exchange(SMFIC_EOH, &[], SMFIP_NOEOH, SMFIP_NR_EOH)
            .await
    }

    /// `SMFIC_BODY`, split into packets of at most [`MILTER_CHUNK_SIZE`]
    /// bytes. Stops at the first reply other than `Continue` (e.g. `Skip` or
    /// `Reject`) and returns it; otherwise returns the last reply. An empty
    /// body sends nothing and returns [`Reply::NoReply`].
    pub async fn body(&mut self, body: &[u8]) -> Result<Reply, Error> {
        let mut last = Reply::NoReply;
        for chunk in body.chunks(MILTER_CHUNK_SIZE) {
            last = self
                .exchange(SMFIC_BODY, chunk, SMFIP_NOBODY, SMFIP_NR_BODY)
                .await?;
            if !matches!(last, Reply::Continue | Reply::NoReply) {
                break;
            }
        }
        Ok(last)
    }

    /// `SMFIC_BODYEOB`: collects modifications until the final reply.
    ///
    /// Refused: a modification whose `SMFIF_*` action was not negotiated,
    /// `SMFIR_SKIP` (meaningless here), a negotiation reply.
    pub async fn eom(&mut self) -> Result<EomResult, Error> {
        self.send_command(SMFIC_BODYEOB, &[]).await?;
        let mut modifications = Vec::new();
        loop {
            let (code, data) = self.read_packet().await?;
            let unexpected = |why| Error::UnexpectedReply {
                command: SMFIC_BODYEOB as char,
                reply: code as char,
                why,
            };
            match proto::decode_response(code, &data)? {
                Response::Progress => {}
                Response::Modification(m) => {
                    self.check_action(&m)
                        .map_err(|()| unexpected("action was not negotiated"))?;
                    modifications.push(m);
                }
                Response::Reply(Reply::Skip) => {
                    return Err(unexpected("skip is not an answer to end of message"))
                }
                Response::Reply(reply) => {
                    return Ok(EomResult {
                        modifications,
                        reply,
                    })
                }
                Response::OptNeg { .. } => {
                    return Err(unexpected("negotiation reply outside negotiation"))
                }
            }
        }
    }

    fn check_action(&self, m: &Modification) -> Result<(), ()> {
        match self.negotiated {
            Some(n) if !n.has_action(m.required_action()) => Err(()),
            _ => Ok(()),
        }
    }

    /// `SMFIC_UNKNOWN`: an SMTP command the MTA did not recognise.
    pub async fn unknown(&mut self, line: &str) -> Result<Reply, Error> {
        let data = DataBuilder::new().cstr(line)?.build();
        self.exchange(SMFIC_UNKNOWN, &data, SMFIP_NOUNKNOWN, SMFIP_NR_UNKN)
            .await
    }

    /// `SMFIC_ABORT`: forget the current message; the connection stays.
    /// Never answered.
    pub async fn abort(&mut self) -> Result<(), Error> {
        self.send_command(SMFIC_ABORT, &[]).await
    }

    /// `SMFIC_QUIT_NC`: end this session but keep the connection; the next
    /// command must be a new [`negotiate`](Self::negotiate).
    pub async fn quit_nc(&mut self) -> Result<(), Error> {
        self.negotiated = None;
        self.send_command(SMFIC_QUIT_NC, &[]).await
    }

    /// `SMFIC_QUIT`, then closes our side. Does not wait for the milter to
    /// close, so a milter that never does cannot stall the caller.
    pub async fn quit(mut self) -> Result<(), Error> {
        self.send_command(SMFIC_QUIT, &[]).await?;
        self.flush().await?;
        let t = self.timeout;
        tokio::time::timeout(t, self.io.shutdown())
            .await
            .map_err(|_| Error::Timeout(t))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, DuplexStream};

    /// The milter end of a duplex pipe, scripted by the test.
    struct Fake(DuplexStream);

    impl Fake {
        async fn expect(&mut self, cmd: u8, data: &[u8]) {
            let mut len = [0u8; 4];
            self.0.read_exact(&mut len).await.unwrap();
            let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
            self.0.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf[0] as char, cmd as char);
            assert_eq!(&buf[1..], data, "data of {:?}", cmd as char);
        }

        async fn send(&mut self, code: u8, data: &[u8]) {
            let p = proto::encode_packet(code, data).unwrap();
            self.0.write_all(&p).await.unwrap();
        }
    }

    fn pair() -> (MilterClient, Fake) {
        let (a, b) = duplex(1 << 20);
        let mut c = MilterClient::from_stream(a);
        // A broken exchange should fail fast, not after the 30 s default.
        c.set_timeout(Duration::from_secs(5));
        (c, Fake(b))
    }

    async fn negotiated(protocol: u32, actions: u32) -> (MilterClient, Fake) {
        let (mut c, mut f) = pair();
        let fake = async {
            f.expect(b'O', &proto::optneg_data(6, ALL_ACTIONS, ALL_PROTOCOL))
                .await;
            f.send(b'O', &proto::optneg_data(6, actions, protocol))
                .await;
        };
        let (n, ()) = tokio::join!(c.negotiate(ALL_ACTIONS, ALL_PROTOCOL), fake);
        assert_eq!(
            n.unwrap(),
            Negotiated {
                version: 6,
                actions,
                protocol
            }
        );
        (c, f)
    }

    #[tokio::test]
    async fn negotiation_refuses_unoffered_flags() {
        let (mut c, mut f) = pair();
        f.send(b'O', &proto::optneg_data(6, 0, SMFIP_HDR_LEADSPC))
            .await;
        let e = c.negotiate(ALL_ACTIONS, 0).await.unwrap_err();
        assert!(matches!(e, Error::Negotiation(_)), "{e}");

        let (mut c, mut f) = pair();
        f.send(b'O', &proto::optneg_data(7, 0, 0)).await;
        let e = c.negotiate(ALL_ACTIONS, ALL_PROTOCOL).await.unwrap_err();
        assert!(matches!(e, Error::Negotiation(_)), "{e}");

        let (mut c, mut f) = pair();
        f.send(b'O', &proto::optneg_data(6, SMFIF_CHGBODY, 0)).await;
        let e = c.negotiate(SMFIF_ADDHDRS, ALL_PROTOCOL).await.unwrap_err();
        assert!(matches!(e, Error::Negotiation(_)), "{e}");

        let (mut c, mut f) = pair();
        f.send(b'c', b"").await;
        let e = c.negotiate(ALL_ACTIONS, ALL_PROTOCOL).await.unwrap_err();
        assert!(
            matches!(e, Error::UnexpectedReply { reply: 'c', .. }),
            "{e}"
        );
    }

    #[tokio::test]
    async fn honours_no_and_nr_flags() {
        let (mut c, mut f) = negotiated(SMFIP_NOHELO | SMFIP_NR_HDR | SMFIP_NOBODY, 0).await;
        // HELO is not sent at all, the headers are not answered: the next
        // thing the milter sees after the headers is EOH.
        assert_eq!(c.helo("x").await.unwrap(), Reply::NoReply);
        assert_eq!(c.header("A", "1").await.unwrap(), Reply::NoReply);
        assert_eq!(c.header("B", " 2").await.unwrap(), Reply::NoReply);
        assert_eq!(c.body(b"ignored").await.unwrap(), Reply::NoReply);
        f.send(b'c', b"").await;
        assert_eq!(c.eoh().await.unwrap(), Reply::Continue);
        f.expect(b'L', b"A\x001\0").await;
        f.expect(b'L', b"B\0 2\0").await;
        f.expect(b'N', b"").await;
    }

    #[tokio::test]
    async fn sends_commands_byte_exact() {
        let (mut c, mut f) = negotiated(0, ALL_ACTIONS).await;
        for _ in 0..7 {
            f.send(b'c', b"").await;
        }
        c.macros(b'C', &[("j", "mx")]).await.unwrap();
        assert_eq!(
            c.connect_info("h.example", Some("192.0.2.7:1025".parse().unwrap()))
                .await
                .unwrap(),
            Reply::Continue
        );
        assert_eq!(c.helo("helo.example").await.unwrap(), Reply::Continue);
        assert_eq!(
            c.mail(&["<a@b.example>", "BODY=8BITMIME"]).await.unwrap(),
            Reply::Continue
        );
        assert_eq!(c.rcpt(&["<c@d.example>"]).await.unwrap(), Reply::Continue);
        assert_eq!(c.data().await.unwrap(), Reply::Continue);
        assert_eq!(
            c.header_bytes(b"Subject", b"\xe9t\xe9\n\tsuite")
                .await
                .unwrap(),
            Reply::Continue
        );
        assert_eq!(c.eoh().await.unwrap(), Reply::Continue);
        c.abort().await.unwrap();
        f.expect(b'D', b"Cj\0mx\0").await;
        f.expect(b'C', b"h.example\x004\x04\x01192.0.2.7\0").await;
        f.expect(b'H', b"helo.example\0").await;
        f.expect(b'M', b"<a@b.example>\0BODY=8BITMIME\0").await;
        f.expect(b'R', b"<c@d.example>\0").await;
        f.expect(b'T', b"").await;
        f.expect(b'L', b"Subject\0\xe9t\xe9\n\tsuite\0").await;
        f.expect(b'N', b"").await;
        f.expect(b'A', b"").await;
        c.quit().await.unwrap();
        f.expect(b'Q', b"").await;
        let mut rest = Vec::new();
        f.0.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn body_is_chunked_and_stops_on_skip() {
        let (mut c, mut f) = negotiated(SMFIP_SKIP, 0).await;
        let body: Vec<u8> = (0..MILTER_CHUNK_SIZE * 3).map(|i| i as u8).collect();
        f.send(b'p', b"").await;
        f.send(b'c', b"").await;
        f.send(b's', b"").await;
        assert_eq!(c.body(&body).await.unwrap(), Reply::Skip);
        f.expect(b'B', &body[..MILTER_CHUNK_SIZE]).await;
        f.expect(b'B', &body[MILTER_CHUNK_SIZE..2 * MILTER_CHUNK_SIZE])
            .await;
        // The third chunk was never sent: the next packet is EOM.
        f.send(b'a', b"").await;
        assert_eq!(
            c.eom().await.unwrap(),
            EomResult {
                modifications: vec![],
                reply: Reply::Accept
            }
        );
        f.expect(b'E', b"").await;
    }

    #[tokio::test]
    async fn skip_requires_negotiation() {
        let (mut c, mut f) = negotiated(0, 0).await;
        f.send(b's', b"").await;
        let e = c.body(b"x").await.unwrap_err();
        assert!(
            matches!(e, Error::UnexpectedReply { reply: 's', .. }),
            "{e}"
        );
    }

    #[tokio::test]
    async fn eom_collects_modifications() {
        let (mut c, mut f) = negotiated(0, SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE).await;
        f.send(b'h', b"X-A\0 one\0").await;
        f.send(b'p', b"").await;
        f.send(b'i', b"\0\0\0\0X-B\0two\0").await;
        f.send(b'm', b"\0\0\0\x02Subject\0\0").await;
        f.send(b'q', b"why\0").await;
        f.send(b'y', b"550 5.7.1 bad\0").await;
        let r = c.eom().await.unwrap();
        assert_eq!(r.reply, Reply::ReplyCode("550 5.7.1 bad".into()));
        assert_eq!(
            r.modifications,
            vec![
                Modification::AddHeader {
                    name: "X-A".into(),
                    value: " one".into()
                },
                Modification::InsertHeader {
                    index: 0,
                    name: "X-B".into(),
                    value: "two".into()
                },
                Modification::ChangeHeader {
                    index: 2,
                    name: "Subject".into(),
                    value: "".into()
                },
                Modification::Quarantine("why".into()),
            ]
        );
    }

    #[tokio::test]
    async fn eom_refuses_unnegotiated_action() {
        let (mut c, mut f) = negotiated(0, SMFIF_ADDHDRS).await;
        f.send(b'b', b"new body").await;
        let e = c.eom().await.unwrap_err();
        assert!(
            matches!(e, Error::UnexpectedReply { reply: 'b', .. }),
            "{e}"
        );
    }

    #[tokio::test]
    async fn modification_outside_eom_is_an_error() {
        let (mut c, mut f) = negotiated(0, ALL_ACTIONS).await;
        f.send(b'h', b"X\0y\0").await;
        let e = c.rcpt(&["<a@b>"]).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::UnexpectedReply {
                    command: 'R',
                    reply: 'h',
                    ..
                }
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn bad_input_is_an_error_not_a_panic() {
        let (mut c, mut f) = pair();
        f.0.write_all(b"\0\0\0\0").await.unwrap();
        assert!(matches!(c.read_packet().await, Err(Error::Malformed(_))));

        let (mut c, mut f) = pair();
        f.0.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(c.read_packet().await, Err(Error::Malformed(_))));

        let (mut c, mut f) = pair();
        f.0.write_all(b"\0\0\0\x09ytrunc").await.unwrap();
        drop(f);
        assert!(matches!(c.read_packet().await, Err(Error::Malformed(_))));

        let (mut c, f) = pair();
        drop(f);
        assert!(matches!(
            c.data().await,
            Err(Error::Io(_)) | Err(Error::Closed)
        ));

        let (mut c, mut f) = pair();
        f.send(b'Z', b"").await;
        assert!(matches!(c.read_reply(b'T').await, Err(Error::Malformed(_))));

        let (mut c, _f) = pair();
        assert!(matches!(
            c.header("X", "a\0b").await,
            Err(Error::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn coalesced_writes_wait_for_the_next_read() {
        let (mut c, mut f) = negotiated(0, ALL_ACTIONS).await;
        c.set_coalesce_writes(true);
        c.macros(b'C', &[("j", "mx")]).await.unwrap();
        c.abort().await.unwrap();
        // Nothing has been written yet.
        let mut probe = [0u8; 1];
        let nothing = tokio::time::timeout(Duration::from_millis(50), f.0.read(&mut probe)).await;
        assert!(nothing.is_err(), "a coalesced packet was written early");
        f.send(b'c', b"").await;
        assert_eq!(c.data().await.unwrap(), Reply::Continue);
        f.expect(b'D', b"Cj\0mx\0").await;
        f.expect(b'A', b"").await;
        f.expect(b'T', b"").await;
        c.abort().await.unwrap();
        c.quit().await.unwrap();
        f.expect(b'A', b"").await;
        f.expect(b'Q', b"").await;
    }

    #[tokio::test]
    async fn reads_time_out() {
        let (mut c, _f) = pair();
        c.set_timeout(Duration::from_millis(50));
        let e = c.data().await.unwrap_err();
        assert!(
            matches!(e, Error::Timeout(d) if d == Duration::from_millis(50)),
            "{e}"
        );
    }
}
