//! The protocol-free mail core both daemons stand on: the typed [`envelope::Envelope`], message
//! reassembly with a header scan that sees every field ([`message`]), the plain-data
//! [`verdict::Verdict`], the [`policy::Policy`] trait every front end drives, the
//! Authentication-Results writer and parser, host lists, addresses, DNS resolver setup, the DKIM
//! key cache, configuration loading (TOML and the legacy `.conf` format), logging and metrics.
//!
//! Nothing here knows an MTA protocol: the milter front end lives in `milterfront`, and a
//! policy crate that depends on this crate alone cannot speak milter by accident.

pub mod address;
pub mod authres;
pub mod cli;
pub mod configfile;
pub mod dkimparse;
pub mod dns;
pub mod envelope;
pub mod evaluation;
pub mod forged;
pub mod hostlist;
pub mod keycache;
pub mod keydoc;

pub mod legacyconf;
pub mod logging;
pub mod mailauth;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod resources;
pub mod service;
pub mod socketspec;
pub mod verdict;
