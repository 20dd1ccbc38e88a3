//! The DKIM policy: plain functions over an envelope and a message, async only for DNS.
//! Nothing here knows which front end (milter, OpenSMTPD filter) delivered the message.

pub mod arc;
pub mod decide;
pub mod evaluate;
pub mod sign;
pub mod verify;
