//! `NAME --opensmtpd [-c FILE]`: a daemon as an OpenSMTPD filter, started by smtpd with
//! `filter "NAME" proc-exec "/usr/sbin/NAME --opensmtpd -c /etc/…"`. The configuration is the
//! daemon's usual file (its socket and user settings do not apply: smtpd owns the process);
//! logs go to stderr, which smtpd writes to its own log, or to syslog/JSON as configured.
//! SIGHUP reloads as for the milter. Exit codes follow sysexits(3): 78 for a configuration that
//! does not load, 76 (EX_PROTOCOL) when smtpd speaks a filter protocol we do not.

use chassis::policy::{Policy, Snapshots};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

pub use chassis::cli::EX_USAGE;
pub const EX_PROTOCOL: u8 = 76;
pub const EX_OSERR: u8 = 71;
pub const EX_CONFIG: u8 = 78;

type Input = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
type Output = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// stdin and stdout on the event loop itself (see [`crate::stdio`] for why and how): a socket
/// or a pipe is made non-blocking and served by the reactor; anything else (a file, a
/// terminal) falls back to tokio's stdio.
fn stdio() -> (Input, Output) {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    fn side(fd: std::os::fd::BorrowedFd<'_>, read: bool) -> Option<Result<Input, Output>> {
        let owned = fd.try_clone_to_owned().ok()?;
        let kind = std::fs::File::from(owned.try_clone().ok()?)
            .metadata()
            .ok()?
            .file_type();
        if kind.is_socket() {
            let std = std::os::unix::net::UnixStream::from(owned);
            std.set_nonblocking(true).ok()?;
            return Some(if read {
                Ok(Box::new(crate::stdio::SocketReader::new(std).ok()?))
            } else {
                Err(Box::new(crate::stdio::SocketWriter::new(std)))
            });
        }
        if kind.is_fifo() {
            return Some(if read {
                Ok(Box::new(
                    tokio::net::unix::pipe::Receiver::from_owned_fd(owned).ok()?,
                ))
            } else {
                Err(Box::new(
                    tokio::net::unix::pipe::Sender::from_owned_fd(owned).ok()?,
                ))
            });
        }
        None
    }
    let input = match side(std::io::stdin().as_fd(), true) {
        Some(Ok(i)) => i,
        _ => Box::new(tokio::io::stdin()),
    };
    let output = match side(std::io::stdout().as_fd(), false) {
        Some(Err(o)) => o,
        _ => Box::new(tokio::io::stdout()),
    };
    (input, output)
}

/// The whole `main` of a daemon run as an smtpd filter (`--opensmtpd`), reading the
/// configuration file `config_path` (the command line is parsed by [`chassis::cli`]).
pub fn main<P: Policy>(config_path: PathBuf, version: &'static str) -> ExitCode {
    let config = match P::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", P::NAME);
            return ExitCode::from(EX_CONFIG);
        }
    };
    let service = P::service(&config).clone();
    if let Err(e) = chassis::logging::init(&service.log, P::NAME) {
        eprintln!("{}: {e}", P::NAME);
        return ExitCode::from(EX_CONFIG);
    }
    // One event loop on one thread: the filter reads one stdin, and a work-stealing pool would
    // spend more CPU waking idle threads than the work itself (as measured for the milter);
    // file I/O and blocking stores still run on tokio's blocking threads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: cannot start the runtime: {e}", P::NAME);
            return ExitCode::from(EX_OSERR);
        }
    };
    let code = runtime.block_on(async move {
        let policy = match P::build(config) {
            Ok(p) => Arc::new(Snapshots::new(p)),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(EX_CONFIG);
            }
        };
        let reloader = chassis::reload::spawn::<P>(config_path.clone(), policy.clone(), service);
        tracing::info!(
            "{} v{version} starting as an OpenSMTPD filter (config {})",
            P::NAME,
            config_path.display()
        );
        let (input, output) = stdio();
        // In a task of its own rather than as `block_on`'s future: waking that future
        // always goes through the reactor's wake-up descriptor (a write and one more event
        // per message), while a task woken by its own socket is simply queued.
        let served = match tokio::spawn(crate::filter::serve(policy, input, output)).await {
            Ok(s) => s,
            Err(e) => Err(crate::filter::Stopped::Io(std::io::Error::other(
                e.to_string(),
            ))),
        };
        reloader.abort();
        match served {
            Ok(()) => {
                tracing::info!("{} v{version}: smtpd closed the filter; exiting", P::NAME);
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{}: {e}; exiting", P::NAME);
                ExitCode::from(match e {
                    crate::filter::Stopped::Protocol(_) => EX_PROTOCOL,
                    crate::filter::Stopped::Io(_) => EX_OSERR,
                })
            }
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}
