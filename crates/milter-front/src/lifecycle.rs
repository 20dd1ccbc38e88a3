//! The life of a daemon process, shared by both milters: command line, configuration check,
//! logging, binding, pid file, dropping privileges, reload on SIGHUP/SIGUSR1, graceful stop on
//! SIGTERM/SIGINT with a grace period. Exit codes follow sysexits(3), as OpenDKIM's do.

use crate::listener::ResilientListener;
use chassis::policy::{Policy, Snapshots};
use chassis::service::ServiceSettings;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

pub use chassis::cli::EX_USAGE;
pub const EX_OSERR: u8 = 71;
pub const EX_NOPERM: u8 = 77;
pub const EX_CONFIG: u8 = 78;

/// The whole `main` of a daemon serving milter connections, after the command line has been
/// parsed ([`chassis::cli::DaemonInfo`]): a configuration check, a conversion, or serving.
pub fn main<D: Policy>(task: chassis::cli::DaemonTask, version: &'static str) -> ExitCode {
    use chassis::cli::DaemonTask;
    let (config_path, check_only) = match task {
        DaemonTask::Convert { file } => {
            return match D::convert(Path::new(&file)) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: {e}", D::NAME);
                    ExitCode::from(EX_CONFIG)
                }
            };
        }
        DaemonTask::Check { config } => (config, true),
        DaemonTask::Serve { config, .. } => (config, false),
    };
    let config = match D::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", D::NAME);
            return ExitCode::from(EX_CONFIG);
        }
    };
    if check_only {
        println!(
            "{}: configuration OK ({})",
            config_path.display(),
            D::describe(&config)
        );
        return ExitCode::SUCCESS;
    }
    if let Err(e) = chassis::logging::init(&D::service(&config).log, D::NAME) {
        eprintln!("{}: {e}", D::NAME);
        return ExitCode::from(EX_CONFIG);
    }
    let runtime = match event_loop() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: cannot start the runtime: {e}", D::NAME);
            return ExitCode::from(EX_OSERR);
        }
    };
    let code = runtime.block_on(run::<D>(config_path, config, version));
    // Sessions cut at the end of the grace period must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

/// One event loop on one thread. Each serving thread gets its own (see [`run`]): a
/// work-stealing pool wakes idle threads several times per milter command, which cost more CPU
/// than the milter work itself for a small message.
fn event_loop() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

/// Serves from a task on the event loop's worker thread, where the sessions run too: served
/// from `block_on`'s thread instead, every accepted connection would be a cross-thread wake-up.
async fn serve_on_worker<P: Policy>(
    listener: ResilientListener,
    filter: Arc<Snapshots<P>>,
    max_connections: usize,
    idle_timeout: std::time::Duration,
    shutdown: impl std::future::Future + Send + 'static,
) -> std::io::Result<()> {
    tokio::spawn(crate::milter::serve_with(
        listener,
        filter,
        max_connections,
        idle_timeout,
        shutdown,
    ))
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Starts `count` more threads serving `listener`'s socket with `filter`, each on its own event
/// loop. Each reports how its serving ended on `done`; each stops when `stop` turns true.
fn spawn_serving_threads<P: Policy>(
    count: usize,
    listener: &ResilientListener,
    filter: &Arc<Snapshots<P>>,
    service: &ServiceSettings,
    stop: &tokio::sync::watch::Receiver<bool>,
    done: &tokio::sync::mpsc::UnboundedSender<std::io::Result<()>>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut threads = Vec::with_capacity(count);
    for n in 1..=count {
        let rt = event_loop()?;
        let shared = {
            let _guard = rt.enter();
            listener.share()?
        };
        let (filter, mut stop, done) = (filter.clone(), stop.clone(), done.clone());
        let (max, idle) = (service.connections_per_worker(), service.idle_timeout);
        let handle = std::thread::Builder::new()
            .name(format!("milter-{n}"))
            .spawn(move || {
                let result = rt.block_on(serve_on_worker(shared, filter, max, idle, async move {
                    let _ = stop.wait_for(|s| *s).await;
                }));
                let _ = done.send(result);
                rt.shutdown_timeout(std::time::Duration::from_millis(200));
            })?;
        threads.push(handle);
    }
    Ok(threads)
}

/// Switches to `user[:group]`: supplementary groups, then gid, then uid.
pub fn drop_privileges(spec: &str) -> Result<(), String> {
    use nix::unistd::{setgid, setgroups, setuid, Group, User};
    let (user_name, group_name) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = User::from_name(user_name)
        .map_err(|e| format!("cannot look up user '{user_name}': {e}"))?
        .ok_or_else(|| format!("no such user '{user_name}'"))?;
    let gid = match group_name {
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| format!("cannot look up group '{g}': {e}"))?
                .ok_or_else(|| format!("no such group '{g}'"))?
                .gid
        }
        None => user.gid,
    };
    setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
    setgid(gid).map_err(|e| format!("setgid({gid}): {e}"))?;
    setuid(user.uid).map_err(|e| format!("setuid({}): {e}", user.uid))?;
    Ok(())
}

