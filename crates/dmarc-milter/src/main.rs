//! dmarc-milter: dmarc-policy served over the milter protocol by the shared front end.

fn main() -> std::process::ExitCode {
    milterfront::lifecycle::main::<dmarc_policy::runtime::Runtime>(env!("CARGO_PKG_VERSION"))
}
