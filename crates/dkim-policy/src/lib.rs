//! dkim-milter's policy: DKIM signing and verification with OpenDKIM's configuration files and
//! behaviour, as plain functions over the typed envelope and message. It depends on the
//! protocol-free chassis only; the `dkim-milter` binary serves it over milter (`milterfront`),
//! and any other front end can drive the same [`runtime::Runtime`].

pub mod arc;
pub mod config;
pub mod keygen;
pub mod keys;
pub mod legacy;
pub mod migrate;
pub mod policy;
pub mod runtime;
pub mod smallrsa;
pub mod tables;
