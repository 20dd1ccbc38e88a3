//! What a session works with: the validated configuration plus the live resources built from
//! it (the resolver, the history store). One `Runtime` is shared by every session that started
//! under it; a reload builds a new one and sessions in flight keep theirs.

use crate::config::Config;
use crate::history::Store;
use mail_auth::MessageAuthenticator;
use std::sync::Arc;

/// Distinct key records kept parsed; far more selectors than a busy MX sees within a TTL.
const KEY_CACHE_ENTRIES: usize = 10_000;

pub struct Runtime {
    pub config: Config,
    pub auth: MessageAuthenticator,
    /// This host's name, the authserv-id fallback when neither config nor the MTA gives one,
    /// and the SPF `%{r}` macro.
    pub hostname: String,
    /// Parsed DKIM key records until their TTL ends (a reload starts a fresh one).
    pub keys: chassis::keycache::TxtCache,
    pub history: Option<Arc<Store>>,
}

impl Runtime {
    pub fn new(config: Config) -> Result<Runtime, String> {
        let auth = config.resolver.build()?;
        let hostname = chassis::forged::hostname();
        if config.trusts_upstream() {
            tracing::info!(
                "trusting Authentication-Results from authserv-ids: {}",
                config.trusted_authserv_ids.join(", ")
            );
        }
        let history = match &config.history {
            Some(p) => Some(Arc::new(Store::open(p)?)),
            None => None,
        };
        Ok(Runtime {
            config,
            auth,
            hostname,
            keys: chassis::keycache::TxtCache::new(KEY_CACHE_ENTRIES),
            history,
        })
    }
}
