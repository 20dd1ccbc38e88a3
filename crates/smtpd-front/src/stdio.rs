//! smtpd's socket (the filter's stdin and stdout) on the event loop, each side registered for
//! the one readiness it needs.
//!
//! smtpd hands a filter one end of a socket pair as both stdin and stdout. tokio's own
//! stdin/stdout would move every read and write to a blocking thread and back, and those thread
//! switches cost more CPU than the filter's work (measured). A tokio `UnixStream` would listen
//! for both readable and writable: each time smtpd reads what we wrote, the kernel reports the
//! socket writable and wakes the filter for nothing, twice per message (measured with strace:
//! six `epoll_wait` per message where four carried input). So the reading side waits for
//! readable only, and the writing side writes directly and registers for writable only while
//! smtpd is not reading (a full socket buffer: a large message), then deregisters again.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// `stream` registered with the reactor for `interest` only.
fn register(stream: UnixStream, interest: Interest) -> io::Result<AsyncFd<UnixStream>> {
    // SAFETY: a UnixStream owns its descriptor: it stays open, and `as_raw_fd` returns the
    // same one, until the AsyncFd is dropped or `into_inner` hands the stream back.
    unsafe { AsyncFd::register_with_interest(stream, interest) }.map_err(|e| e.into())
}

/// The reading side: readable readiness only.
pub struct SocketReader(AsyncFd<UnixStream>);

impl SocketReader {
    /// `stream` must be non-blocking.
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        register(stream, Interest::READABLE).map(SocketReader)
    }
}

impl AsyncRead for SocketReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let room = unfilled.len();
            match guard.get_inner().read(unfilled) {
                Ok(n) => {
                    // A short read emptied the socket: wait for the next edge rather than
                    // learn that from one more read that fails (as tokio's own streams do).
                    if n > 0 && n < room {
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// The writing side: not registered while writes go through; registered for writable only
/// while the socket buffer is full.
pub struct SocketWriter(Option<Side>);

enum Side {
    Direct(UnixStream),
    Waiting(AsyncFd<UnixStream>),
}

impl SocketWriter {
    /// `stream` must be non-blocking.
    pub fn new(stream: UnixStream) -> Self {
        SocketWriter(Some(Side::Direct(stream)))
    }
}

impl AsyncWrite for SocketWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.0.take() {
                None => return Poll::Ready(Err(io::Error::other("stdout was lost"))),
                Some(Side::Direct(s)) => match (&s).write(data) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.0 = Some(Side::Waiting(register(s, Interest::WRITABLE)?));
                    }
                    other => {
                        self.0 = Some(Side::Direct(s));
                        return Poll::Ready(other);
                    }
                },
                Some(Side::Waiting(fd)) => {
                    let ready = match fd.poll_write_ready(cx) {
                        Poll::Pending => {
                            self.0 = Some(Side::Waiting(fd));
                            return Poll::Pending;
                        }
                        Poll::Ready(r) => r.map(|mut g| g.clear_ready()),
                    };
                    // Writable again (or an error the write will show): leave the reactor.
                    self.0 = Some(Side::Direct(fd.into_inner()));
                    ready?;
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// More than a socket buffer holds goes through the writer while the other end reads
    /// slowly (the writer must wait for writable and come back), and arrives whole and in order.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_socket_buffer_is_waited_out() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        let mut writer = SocketWriter::new(ours.try_clone().unwrap());
        let mut reader = SocketReader::new(theirs).unwrap();
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let send = async move {
            writer.write_all(&data).await.unwrap();
            drop(writer);
            drop(ours);
        };
        let receive = async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = reader.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                // Slower than the writer, so its buffer fills up.
                tokio::task::yield_now().await;
            }
            got
        };
        let ((), got) = tokio::join!(send, receive);
        assert_eq!(got.len(), expected.len());
        assert!(got == expected);
    }
}
