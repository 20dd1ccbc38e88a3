//! The OpenSMTPD front end: both daemons as smtpd filters (smtpd-filters(7)), a sibling of the
//! milter front end over the same protocol-free core. smtpd starts the filter with
//! `proc-exec` and talks to it line by line on stdin/stdout: report events describe the session
//! ([`session`] turns them into a typed `Envelope`), the data-line phase carries the message,
//! which comes back rewritten with our headers, and the commit phase takes the disposition.
//!
//! * [`proto`]: the line format, parsed and written (versions 0.6 and 0.7);
//! * [`session`]: one SMTP session's envelope and the message being received;
//! * [`filter`]: the loop that reads stdin, drives the policy and writes stdout;
//! * [`stdio`]: smtpd's socket on the event loop, each side waiting only for what it needs;
//! * [`lifecycle`]: `NAME --opensmtpd -c CONFIG`: configuration, logging, reload, exit codes.

pub mod filter;
pub mod lifecycle;
pub mod proto;
pub mod session;
pub mod stdio;
