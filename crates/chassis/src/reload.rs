//! Reloading the configuration on SIGHUP or SIGUSR1, the same for every front end: the file is
//! read and the new policy built off the serving loops (file I/O and resolver/store set-up
//! block), then swapped in whole; sessions in flight keep the snapshot they started with. A
//! configuration that does not load leaves the running one in place, with a log line.

use crate::policy::{Policy, Snapshots};
use crate::service::ServiceSettings;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

fn count(outcome: &str) {
    crate::metrics::metrics()
        .reloads
        .get_or_create(&crate::metrics::OutcomeLabel {
            outcome: outcome.into(),
        })
        .inc();
}

/// Starts the reload task for `policy`, read from `config_path`; `running` are the process
/// settings in force (changes to them need a restart and are reported as such).
pub fn spawn<P: Policy>(
    config_path: PathBuf,
    policy: Arc<Snapshots<P>>,
    running: ServiceSettings,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (Ok(mut hup), Ok(mut usr1)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined1()),
        ) else {
            tracing::error!("cannot install the reload signal handlers; reload is off");
            return;
        };
        loop {
            tokio::select! { _ = hup.recv() => {}, _ = usr1.recv() => {} }
            let path = config_path.clone();
            let running = running.clone();
            let built = tokio::task::spawn_blocking(move || match P::load(&path) {
                Err(e) => Err(e.to_string()),
                Ok(cfg) => {
                    let changed = running.changed_restart_only(P::service(&cfg));
                    if !changed.is_empty() {
                        tracing::warn!(
                            "reload: {} changed; this needs a restart and is ignored until then",
                            changed.join(", ")
                        );
                    }
                    P::build(cfg)
                }
            })
            .await;
            match built {
                Ok(Ok(p)) => {
                    policy.replace(p);
                    count("ok");
                    tracing::info!("configuration reloaded from {}", config_path.display());
                }
                Ok(Err(e)) => {
                    count("failed");
                    tracing::error!("reload failed, keeping the running configuration: {e}");
                }
                Err(e) => {
                    count("failed");
                    tracing::error!(
                        "reload failed, keeping the running configuration: reload task failed: {e}"
                    );
                }
            }
        }
    })
}
