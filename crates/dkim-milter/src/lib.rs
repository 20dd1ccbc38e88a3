//! dkim-milter: DKIM signing and verification with OpenDKIM's configuration files and
//! behaviour. The binary is a thin shell; everything lives here so tests and other front ends
//! can use it without sockets.

pub mod config;
pub mod daemon;
pub mod filter;
pub mod keygen;
pub mod keys;
pub mod legacy;
pub mod policy;
pub mod runtime;
pub mod tables;
