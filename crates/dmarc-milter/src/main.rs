//! dmarc-milter: dmarc-policy served over the milter protocol, or as an OpenSMTPD filter with
//! `--opensmtpd`, by the shared front ends.

type Policy = dmarc_policy::runtime::Runtime;

fn main() -> std::process::ExitCode {
    let version = env!("CARGO_PKG_VERSION");
    if smtpdfront::lifecycle::requested() {
        smtpdfront::lifecycle::main::<Policy>(version)
    } else {
        milterfront::lifecycle::main::<Policy>(version)
    }
}
