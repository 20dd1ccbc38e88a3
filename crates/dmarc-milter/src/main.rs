//! dmarc-milter: a thin shell over the library and the shared lifecycle.

fn main() -> std::process::ExitCode {
    chassis::lifecycle::main::<dmarc_milter::daemon::DmarcDaemon>(env!("CARGO_PKG_VERSION"))
}
