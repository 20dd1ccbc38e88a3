//! dmarc-milter: SPF, DKIM results and DMARC with OpenDMARC's behaviour and wording, plus a
//! durable history store for aggregate reports. The binary is a thin shell; everything lives
//! here so tests and other front ends can use it without sockets.

pub mod config;
pub mod daemon;
pub mod filter;
pub mod history;
pub mod legacy;
pub mod policy;
pub mod runtime;
