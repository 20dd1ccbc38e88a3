//! SPF (RFC 7208) for DMARC: the MAIL FROM identity, or the HELO identity when MAIL FROM is the
//! null sender, never mixed up (CVE-2019-20790: a HELO result must not count for MAIL FROM).
//!
//! mail-auth evaluates `check_host()` with the 10-term and 10-MX limits but has no §4.6.4
//! void-lookup limit. We add it from the outside: every lookup mail-auth makes goes through a
//! cache we pass in, and mail-auth stores an answer in the cache only when the lookup returned
//! records. A lookup that stored nothing was therefore void (NXDOMAIN or no answer) or failed;
//! failures end the evaluation with temperror, so for any other result more than two unanswered
//! lookups mean more than two void lookups, which RFC 7208 §4.6.4 makes a permerror. Evaluation
//! that would have stopped at the third void lookup is thus reported exactly as the RFC says; it
//! only costs the remaining lookups of that one check.

use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, Parameters, ResolverCache, SpfResult};
use std::borrow::Borrow;
use std::hash::Hash;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

/// RFC 7208 §4.6.4: at most two void lookups.
pub const VOID_LOOKUP_LIMIT: u32 = 2;

/// Which identity was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    MailFrom,
    Helo,
}

impl Scope {
    /// OpenDMARC's log word: `SPF(mailfrom)` / `SPF(helo)`.
    pub fn log_word(self) -> &'static str {
        match self {
            Scope::MailFrom => "mailfrom",
            Scope::Helo => "helo",
        }
    }

    /// The A-R property: `smtp.mailfrom` / `smtp.helo`.
    pub fn property(self) -> &'static str {
        match self {
            Scope::MailFrom => "smtp.mailfrom",
            Scope::Helo => "smtp.helo",
        }
    }

    /// RFC 9990 `spf/scope`.
    pub fn report_word(self) -> &'static str {
        match self {
            Scope::MailFrom => "mfrom",
            Scope::Helo => "helo",
        }
    }
}

/// The outcome of one SPF check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfCheck {
    pub scope: Scope,
    /// The domain checked: MAIL FROM's domain, or the HELO name.
    pub domain: String,
    pub result: SpfResult,
    /// Lookups that returned no records (void, or failed).
    pub unanswered: u32,
}

/// RFC 8601 result words.
pub fn result_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// Counts the lookups mail-auth makes and those that returned records; never caches (the
/// resolver has its own cache).
struct Counting<'a, K, V> {
    lookups: &'a AtomicU32,
    answered: &'a AtomicU32,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<'a, K, V> Counting<'a, K, V> {
    fn new(lookups: &'a AtomicU32, answered: &'a AtomicU32) -> Self {
        Self {
            lookups,
            answered,
            _types: PhantomData,
        }
    }
}

impl<K, V> ResolverCache<K, V> for Counting<'_, K, V> {
    fn get<Q>(&self, _: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        None
    }

    fn remove<Q>(&self, _: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: K, _: V, _: std::time::Instant) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// The identity to check: MAIL FROM's domain, or HELO for the null sender (or a MAIL FROM
/// without a domain).
pub fn identity<'a>(mail_from: &'a str, helo: &'a str) -> (Scope, &'a str) {
    match mail_from.rsplit_once('@') {
        Some((_, d)) if !d.is_empty() => (Scope::MailFrom, d),
        _ => (Scope::Helo, helo),
    }
}

/// Runs SPF for the client at `ip`. `host_domain` is our own name (the `%{r}` macro).
pub async fn check(
    auth: &MessageAuthenticator,
    ip: IpAddr,
    helo: &str,
    mail_from: &str,
    host_domain: &str,
) -> SpfCheck {
    let (scope, domain) = identity(mail_from, helo);
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let lookups = AtomicU32::new(0);
    let answered = AtomicU32::new(0);
    let txt = Counting::new(&lookups, &answered);
    let mx = Counting::new(&lookups, &answered);
    let v4 = Counting::new(&lookups, &answered);
    let v6 = Counting::new(&lookups, &answered);
    let ptr = Counting::new(&lookups, &answered);
    let params = match scope {
        Scope::MailFrom => SpfParameters::verify_mail_from(ip, helo, host_domain, mail_from),
        Scope::Helo => SpfParameters::verify_ehlo(ip, &domain, host_domain),
    };
    let output = auth
        .verify_spf(
            Parameters::new(params)
                .with_txt_cache(&txt)
                .with_mx_cache(&mx)
                .with_ipv4_cache(&v4)
                .with_ipv6_cache(&v6)
                .with_ptr_cache(&ptr),
        )
        .await;
    let unanswered = lookups
        .load(Ordering::Relaxed)
        .saturating_sub(answered.load(Ordering::Relaxed));
    let mut result = output.result();
    if unanswered > VOID_LOOKUP_LIMIT && result != SpfResult::TempError {
        result = SpfResult::PermError;
    }
    SpfCheck {
        scope,
        domain,
        result,
        unanswered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_sender_uses_helo() {
        assert_eq!(identity("", "mail.example"), (Scope::Helo, "mail.example"));
        assert_eq!(
            identity("a@b.example", "mail.example"),
            (Scope::MailFrom, "b.example")
        );
        assert_eq!(
            identity("postmaster", "mail.example"),
            (Scope::Helo, "mail.example")
        );
    }
}
