//! External destination verification (RFC 7489 §7.1, RFC 9990 §4): a report for
//! `policy.example` goes to `dest.example` outside its organization only when
//! `policy.example._report._dmarc.dest.example` holds a `v=DMARC1` record.

use crate::rua::{same_organization, Destination};
use chassis::mailauth::common::NoCache;
use chassis::mailauth::{MessageAuthenticator, Txt};

/// The answer for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Same organization, or the destination said yes.
    Allowed,
    /// The destination does not accept reports for this domain.
    Refused,
    /// The lookup failed (DNS trouble): try again on the next run.
    Unknown(String),
}

pub trait Verifier {
    fn check(&self, policy_domain: &str, dest: &Destination) -> Verdict;
}

/// Asks DNS through the configured resolver.
pub struct DnsVerifier {
    pub resolver: MessageAuthenticator,
    pub runtime: tokio::runtime::Runtime,
}

impl DnsVerifier {
    pub fn new(settings: &chassis::dns::ResolverSettings) -> Result<DnsVerifier, String> {
        Ok(DnsVerifier {
            resolver: settings.build()?,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the runtime: {e}"))?,
        })
    }
}

impl Verifier for DnsVerifier {
    fn check(&self, policy_domain: &str, dest: &Destination) -> Verdict {
        if same_organization(policy_domain, dest.domain()) {
            return Verdict::Allowed;
        }
        let addrs = [dest.address.as_str()];
        let found = self
            .runtime
            .block_on(self.resolver.verify_dmarc_report_address(
                policy_domain,
                &addrs,
                None::<&NoCache<Box<str>, Txt>>,
            ));
        match found {
            None => Verdict::Unknown(format!(
                "DNS lookup of {policy_domain}._report._dmarc.{} failed",
                dest.domain()
            )),
            Some(ok) if !ok.is_empty() => Verdict::Allowed,
            Some(_) => Verdict::Refused,
        }
    }
}
