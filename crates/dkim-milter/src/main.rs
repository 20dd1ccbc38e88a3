//! dkim-milter: the command line and process lifecycle. All behaviour lives in the library.

use chassis::listener::ResilientListener;
use dkim_milter::config::Config;
use dkim_milter::filter::DkimFilter;
use dkim_milter::runtime::Runtime;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// sysexits(3), as OpenDKIM uses them.
const EX_USAGE: u8 = 64;
const EX_OSERR: u8 = 71;
const EX_CONFIG: u8 = 78;

const USAGE: &str = "usage: dkim-milter [-c FILE] [-n]
  -c, --config FILE   configuration file (default /etc/dkim-milter.toml)
  -n, --check-config  load the configuration, keys and tables, report problems, exit 0 or 78
  -V, --version       print the version";

fn main() -> ExitCode {
    let mut config_path = PathBuf::from("/etc/dkim-milter.toml");
    let mut check_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-c" | "--config" => match args.next() {
                Some(p) => config_path = PathBuf::from(p),
                None => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(EX_USAGE);
                }
            },
            "-n" | "--check-config" | "check-config" => check_only = true,
            "-V" | "--version" => {
                println!("dkim-milter {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("dkim-milter: unknown argument '{other}'\n{USAGE}");
                return ExitCode::from(EX_USAGE);
            }
        }
    }
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dkim-milter: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if check_only {
        println!(
            "{}: configuration OK ({} key(s), {} signing rule(s))",
            config_path.display(),
            config.keys.len(),
            config.signing_table.rules.len()
        );
        return ExitCode::SUCCESS;
    }
    if let Err(e) = chassis::logging::init(&config.log, "dkim-milter") {
        eprintln!("dkim-milter: {e}");
        return ExitCode::from(EX_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dkim-milter: cannot start the runtime: {e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    runtime.block_on(serve(config_path, config))
}

async fn serve(config_path: PathBuf, config: Config) -> ExitCode {
    let socket = config.socket.clone();
    let mode = config.socket_mode;
    let max_connections = config.max_connections;
    let rt = match Runtime::new(config) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let listener = match ResilientListener::bind(&socket, mode).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {socket}: {e}");
            return ExitCode::from(EX_OSERR);
        }
    };
    let bound = listener.local_spec().unwrap_or(socket.clone());
    tracing::info!(
        "dkim-milter v{} starting (config {})",
        env!("CARGO_PKG_VERSION"),
        config_path.display()
    );
    tracing::info!("listening on {bound}; in Postfix's main.cf use: smtpd_milters = {p}  non_smtpd_milters = {p}  milter_default_action = tempfail", p = bound.postfix_form());
    let filter = Arc::new(DkimFilter::new(rt));
    let reloader = {
        let filter = filter.clone();
        tokio::spawn(async move {
            let (Ok(mut hup), Ok(mut usr1)) = (
                signal(SignalKind::hangup()),
                signal(SignalKind::user_defined1()),
            ) else {
                return;
            };
            loop {
                tokio::select! { _ = hup.recv() => {}, _ = usr1.recv() => {} }
                match Config::load(&config_path)
                    .map_err(|e| e.to_string())
                    .and_then(Runtime::new)
                {
                    Ok(rt) => {
                        filter.replace(rt);
                        tracing::info!("configuration reloaded from {}", config_path.display());
                    }
                    Err(e) => {
                        tracing::error!("reload failed, keeping the running configuration: {e}")
                    }
                }
            }
        })
    };
    let shutdown = async {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutting down: no new connections, finishing sessions in flight");
    };
    let result = chassis::milter::serve(listener, filter, max_connections, shutdown).await;
    reloader.abort();
    match result {
        Ok(()) => {
            tracing::info!(
                "dkim-milter v{} terminating with status 0",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("milter stopped: {e}");
            ExitCode::from(EX_OSERR)
        }
    }
}
