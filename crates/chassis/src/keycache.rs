//! Parsed DNS TXT records (DKIM keys above all) kept until their TTL runs out, so a busy
//! verifier does not parse the same public key, and set up its modulus, for every message.
//! mail-auth asks this cache before the resolver and fills it with each record it parsed, with
//! the expiry the DNS answer gave; failed lookups are never stored (mail-auth returns before
//! inserting), so a DNS outage is not remembered.
//!
//! Built on moka (already in the build through hickory): bounded, concurrent without a global
//! lock, and evicting by frequency and recency, so a flood of attacker-chosen selectors cannot
//! flush the keys that real mail keeps using.

use crate::mailauth::{ResolverCache, Txt};
use moka::sync::Cache;
use moka::Expiry;
use std::borrow::Borrow;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// An entry with the instant its DNS TTL ends.
#[derive(Clone)]
struct Entry {
    txt: Txt,
    until: Instant,
}

/// Each entry expires when its own TTL ends.
struct UntilTtl;

impl Expiry<Box<str>, Entry> for UntilTtl {
    fn expire_after_create(
        &self,
        _: &Box<str>,
        e: &Entry,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(e.until.saturating_duration_since(created_at))
    }
}

/// A bounded TXT cache shared by every session of a daemon.
pub struct TxtCache {
    entries: Cache<Box<str>, Entry>,
}

impl TxtCache {
    /// At most `capacity` records.
    pub fn new(capacity: u64) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(capacity.max(1))
                .expire_after(UntilTtl)
                .build(),
        }
    }

    /// Records held now (pending evictions included until they run).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
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
        // moka never returns an entry past its expiry; the check guards a clock step.
        self.entries
            .get(name)
            .filter(|e| e.until > Instant::now())
            .map(|e| e.txt)
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.remove(name).map(|e| e.txt)
    }

    fn insert(&self, name: Box<str>, value: Txt, valid_until: Instant) {
        if valid_until > Instant::now() {
            self.entries.insert(
                name,
                Entry {
                    txt: value,
                    until: valid_until,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailauth::common::DomainKey;
    use crate::mailauth::common::TxtRecordParser;
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
    }

    #[test]
    fn stays_within_capacity() {
        let c = TxtCache::new(3);
        let later = Instant::now() + Duration::from_secs(60);
        for n in 0..10 {
            c.insert(format!("s{n}._domainkey.example.com.").into(), key(), later);
            assert!(c.len() <= 3, "{} entries", c.len());
        }
    }

    /// The old cache cleared everything when full: one-off selectors (attacker-chosen names
    /// cost nothing to send) must not push out a key that real mail keeps using.
    #[test]
    fn a_flood_of_one_off_selectors_keeps_the_busy_key() {
        let c = TxtCache::new(100);
        let later = Instant::now() + Duration::from_secs(600);
        c.insert("busy._domainkey.example.com.".into(), key(), later);
        for n in 0..5_000 {
            assert!(
                c.get("busy._domainkey.example.com.").is_some(),
                "lost after {n}"
            );
            let name = format!("x{n}._domainkey.evil.example.");
            c.insert(name.into(), key(), later);
        }
        assert!(c.len() <= 100);
    }
}
