//! The milter front end: serves any [`chassis::policy::Policy`] over the Sendmail milter
//! protocol (indymilter), and the process around it (command line, listener, reload, graceful
//! stop). Everything milter-specific lives in this crate; the policies never see it.

pub mod lifecycle;
pub mod listener;
pub mod macros;
pub mod milter;
