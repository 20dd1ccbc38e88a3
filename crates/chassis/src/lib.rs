//! The chassis both daemons stand on: sockets and the listener, host lists, the
//! Authentication-Results writer and parser, DNS resolver setup, message reassembly, logging,
//! configuration loading (TOML and the legacy `.conf` format), metrics, the process lifecycle,
//! and the milter front end that drives a [`milter::Filter`].

pub mod address;
pub mod authres;
pub mod configfile;
pub mod dkimparse;
pub mod dns;
pub mod envelope;
pub mod forged;
pub mod hostlist;
pub mod keycache;
pub mod legacyconf;
pub mod lifecycle;
pub mod listener;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod milter;
pub mod service;
pub mod socketspec;
pub mod verdict;
