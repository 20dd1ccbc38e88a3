//! The listening socket. indymilter's `run` ends on the first `accept()` error; a daemon must
//! not die because the process ran out of file descriptors for a moment, so the listener here
//! logs the error, backs off and tries again. Accepted TCP connections get TCP_NODELAY so a
//! reply is never held back by Nagle's algorithm waiting for the MTA's delayed ACK.

use chassis::socketspec::SocketSpec;
use indymilter::{EitherStream, Listener};
use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::time::Sleep;

enum Inner {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    /// Closed for graceful shutdown: no new connections, sessions in flight go on.
    Closed,
}

/// Closes a [`ResilientListener`] from elsewhere (the shutdown path) without stopping the
/// sessions already running.
#[derive(Clone)]
pub struct ListenerCloser(Arc<AtomicBool>, Arc<tokio::sync::Notify>);

impl ListenerCloser {
    pub fn close(&self) {
        self.0.store(true, Ordering::SeqCst);
        self.1.notify_waiters();
        self.1.notify_one();
    }
}

/// A bound milter socket that survives accept errors.
pub struct ResilientListener {
    inner: Inner,
    closed: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    waiter: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    backoff: Option<Pin<Box<Sleep>>>,
    delay: Duration,
    remove_on_drop: bool,
}

const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl ResilientListener {
    /// Binds `spec`. A unix socket path is unlinked first when it is a stale socket (never a
    /// regular file), then created with `mode` (e.g. 0o660) and removed again when dropped.
    pub async fn bind(spec: &SocketSpec, unix_mode: Option<u32>) -> io::Result<Self> {
        let inner = match spec {
            SocketSpec::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if meta.file_type().is_socket() {
                        std::fs::remove_file(path)?;
                    } else {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!(
                                "{} exists and is not a socket; refusing to replace it",
                                path.display()
                            ),
                        ));
                    }
                }
                let l = UnixListener::bind(path)?;
                if let Some(mode) = unix_mode {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
                }
                Inner::Unix(l, path.clone())
            }
            other => {
                let addr = match other.resolve().await? {
                    SocketSpec::Inet(addr) => addr,
                    unresolved => {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrNotAvailable,
                            format!("{unresolved}: no address"),
                        ))
                    }
                };
                Inner::Tcp(TcpListener::bind(addr).await?)
            }
        };
        Ok(Self {
            inner,
            closed: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(tokio::sync::Notify::new()),
            waiter: None,
            backoff: None,
            delay: MIN_BACKOFF,
            remove_on_drop: true,
        })
    }

    /// The bound address, in OpenDKIM's socket syntax (useful when binding port 0 in tests).
    pub fn local_spec(&self) -> io::Result<SocketSpec> {
        match &self.inner {
            Inner::Tcp(l) => Ok(SocketSpec::Inet(l.local_addr()?)),
            Inner::Unix(_, p) => Ok(SocketSpec::Unix(p.clone())),
            Inner::Closed => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "listener closed",
            )),
        }
    }

    /// Another handle on the same listening socket (a duplicated descriptor), registered with
    /// the runtime this is called from, so several event-loop threads can accept from one
    /// socket: the kernel hands each connection to one of them, and a thread busy signing
    /// is simply not waiting in accept. Closing either closes both; only the original removes a
    /// unix socket's path.
    pub fn share(&self) -> io::Result<ResilientListener> {
        use std::os::fd::AsFd;
        let inner = match &self.inner {
            Inner::Tcp(l) => {
                let std_l = std::net::TcpListener::from(l.as_fd().try_clone_to_owned()?);
                std_l.set_nonblocking(true)?;
                Inner::Tcp(TcpListener::from_std(std_l)?)
            }
            Inner::Unix(l, path) => {
                let std_l = std::os::unix::net::UnixListener::from(l.as_fd().try_clone_to_owned()?);
                std_l.set_nonblocking(true)?;
                Inner::Unix(UnixListener::from_std(std_l)?, path.clone())
            }
            Inner::Closed => {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "listener closed",
                ))
            }
        };
        Ok(Self {
            inner,
            closed: self.closed.clone(),
            wake: self.wake.clone(),
            waiter: None,
            backoff: None,
            delay: MIN_BACKOFF,
            remove_on_drop: false,
        })
    }

    /// A handle that closes this listener later.
    pub fn closer(&self) -> ListenerCloser {
        ListenerCloser(self.closed.clone(), self.wake.clone())
    }

    fn close_now(&mut self) {
        if let Inner::Unix(_, path) = &self.inner {
            if self.remove_on_drop {
                let _ = std::fs::remove_file(path);
            }
        }
        self.inner = Inner::Closed;
    }
}

