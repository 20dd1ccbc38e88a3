//! `authmilter`: the operator's tools around the milters, as a library so that tests (and other
//! front ends) call the same code the command runs.
//!
//! - [`genkey`]: make a DKIM key pair, print the DNS record and the KeyTable/SigningTable lines.
//! - [`testkey`]: check published DKIM records against the private keys.
//! - [`audit`]: one report on a domain's mail DNS (MX, rDNS, SPF, DKIM, DMARC, MTA-STS, TLS-RPT).
//!
//! Every lookup goes through the resolver the daemons use ([`chassis::dns::ResolverSettings`]),
//! so the tools see what the milters see.

pub mod audit;
pub mod cli;
pub mod dns;
pub mod genkey;
pub mod report;
pub mod testkey;