async fn run<D: Policy>(
    config_path: PathBuf,
    config: D::Config,
    version: &'static str,
) -> ExitCode {
    let service = D::service(&config).clone();
    // Before anything can be asked of us: a SIGTERM that arrives while we bind and build is
    // kept and answered with a graceful stop once serving starts, not by the default action
    // (death with status 143 before the handlers exist).
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return ExitCode::from(EX_OSERR);
    };
    let listener = match ResilientListener::bind(&service.socket, service.socket_mode).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {}: {e}", service.socket);
            return ExitCode::from(EX_OSERR);
        }
    };
    let bound = listener
        .local_spec()
        .unwrap_or_else(|_| service.socket.clone());
    if let Some(pid) = &service.pid_file {
        if let Err(e) = std::fs::write(pid, format!("{}\n", std::process::id())) {
            tracing::error!("cannot write pid file {}: {e}", pid.display());
            return ExitCode::from(EX_OSERR);
        }
    }
    if let (Some(user), chassis::socketspec::SocketSpec::Unix(path)) = (&service.user, &bound) {
        // The socket stays usable by the daemon's group after the switch.
        if let Ok(Some(u)) = nix::unistd::User::from_name(user.split(':').next().unwrap_or(user)) {
            let _ = nix::unistd::chown(path, Some(u.uid), Some(u.gid));
        }
    }
    if let Some(user) = &service.user {
        if let Err(e) = drop_privileges(user) {
            tracing::error!("cannot switch to {user}: {e}");
            return ExitCode::from(EX_NOPERM);
        }
    }
    if let Some(addr) = service.metrics_listen {
        match chassis::metrics::serve(addr).await {
            Ok(a) => tracing::info!("metrics on http://{a}/metrics"),
            Err(e) => {
                tracing::error!("cannot serve metrics on {addr}: {e}");
                return ExitCode::from(EX_OSERR);
            }
        }
    }
    let filter = match D::build(config) {
        Ok(f) => Arc::new(Snapshots::new(f)),
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    tracing::info!(
        "{} v{version} starting (config {})",
        D::NAME,
        config_path.display()
    );
    tracing::info!(
        "listening on {bound}; in Postfix's main.cf use: smtpd_milters = {p}  non_smtpd_milters = {p}  milter_default_action = tempfail",
        p = bound.postfix_form()
    );

    let reloader =
        chassis::reload::spawn::<D>(config_path.clone(), filter.clone(), service.clone());

    let closer = listener.closer();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let threads = match spawn_serving_threads(
        service.workers.saturating_sub(1),
        &listener,
        &filter,
        &service,
        &stop_rx,
        &done_tx,
    ) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("cannot start the serving threads: {e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    let mut own_stop = stop_rx.clone();
    let serve = async {
        // This thread serves too; the first serving loop to end (an error) ends the daemon.
        tokio::select! {
            r = serve_on_worker(
                listener,
                filter,
                service.connections_per_worker(),
                service.idle_timeout,
                async move {
                    let _ = own_stop.wait_for(|s| *s).await;
                },
            ) => r,
            Some(r) = done_rx.recv() => r,
        }
    };
    tokio::pin!(serve);
    let result = tokio::select! {
        r = &mut serve => r,
        _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
            // Stop taking connections, let the open ones finish their messages, then stop.
            closer.close();
            let open = crate::milter::active_sessions();
            tracing::info!("shutting down: no new connections; waiting up to {} s for {open} open session(s)", service.shutdown_grace.as_secs());
            let deadline = tokio::time::Instant::now() + service.shutdown_grace;
            while crate::milter::active_sessions() > 0 && tokio::time::Instant::now() < deadline {
                tokio::select! {
                    r = &mut serve => return finish::<D>(r, &service, version),
                    _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
                }
            }
            let left = crate::milter::active_sessions();
            if left > 0 {
                tracing::warn!("grace period over; closing {left} remaining session(s)");
            }
            let _ = stop_tx.send(true);
            match tokio::time::timeout(std::time::Duration::from_secs(2), &mut serve).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    let _ = stop_tx.send(true);
    closer.close();
    // Each thread's loop has been told to stop; a wedged one must not keep the process alive.
    let joined =
        tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join())));
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), joined).await;
    reloader.abort();
    finish::<D>(result, &service, version)
}

fn finish<D: Policy>(
    result: std::io::Result<()>,
    service: &ServiceSettings,
    version: &str,
) -> ExitCode {
    if let Some(pid) = &service.pid_file {
        let _ = std::fs::remove_file(pid);
    }
    match result {
        Ok(()) => {
            tracing::info!("{} v{version} terminating with status 0", D::NAME);
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("milter stopped: {e}");
            ExitCode::from(EX_OSERR)
        }
    }
}
