//! The DMARC policy: plain functions over an envelope and a message, async only for DNS.
//! Nothing here knows which front end (milter, OpenSMTPD filter) delivered the message.

pub mod arc;
pub mod author;
pub mod dkim;
pub mod dmarc;
pub mod evaluate;
pub mod received_spf;
pub mod records;
pub mod spf;
