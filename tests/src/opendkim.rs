//! placeholder
pub const OPENDKIM: &str = "/usr/sbin/opendkim";
