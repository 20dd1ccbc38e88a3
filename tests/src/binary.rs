//! A daemon binary run as an operator runs it (a child process with `-c CONFIG`), for the
//! lifecycle and fault tests of both daemons: stderr collected line by line, bounded waits for
//! a log line, the endpoint it announced, signals and exit status. Each daemon crate's tests pass
//! their own binary (`env!("CARGO_BIN_EXE_…")`, which only a crate's own tests can name).

use milter_client::Endpoint;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any wait of this module may take.
const WAIT: Duration = Duration::from_secs(20);

/// The top of the source tree (for `etc/` and `systemd/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The binary running in the background; killed when dropped.
pub struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `bin -c config`, echoing its stderr (prefixed with the binary's name) to the
    /// test's output and keeping every line for [`Daemon::wait_for`].
    pub fn start(bin: &str, config: &Path) -> Daemon {
        let name = Path::new(bin)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Daemon { child, lines }
    }

    /// Every stderr line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (bounded) for a stderr line containing `needle` and returns it.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no log line containing {needle:?}; got {:?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many stderr lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// The endpoint from the "listening on inet:PORT@127.0.0.1" line.
    pub fn endpoint(&self) -> Endpoint {
        let line = self.wait_for("listening on ");
        let spec = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .unwrap_or_default()
            .trim()
            .to_string();
        spec.parse()
            .unwrap_or_else(|e| panic!("bad endpoint {spec}: {e:?}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).expect("signal the daemon");
    }

    /// Waits (bounded) for the daemon to exit and returns its exit code (-1 for a signal).
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "daemon did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`, and the daemon reaped.
    pub fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "{status}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bin -n -c config`: the configuration check, as the operator runs it.
pub fn check_config(bin: &str, config: &Path) -> Output {
    Command::new(bin)
        .args(["-n", "-c"])
        .arg(config)
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"))
}

/// `systemd-analyze verify` on the shipped unit `systemd/<name>.service`, pointed at `bin`
/// (everything else checked as shipped). Without systemd-analyze it says so loudly and returns
/// (in CI, where it must be installed, it fails).
pub fn verify_systemd_unit(name: &str, bin: &str) {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").is_err(),
            "systemd-analyze is needed in CI"
        );
        eprintln!("!!!!! systemd-analyze not installed: the unit file was not verified !!!!!");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit_file = format!("{name}.service");
    let unit = std::fs::read_to_string(repo_root().join("systemd").join(&unit_file)).unwrap();
    let path = dir.path().join(&unit_file);
    std::fs::write(&path, unit.replace(&format!("/usr/sbin/{name}"), bin)).unwrap();
    // The units name their man pages (Documentation=man:...), which exist only once the
    // package is installed: tests/deb_package.sh verifies the installed units with them.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );
}

/// The legacy-format path an operator migrating from OpenDKIM/OpenDMARC takes: `bin -n -c conf`
/// succeeds and warns with `warning` (an option we do not support), then `bin convert conf`
/// prints TOML, written beside `conf` as `converted.toml`, whose path is returned so the test
/// can load both and compare.
pub fn check_then_convert(bin: &str, conf: &Path, warning: &str) -> PathBuf {
    let out = check_config(bin, conf);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(warning), "no {warning:?} in: {stderr}");
    let out = Command::new(bin)
        .arg("convert")
        .arg(conf)
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let converted = conf.with_file_name("converted.toml");
    std::fs::write(&converted, &out.stdout).unwrap();
    converted
}

/// `conf` rewritten as `text` must fail the check with exit 78 (EX_CONFIG) and a message
/// containing `expected` (file, line and key).
pub fn check_fails_with(bin: &str, conf: &Path, text: &str, expected: &str) {
    std::fs::write(conf, text).unwrap();
    let out = check_config(bin, conf);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains(expected), "no {expected:?} in: {stderr}");
}

/// A binary of this workspace built by `cargo test --workspace` (or `cargo build`), found
/// beside the running test executable (`target/<profile>/NAME`), for tests in crates that
/// cannot name it with `env!("CARGO_BIN_EXE_…")`. None when it has not been built.
pub fn workspace_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/test-binary → target/<profile>/NAME
    let profile_dir = exe.parent()?.parent()?;
    let bin = profile_dir.join(name);
    bin.is_file().then_some(bin)
}

/// A directory with two Ed25519 signing keys (`one.pem`, `two.pem`, selectors one and two for
/// example.com) and a KeyTable/SigningTable pair signing with `one`: what the daemon-level
/// tests switch between to see a reload take effect.
pub fn two_key_dir() -> tempfile::TempDir {
    use dkim_policy::keygen::{generate, write_private, KeyKind};
    let dir = tempfile::tempdir().unwrap();
    for sel in ["one", "two"] {
        write_private(
            &dir.path().join(format!("{sel}.pem")),
            &generate(KeyKind::Ed25519).unwrap().private_pem,
        )
        .unwrap();
    }
    std::fs::write(
        dir.path().join("KeyTable"),
        "one example.com:one:one.pem\ntwo example.com:two:two.pem\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("SigningTable"), "*@example.com one\n").unwrap();
    dir
}

/// The pid of a process whose command line (arguments joined by spaces) contains every one
/// of `needles`: how tests and the benchmark find a filter smtpd started.
pub fn pid_with_cmdline(needles: &[&str]) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        needles.iter().all(|n| cmd.contains(n)).then_some(pid)
    })
}
