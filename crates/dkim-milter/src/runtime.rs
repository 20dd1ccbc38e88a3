//! What a session works with: the validated configuration plus the live resources built from
//! it (the resolver). One `Runtime` is shared by every session that started under it; a reload
//! builds a new one and sessions in flight keep theirs.

use crate::config::Config;
use mail_auth::MessageAuthenticator;

/// Distinct key records kept parsed; far more selectors than a busy MX sees within a TTL.
const KEY_CACHE_ENTRIES: usize = 10_000;

pub struct Runtime {
    pub config: Config,
    pub auth: MessageAuthenticator,
    /// This host's name, the authserv-id fallback when neither config nor the MTA gives one.
    pub hostname: String,
    /// Parsed DKIM key records until their TTL ends (a reload starts a fresh one).
    pub keys: chassis::keycache::TxtCache,
}

impl Runtime {
    pub fn new(config: Config) -> Result<Runtime, String> {
        let auth = config.resolver.build()?;
        let hostname = chassis::forged::hostname();
        Ok(Runtime {
            config,
            auth,
            hostname,
            keys: chassis::keycache::TxtCache::new(KEY_CACHE_ENTRIES),
        })
    }
}