impl Drop for ResilientListener {
    fn drop(&mut self) {
        if let Inner::Unix(_, path) = &self.inner {
            if self.remove_on_drop {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Errors that concern one connection only (the peer went away): retry at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

impl Listener for ResilientListener {
    type Io = EitherStream<TcpStream, UnixStream>;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        if self.waiter.is_none() {
            let wake = self.wake.clone();
            self.waiter = Some(Box::pin(async move { wake.notified().await }));
        }
        if let Some(w) = self.waiter.as_mut() {
            if w.as_mut().poll(cx).is_ready() {
                self.waiter = None;
            }
        }
        loop {
            if self.closed.load(Ordering::SeqCst) {
                if !matches!(self.inner, Inner::Closed) {
                    self.close_now();
                }
                return Poll::Pending;
            }
            if let Some(sleep) = self.backoff.as_mut() {
                match sleep.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => self.backoff = None,
                }
            }
            let polled = match &mut self.inner {
                Inner::Tcp(l) => TcpListener::poll_accept(l, cx).map_ok(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    EitherStream::Tcp(s)
                }),
                Inner::Unix(l, _) => {
                    UnixListener::poll_accept(l, cx).map_ok(|(s, _)| EitherStream::Unix(s))
                }
                Inner::Closed => return Poll::Pending,
            };
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(s)) => {
                    self.delay = MIN_BACKOFF;
                    return Poll::Ready(Ok(s));
                }
                Poll::Ready(Err(e)) if is_connection_error(&e) => {
                    tracing::debug!("accept: connection dropped before it was accepted: {e}");
                }
                Poll::Ready(Err(e)) => {
                    tracing::error!(
                        "accept failed: {e}; retrying in {} ms",
                        self.delay.as_millis()
                    );
                    self.backoff = Some(Box::pin(tokio::time::sleep(self.delay)));
                    self.delay = (self.delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_tcp_port_zero_and_reports_the_port() {
        let l = ResilientListener::bind(&"inet:0@127.0.0.1".parse().unwrap(), None)
            .await
            .unwrap();
        match l.local_spec().unwrap() {
            SocketSpec::Inet(a) => assert!(a.port() != 0),
            other => panic!("unexpected {other}"),
        }
    }

    #[tokio::test]
    async fn unix_socket_is_replaced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let spec: SocketSpec = format!("unix:{}", path.display()).parse().unwrap();
        let first = ResilientListener::bind(&spec, Some(0o660)).await.unwrap();
        std::mem::forget(first); // leave a stale socket file behind, as a crash would
        assert!(path.exists());
        let second = ResilientListener::bind(&spec, Some(0o660)).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(second);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn closing_refuses_new_connections() {
        use indymilter::Listener as _;
        let mut l = ResilientListener::bind(&"inet:0@127.0.0.1".parse().unwrap(), None)
            .await
            .unwrap();
        let addr = match l.local_spec().unwrap() {
            SocketSpec::Inet(a) => a,
            other => panic!("unexpected {other}"),
        };
        let closer = l.closer();
        let accepting = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| l.poll_accept(cx)).await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        closer.close();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "closed listener must refuse connections"
        );
        accepting.abort();
    }

    /// Two handles on one socket, each driven by its own event loop (as the serving threads
    /// are): both can accept, and closing one handle's closer stops both.
    #[test]
    fn shared_handles_accept_and_close_together() {
        let main = tokio::runtime::Runtime::new().unwrap();
        let other = tokio::runtime::Runtime::new().unwrap();
        let spec: SocketSpec = "inet:0@127.0.0.1".parse().unwrap();
        let mut first = main.block_on(ResilientListener::bind(&spec, None)).unwrap();
        let addr = match first.local_spec().unwrap() {
            SocketSpec::Inet(a) => a,
            other => panic!("unexpected {other}"),
        };
        let mut second = {
            let _guard = other.enter();
            first.share().unwrap()
        };
        let closer = second.closer();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a1, a2) = (accepted.clone(), accepted.clone());
        let t1 = main.spawn(async move {
            while std::future::poll_fn(|cx| first.poll_accept(cx))
                .await
                .is_ok()
            {
                a1.fetch_add(1, Ordering::SeqCst);
            }
        });
        let t2 = other.spawn(async move {
            while std::future::poll_fn(|cx| second.poll_accept(cx))
                .await
                .is_ok()
            {
                a2.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut kept = Vec::new();
        for _ in 0..20 {
            kept.push(std::net::TcpStream::connect(addr).unwrap());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while accepted.load(Ordering::SeqCst) < 20 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            20,
            "every connection accepted once"
        );
        closer.close();
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "closing one handle closes the shared socket"
        );
        t1.abort();
        t2.abort();
    }

    #[tokio::test]
    async fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-socket");
        std::fs::write(&path, b"data").unwrap();
        let spec: SocketSpec = format!("unix:{}", path.display()).parse().unwrap();
        assert!(ResilientListener::bind(&spec, None).await.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }
}
