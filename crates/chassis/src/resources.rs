//! The live resources both daemons build from a configuration: the resolver (mail-auth's
//! authenticator), this host's name, and the cache of parsed DKIM key records. Built once per
//! configuration snapshot, dropped with it.

use crate::dns::ResolverSettings;
use crate::keycache::TxtCache;
use crate::mailauth::MessageAuthenticator;

/// Distinct key records kept parsed; far more selectors than a busy MX sees within a TTL.
const KEY_CACHE_ENTRIES: u64 = 10_000;

pub struct Resources {
    pub auth: MessageAuthenticator,
    /// This host's name: the authserv-id fallback when neither config nor the MTA gives one.
    pub hostname: String,
    /// Parsed DKIM key records until their TTL ends (a reload starts a fresh one).
    pub keys: TxtCache,
}

impl Resources {
    pub fn new(resolver: &ResolverSettings) -> Result<Self, String> {
        Ok(Self {
            auth: resolver.build()?,
            hostname: crate::forged::hostname(),
            keys: TxtCache::new(KEY_CACHE_ENTRIES),
        })
    }
}
