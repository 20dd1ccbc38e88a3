//! dmarc-milter's policy: SPF, DKIM results and DMARC with OpenDMARC's behaviour and wording,
//! plus a durable history store for aggregate reports, as plain functions over the typed
//! envelope and message. It depends on the protocol-free chassis only; the `dmarc-milter`
//! binary serves it over milter (`milterfront`), and any other front end can drive the same
//! [`runtime::Runtime`].

pub mod config;
pub mod history;
pub mod legacy;
pub mod policy;
pub mod runtime;
