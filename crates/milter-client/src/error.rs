// SPDX-License-Identifier: GPL-3.0-or-later
//! The one error type of this crate.
//!
//! The client is used to test milters, so anything a milter does wrong must
//! come back as a value the test can look at (and fail on), never as a panic
//! in the client.

use std::time::Duration;

/// Everything that can go wrong talking to a milter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// The milter did not answer (or did not accept our data) in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),

    /// The milter closed the connection between packets.
    #[error("milter closed the connection")]
    Closed,

    /// A packet from the milter could not be decoded.
    #[error("malformed packet from milter: {0}")]
    Malformed(String),

    /// A well-formed packet arrived where the protocol does not allow it,
    /// e.g. a header modification in answer to RCPT, or `SMFIR_SKIP` when
    /// `SMFIP_SKIP` was not negotiated.
    #[error("unexpected reply {reply:?} to command {command:?}: {why}")]
    UnexpectedReply {
        /// The command we had sent (`SMFIC_*`, as a char for readable output).
        command: char,
        /// The reply code received (`SMFIR_*`).
        reply: char,
        /// What is wrong with it.
        why: &'static str,
    },

    /// The milter's `SMFIC_OPTNEG` reply is unacceptable.
    #[error("option negotiation failed: {0}")]
    Negotiation(String),

    /// An endpoint string could not be parsed or resolved.
    #[error("invalid milter endpoint {0:?}: {1}")]
    Endpoint(String, String),

    /// The caller asked us to send something the protocol cannot carry
    /// (e.g. a NUL byte inside a NUL-terminated string).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}
