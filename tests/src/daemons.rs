//! Our daemons, started in-process on a loopback port with a configuration given as TOML text,
//! the way the binaries start them (same config loader, same listener, same milter front end).

use chassis::policy::{Policy, Snapshots};
use chassis::socketspec::SocketSpec;
use milterfront::listener::ResilientListener;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::oneshot;

/// A running milter (dkim-milter unless `P` says otherwise); stops when dropped.
pub struct RunningMilter<P = dkim_policy::runtime::Runtime> {
    pub addr: SocketAddr,
    pub unix_path: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    /// The policy snapshots the milter serves (a test may swap in a new one, as a reload does).
    pub policy: Arc<Snapshots<P>>,
}

impl<P> RunningMilter<P> {
    /// The endpoint for the milter client.
    pub fn endpoint(&self) -> milter_client::Endpoint {
        match &self.unix_path {
            Some(p) => milter_client::Endpoint::Unix(p.clone()),
            None => milter_client::Endpoint::Tcp(self.addr),
        }
    }
}

impl<P> Drop for RunningMilter<P> {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Starts the daemon of policy `P` with `toml` (written to `dir/<P::NAME>.toml`, so relative
/// paths such as keys or the history database resolve against `dir`), listening on `socket`
/// (e.g. `inet:0@127.0.0.1`).
pub async fn start<P: Policy>(dir: &Path, toml: &str, socket: &str) -> RunningMilter<P> {
    crate::logcapture::install();
    let path = dir.join(format!("{}.toml", P::NAME));
    std::fs::write(&path, toml).expect("write config");
    let config = P::load(&path).unwrap_or_else(|e| panic!("test config invalid: {e}"));
    let spec: SocketSpec = socket.parse().expect("socket spec");
    let listener = ResilientListener::bind(&spec, Some(0o660))
        .await
        .expect("bind milter socket");
    let (addr, unix_path) = match listener.local_spec().expect("bound") {
        SocketSpec::Inet(a) => (a, None),
        SocketSpec::Unix(p) => ("127.0.0.1:0".parse().unwrap(), Some(p)),
        other => panic!("unexpected {other}"),
    };
    let policy = Arc::new(Snapshots::new(P::build(config).expect("runtime")));
    let (tx, rx) = oneshot::channel::<()>();
    let served = policy.clone();
    tokio::spawn(async move {
        let _ = milterfront::milter::serve(listener, served, 64, async {
            let _ = rx.await;
        })
        .await;
    });
    RunningMilter {
        addr,
        unix_path,
        stop: Some(tx),
        policy,
    }
}

/// The policy of daemon `P` built from `toml` (written to `dir/<P::NAME>.toml`), for front
/// ends a test drives itself (the OpenSMTPD filter loop over in-memory pipes).
pub fn policy<P: Policy>(dir: &Path, toml: &str) -> Arc<Snapshots<P>> {
    crate::logcapture::install();
    let path = dir.join(format!("{}.toml", P::NAME));
    std::fs::write(&path, toml).expect("write config");
    let config = P::load(&path).unwrap_or_else(|e| panic!("test config invalid: {e}"));
    Arc::new(Snapshots::new(P::build(config).expect("runtime")))
}

/// Starts dkim-milter with `toml` (see [`start`]).
pub async fn start_dkim(dir: &Path, toml: &str, socket: &str) -> RunningMilter {
    start::<dkim_policy::runtime::Runtime>(dir, toml, socket).await
}

/// Starts dmarc-milter with `toml` (see [`start`]).
pub async fn start_dmarc(
    dir: &Path,
    toml: &str,
    socket: &str,
) -> RunningMilter<dmarc_policy::runtime::Runtime> {
    start::<dmarc_policy::runtime::Runtime>(dir, toml, socket).await
}
