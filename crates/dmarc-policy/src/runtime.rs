//! What a session works with: the validated configuration plus the live resources built from
//! it (resolver, key cache, history store). One `Runtime` is shared by every session that
//! started under it; a reload builds a new one and sessions in flight keep theirs. It is
//! dmarc-milter's [`Policy`]: every front end drives it the same way.

use crate::config::Config;
use crate::history::HistoryStore;
use chassis::envelope::Envelope;
use chassis::message::{BodyPlan, HeaderField, Message};
use chassis::policy::{ConnectDecision, HeadersPlan, Policy};
use chassis::resources::Resources;
use chassis::verdict::Verdict;
use std::sync::Arc;
use std::time::Duration;

pub struct Runtime {
    pub config: Config,
    /// Resolver, host name (also the SPF `%{r}` macro) and parsed-key cache.
    pub res: Resources,
    pub history: Option<Arc<HistoryStore>>,
}

impl Runtime {
    pub fn new(config: Config) -> Result<Runtime, String> {
        let res = Resources::new(&config.resolver)?;
        if config.trusts_upstream() {
            tracing::info!(
                "trusting Authentication-Results from authserv-ids: {}",
                config.trusted_authserv_ids.join(", ")
            );
        }
        let history = match &config.history {
            Some(t) => Some(Arc::new(HistoryStore::open(t, config.history_settings)?)),
            None => None,
        };
        if let (Some(store), Ok(rt)) = (&history, tokio::runtime::Handle::try_current()) {
            if matches!(**store, HistoryStore::Postgres(_)) {
                let store = store.clone();
                rt.spawn(async move {
                    if let HistoryStore::Postgres(pg) = &*store {
                        pg.probe().await;
                    }
                });
            }
        }
        Ok(Runtime {
            config,
            res,
            history,
        })
    }
}

impl Policy for Runtime {
    const NAME: &'static str = "dmarc-milter";
    const DEFAULT_CONFIG: &'static str = "/etc/authmilter/dmarc-milter.toml";
    type Config = Config;
    type Carry = ();

    fn describe(cfg: &Config) -> String {
        let history = match &cfg.history {
            Some(t) => format!("history {t}"),
            None => "no history store".to_string(),
        };
        let dkim = if cfg.trusts_upstream() {
            format!("DKIM results from {}", cfg.trusted_authserv_ids.join(", "))
        } else {
            "DKIM verified here".to_string()
        };
        format!("{dkim}; {history}")
    }

    fn build(cfg: Config) -> Result<Self, String> {
        Runtime::new(cfg)
    }

    fn config(&self) -> &Config {
        &self.config
    }

    /// With trusted upstream results DKIM is not verified here: no body is needed at all,
    /// unless ARC sealers are trusted (the newest ARC-Message-Signature covers the body).
    fn needs_body(&self) -> bool {
        !self.config.trusts_upstream() || !self.config.trusted_arc_sealers.is_empty()
    }

    fn configured_authserv_id(&self) -> Option<&str> {
        self.config.authserv_id.as_deref()
    }

    fn on_connect(&self, env: &Envelope) -> ConnectDecision {
        ConnectDecision::unless_listed(&self.config.ignore_hosts, "ignore_hosts", env)
    }

    /// Nothing here reads the body except DKIM body hashing, so the body is hashed as it
    /// arrives and never stored; with trusted upstream results nothing is hashed either.
    fn plan(
        &self,
        _env: &Envelope,
        _headers: &[HeaderField],
        header_block: &[u8],
    ) -> HeadersPlan<()> {
        let hashes = if self.config.trusts_upstream() {
            if self.config.trusted_arc_sealers.is_empty() {
                Vec::new()
            } else {
                // No DKIM signature of our own to check (cap 0): the newest AMS's hash only.
                chassis::dkimparse::body_specs(header_block, 0)
            }
        } else {
            chassis::dkimparse::body_specs(
                header_block,
                crate::policy::evaluate::MAX_DKIM_SIGNATURES,
            )
        };
        HeadersPlan {
            body: BodyPlan {
                keep_body: false,
                hashes,
            },
            carry: (),
        }
    }

    async fn evaluate(self: Arc<Self>, env: Envelope, msg: Message, _carry: Option<()>) -> Verdict {
        crate::policy::evaluate::evaluate(self, env, msg).await
    }

    fn deadline(&self) -> Duration {
        self.config.message_timeout + STORE_MARGIN * 2
    }
}

/// The history row must be committed this long before the front end's deadline, so a message
/// the MTA is told to retry is never also recorded.
pub const STORE_MARGIN: Duration = Duration::from_secs(1);
