//! dkim-milter: dkim-policy served over the milter protocol by the shared front end.

fn main() -> std::process::ExitCode {
    milterfront::lifecycle::main::<dkim_policy::runtime::Runtime>(env!("CARGO_PKG_VERSION"))
}
