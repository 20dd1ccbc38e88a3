//! `testkit`: the shared test harness of authmilter.
//!
//! Tests in this project use real components instead of mocks: a real DNS server on loopback
//! ([`dns`]), keys generated at run time ([`keys`]), independent DKIM implementations from Debian
//! as judges ([`judges`]), the real OpenDKIM daemon ([`opendkim`]), real MTAs behind one
//! interface ([`mta`]: [`postfix`], [`sendmail`], [`opensmtpd`]) and the shared public corpora ([`corpus`]);
//! our own daemons run in-process ([`daemons`]) with their log lines captured ([`logcapture`]).
//! All traffic stays on 127.0.0.0/8 or ::1, and every wait is bounded.

pub mod binary;
pub mod corpus;
pub mod daemons;
pub mod dns;
pub mod judges;
pub mod keys;
pub mod logcapture;
pub mod mta;
pub mod opendkim;
pub mod opensmtpd;
pub mod outcome;
pub mod postfix;
pub mod postgres;
pub mod sendmail;
pub mod smtp;

use std::sync::Once;

/// Installs a `tracing` subscriber that writes through the test harness's captured output, with
/// the filter taken from `RUST_LOG` (default `info`). Safe to call from every test: only the
/// first call installs anything, and an already-installed global subscriber is left alone. A
/// test binary that captures log lines with [`logcapture::install`] must call that first, since
/// only one global subscriber can exist per process.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
