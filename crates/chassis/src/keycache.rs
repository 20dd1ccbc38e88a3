//! Parsed DNS TXT records (DKIM keys above all) kept until their TTL runs out, so a busy
//! verifier does not parse the same public key, and set up its modulus, for every message.
//! mail-auth asks this cache before the resolver and fills it with each record it parsed, with
//! the expiry the DNS answer gave; failed lookups are never stored (mail-auth returns before
//! inserting), so a DNS outage is not remembered.

use mail_auth::{ResolverCache, Txt};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

/// A bounded TXT cache shared by every session of a daemon.
pub struct TxtCache {
    entries: Mutex<HashMap<Box<str>, (Txt, Instant)>>,
    capacity: usize,
}

impl TxtCache {
    /// At most `capacity` records; when full, expired ones go first, then everything (a cache
    /// refill costs lookups that the resolver's own cache mostly answers).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ResolverCache<Box<str>, Txt> for TxtCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut entries = self.entries.lock().ok()?;
        match entries.get(name) {
            Some((txt, until)) if *until > Instant::now() => Some(txt.clone()),
            Some(_) => {
                entries.remove(name);
                None
            }
            None => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.lock().ok()?.remove(name).map(|(t, _)| t)
    }

    fn insert(&self, name: Box<str>, value: Txt, valid_until: Instant) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(name, (value, valid_until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::common::verify::DomainKey;
    use std::sync::Arc;
    use std::time::Duration;

    fn key() -> Txt {
        let record = b"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        Txt::DomainKey(Arc::new(DomainKey::parse(record).unwrap()))
    }

    #[test]
    fn entries_live_until_their_ttl() {
        let c = TxtCache::new(10);
        let soon = Instant::now() + Duration::from_millis(50);
        c.insert("a._domainkey.example.com.".into(), key(), soon);
        assert!(c.get("a._domainkey.example.com.").is_some());
        assert!(c.get("b._domainkey.example.com.").is_none());
        std::thread::sleep(Duration::from_millis(80));
        assert!(
            c.get("a._domainkey.example.com.").is_none(),
            "expired entry served"
        );
        assert!(c.is_empty(), "expired entry dropped on access");
    }

    #[test]
    fn stays_within_capacity() {
        let c = TxtCache::new(3);
        let later = Instant::now() + Duration::from_secs(60);
        for n in 0..10 {
            c.insert(format!("s{n}._domainkey.example.com.").into(), key(), later);
            assert!(c.len() <= 3);
        }
        assert!(c.get("s9._domainkey.example.com.").is_some());
    }
}
