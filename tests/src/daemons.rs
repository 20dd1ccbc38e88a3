//! Our daemons, started in-process on a loopback port with a configuration given as TOML text,
//! the way the binaries start them (same config loader, same listener, same milter front end).

use chassis::listener::ResilientListener;
use chassis::socketspec::SocketSpec;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::oneshot;

/// A running milter (dkim-milter unless `F` says otherwise); stops when dropped.
pub struct RunningMilter<F = dkim_milter::filter::DkimFilter> {
    pub addr: SocketAddr,
    pub unix_path: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    pub filter: Arc<F>,
}

impl<F> RunningMilter<F> {
    /// The endpoint for the milter client.
    pub fn endpoint(&self) -> milter_client::Endpoint {
        match &self.unix_path {
            Some(p) => milter_client::Endpoint::Unix(p.clone()),
            None => milter_client::Endpoint::Tcp(self.addr),
        }
    }
}

impl<F> Drop for RunningMilter<F> {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Starts dkim-milter with `toml` (written to `dir/dkim-milter.toml`, so relative paths resolve
/// against `dir`). The `socket` key is overridden by `socket` (e.g. `inet:0@127.0.0.1`).
pub async fn start_dkim(dir: &Path, toml: &str, socket: &str) -> RunningMilter {
    crate::logcapture::install();
    let path = dir.join("dkim-milter.toml");
    std::fs::write(&path, toml).expect("write config");
    let config = dkim_milter::config::Config::load(&path)
        .unwrap_or_else(|e| panic!("test config invalid: {e}"));
    let spec: SocketSpec = socket.parse().expect("socket spec");
    let listener = ResilientListener::bind(&spec, Some(0o660))
        .await
        .expect("bind milter socket");
    let (addr, unix_path) = match listener.local_spec().expect("bound") {
        SocketSpec::Inet(a) => (a, None),
        SocketSpec::Unix(p) => ("127.0.0.1:0".parse().unwrap(), Some(p)),
        other => panic!("unexpected {other}"),
    };
    let rt = dkim_milter::runtime::Runtime::new(config).expect("runtime");
    let filter = Arc::new(dkim_milter::filter::DkimFilter::new(rt));
    let (tx, rx) = oneshot::channel::<()>();
    let f = filter.clone();
    tokio::spawn(async move {
        let _ = chassis::milter::serve(listener, f, 64, async {
            let _ = rx.await;
        })
        .await;
    });
    RunningMilter {
        addr,
        unix_path,
        stop: Some(tx),
        filter,
    }
}

/// Starts dmarc-milter with `toml` (written to `dir/dmarc-milter.toml`, so relative paths such
/// as the history database resolve against `dir`), listening on `socket`.
pub async fn start_dmarc(
    dir: &Path,
    toml: &str,
    socket: &str,
) -> RunningMilter<dmarc_milter::filter::DmarcFilter> {
    crate::logcapture::install();
    let path = dir.join("dmarc-milter.toml");
    std::fs::write(&path, toml).expect("write config");
    let config = dmarc_milter::config::Config::load(&path)
        .unwrap_or_else(|e| panic!("test config invalid: {e}"));
    let spec: SocketSpec = socket.parse().expect("socket spec");
    let listener = ResilientListener::bind(&spec, Some(0o660))
        .await
        .expect("bind milter socket");
    let (addr, unix_path) = match listener.local_spec().expect("bound") {
        SocketSpec::Inet(a) => (a, None),
        SocketSpec::Unix(p) => ("127.0.0.1:0".parse().unwrap(), Some(p)),
        other => panic!("unexpected {other}"),
    };
    let rt = dmarc_milter::runtime::Runtime::new(config).expect("runtime");
    let filter = Arc::new(dmarc_milter::filter::DmarcFilter::new(rt));
    let (tx, rx) = oneshot::channel::<()>();
    let f = filter.clone();
    tokio::spawn(async move {
        let _ = chassis::milter::serve(listener, f, 64, async {
            let _ = rx.await;
        })
        .await;
    });
    RunningMilter {
        addr,
        unix_path,
        stop: Some(tx),
        filter,
    }
}
