// SPDX-License-Identifier: GPL-3.0-or-later
//! A small client for the Sendmail milter protocol, version 6: the MTA side.
//!
//! The end-to-end tests need to drive our milters exactly the way an MTA does
//! and assert on what comes back, and the benchmark load generator needs to
//! drive them fast. A real MTA is too heavy and too opaque for both, so this
//! crate speaks the wire protocol directly. It was written from the protocol
//! description (libmilter's documentation and the semantics of `mfdef.h`), and
//! where the description leaves room it follows what Postfix does, because
//! Postfix is the MTA our milters are deployed behind.
//!
//! Layers, from low to high:
//!
//! * [`consts`] and [`proto`]: protocol constants and pure packet
//!   encoding/decoding, unit-testable without any I/O.
//! * [`MilterClient`]: one connection, one method per protocol command, with
//!   a timeout on every read and write. It honours the `SMFIP_NO*` (don't
//!   send) and `SMFIP_NR_*` (don't wait for a reply) flags the milter asked
//!   for, and turns every malformed or out-of-place reply into an [`Error`].
//! * [`Transaction`] and [`run`]: a whole SMTP transaction as an MTA would
//!   present it, stopping where the milter gives a final answer.
//! * [`apply_modifications`] and [`render`]: pure functions that emulate how
//!   Postfix edits the message, so tests can reconstruct what is delivered.

mod client;
pub mod consts;
mod endpoint;
mod error;
mod modify;
pub mod proto;
mod transaction;

pub use client::{ConnectOptions, MilterClient, Negotiated, DEFAULT_TIMEOUT};
pub use endpoint::Endpoint;
pub use error::Error;
pub use modify::{apply_modifications, render, replaced_body};
pub use proto::{EomResult, Modification, Reply};
pub use transaction::{run, run_with, Outcome, Stage, Transaction};
