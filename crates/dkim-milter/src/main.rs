//! dkim-milter: a thin shell over the library and the shared lifecycle.

fn main() -> std::process::ExitCode {
    chassis::lifecycle::main::<dkim_milter::daemon::DkimDaemon>(env!("CARGO_PKG_VERSION"))
}
