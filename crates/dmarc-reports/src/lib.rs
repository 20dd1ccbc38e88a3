//! DMARC aggregate reports from dmarc-milter's history store (docs/dmarc-reports.md).
//!
//! A program of its own (`authmilter reports run`, started by a systemd timer), not part of the
//! milter: it needs the right to submit mail, the milter does not.
//!
//! - [`config`]: the report configuration, parsed once;
//! - [`store`]: claiming rows into reports and report states, in the history database;
//! - [`aggregate`]: rows → mail-auth's report model (grouping, counts, metadata, policy);
//! - [`xml`]: the model as RFC 9990 or RFC 7489 XML (mail-auth's writer, fixed up);
//! - [`message`]: the gzip'd attachment and the report mail;
//! - [`rua`], [`verify`]: destinations, size limits, ignore list, external verification;
//! - [`send`]: sendmail pipe, SMTP, dry run;
//! - [`run`]: one run of the program; [`cli`]: its command line;
//! - [`inspect`]: reading a received report (hostile input) into the same model, summarised.
//! - [`failure`]: failure reports (fo=, redaction, AFRF mail); not wired to the milter yet.

pub mod aggregate;
pub mod cli;
pub mod config;
pub mod db;
pub mod failure;
pub mod inspect;
pub mod message;
pub mod rua;
pub mod run;
pub mod send;
pub mod store;
pub mod verify;
pub mod xml;
