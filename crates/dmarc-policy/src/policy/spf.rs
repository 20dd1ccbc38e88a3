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

use chassis::mailauth::spf::SpfParameters;
use chassis::mailauth::{MessageAuthenticator, Parameters, ResolverCache, SpfResult};
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
    // Whitespace is no part of a domain; an MTA may pass `marc@ example.com` through.
    match mail_from.rsplit_once('@').map(|(_, d)| d.trim()) {
        Some(d) if !d.is_empty() => (Scope::MailFrom, d),
        _ => (Scope::Helo, helo.trim()),
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
    // The sender as checked (and as %{s} expands): whitespace around the parts removed.
    let sender = match mail_from.rsplit_once('@') {
        Some((local, d)) => format!("{}@{}", local.trim(), d.trim()),
        None => mail_from.trim().to_string(),
    };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let lookups = AtomicU32::new(0);
    let answered = AtomicU32::new(0);
    let txt = Counting::new(&lookups, &answered);
    let mx = Counting::new(&lookups, &answered);
    let v4 = Counting::new(&lookups, &answered);
    let v6 = Counting::new(&lookups, &answered);
    let ptr = Counting::new(&lookups, &answered);
    let params = match scope {
        Scope::MailFrom => SpfParameters::verify_mail_from(ip, helo, host_domain, &sender),
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

/// A `Received-SPF` value in RFC 7208 §9.1 form: the result, a comment in the wording of the
/// RFC's examples, then `client-ip`, `envelope-from`, `helo`, `receiver` and `identity`.
pub fn received_spf(
    check: &SpfCheck,
    receiver: &str,
    ip: IpAddr,
    mail_from: &str,
    helo: &str,
) -> String {
    let who = match check.scope {
        Scope::MailFrom => mail_from.trim(),
        Scope::Helo => check.domain.as_str(),
    };
    let comment = match check.result {
        SpfResult::Pass => format!("domain of {who} designates {ip} as permitted sender"),
        SpfResult::Fail => format!("domain of {who} does not designate {ip} as permitted sender"),
        SpfResult::SoftFail => {
            format!("transitioning domain of {who} does not designate {ip} as permitted sender")
        }
        SpfResult::Neutral => format!("{ip} is neither permitted nor denied by domain of {who}"),
        SpfResult::None => format!("domain of {who} does not designate permitted sender hosts"),
        SpfResult::TempError => format!("error in processing during lookup of {who}"),
        SpfResult::PermError => format!("permanent error in processing domain of {who}"),
    };
    let identity = match check.scope {
        Scope::MailFrom => "mailfrom",
        Scope::Helo => "helo",
    };
    format!(
        "{} ({receiver}: {}) client-ip={ip}; envelope-from={}; helo={}; receiver={}; identity={identity}",
        result_word(check.result),
        comment_safe(&comment),
        quoted(mail_from.trim()),
        token(helo.trim()),
        token(receiver),
    )
}

/// Text that cannot end or nest the comment it is put in.
fn comment_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '(' | ')' | '\\' => '_',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

/// An RFC 5322 quoted-string.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A dot-atom as is, anything else as a quoted-string.
fn token(s: &str) -> String {
    let atom = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
    if !s.is_empty() && s.chars().all(atom) && !s.starts_with('.') && !s.ends_with('.') {
        s.to_string()
    } else {
        quoted(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_spf_header() {
        let check = SpfCheck {
            scope: Scope::MailFrom,
            domain: "example.com".into(),
            result: SpfResult::Pass,
            unanswered: 0,
        };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            received_spf(&check, "mx.example.org", ip, "a@example.com", "foo.example.com"),
            "pass (mx.example.org: domain of a@example.com designates 192.0.2.1 as permitted sender) \
             client-ip=192.0.2.1; envelope-from=\"a@example.com\"; helo=foo.example.com; \
             receiver=mx.example.org; identity=mailfrom"
        );
        let helo = SpfCheck {
            scope: Scope::Helo,
            domain: "foo.example.com".into(),
            result: SpfResult::SoftFail,
            unanswered: 0,
        };
        assert_eq!(
            received_spf(&helo, "mx", ip, "", "[a\"b]"),
            "softfail (mx: transitioning domain of foo.example.com does not designate 192.0.2.1 as \
             permitted sender) client-ip=192.0.2.1; envelope-from=\"\"; helo=\"[a\\\"b]\"; \
             receiver=mx; identity=helo"
        );
    }

    #[test]
    fn null_sender_uses_helo() {
        assert_eq!(identity("", "mail.example"), (Scope::Helo, "mail.example"));
        assert_eq!(
            identity("a@b.example", "mail.example"),
            (Scope::MailFrom, "b.example")
        );
        assert_eq!(
            identity("a@ b.example ", "mail.example"),
            (Scope::MailFrom, "b.example")
        );
        assert_eq!(
            identity("postmaster", "mail.example"),
            (Scope::Helo, "mail.example")
        );
    }
}
