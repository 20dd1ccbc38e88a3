//! A throwaway PostgreSQL cluster from Debian's postgresql package (initdb + pg_ctl), on a
//! free loopback port, with trust authentication for one role and one database. Unix sockets
//! are off: only 127.0.0.1 is used. As root (CI), the server runs as the `postgres` user the
//! package creates, since PostgreSQL refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The newest installed server binaries (`/usr/lib/postgresql/N/bin`).
pub fn bindir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// True when PostgreSQL can be run here; otherwise says so loudly (tests/run.sh installs it).
pub fn available() -> bool {
    if bindir().is_none() {
        eprintln!(
            "SKIPPED: no PostgreSQL server under /usr/lib/postgresql (Debian's postgresql; tests/run.sh installs it)"
        );
        return false;
    }
    true
}

pub struct Cluster {
    _dir: tempfile::TempDir,
    data: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Run the server commands as this user (root only).
    run_as: Option<String>,
    /// With TLS: the CA that signed the server's certificate (for `sslrootcert`).
    ca: Option<PathBuf>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Cluster {
    /// initdb, start, wait until it answers, create the database `dmarc` owned by `authmilter`.
    pub fn start() -> Cluster {
        Cluster::start_with(false)
    }

    /// The same, with TLS required for every connection (`hostssl` only in pg_hba.conf) and a
    /// server certificate for 127.0.0.1 from a CA made here ([`Cluster::ca`]).
    pub fn start_tls() -> Cluster {
        Cluster::start_with(true)
    }

    fn start_with(tls: bool) -> Cluster {
        let bin = bindir().expect("PostgreSQL server binaries");
        let dir = tempfile::tempdir().expect("tempdir");
        let root = nix::unistd::Uid::effective().is_root();
        let run_as = root.then(|| "postgres".to_string());
        if root {
            // The server user must reach its data directory inside our temporary one.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(&log, "").unwrap();
        if root {
            let st = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&data)
                .arg(&log)
                .status()
                .expect("chown");
            assert!(st.success(), "chown postgres {}", data.display());
        }
        let mut c = Cluster {
            _dir: dir,
            data,
            log,
            bin,
            port: free_port(),
            run_as,
            ca: None,
        };
        let out = c.server_cmd(
            "initdb",
            &[
                "-D",
                &c.data.display().to_string(),
                "-U",
                "authmilter",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            c.ca = Some(c.make_certificates());
        }
        c.pg_start();
        let out = c.client_cmd("createdb", &["dmarc"]);
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    /// A CA and a server certificate for 127.0.0.1 signed by it (openssl), installed in the
    /// data directory with `ssl = on` and TLS-only client authentication; returns the CA file.
    fn make_certificates(&self) -> PathBuf {
        let dir = self._dir.path();
        let ca = dir.join("ca.pem");
        let sh = format!(
            "set -e; cd {d}; \
             openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=authmilter-test-ca \
               -keyout ca.key -out ca.pem 2>/dev/null; \
             openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key \
               -out server.csr 2>/dev/null; \
             printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext; \
             openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
               -extfile ext -out server.crt 2>/dev/null; \
             cp server.crt server.key {data}/; chmod 600 {data}/server.key",
            d = dir.display(),
            data = self.data.display()
        );
        let st = Command::new("sh").arg("-c").arg(&sh).status().expect("sh");
        assert!(st.success(), "making the test certificates failed");
        if let Some(user) = &self.run_as {
            let st = Command::new("chown")
                .arg(format!("{user}:{user}"))
                .arg(self.data.join("server.crt"))
                .arg(self.data.join("server.key"))
                .status()
                .expect("chown");
            assert!(st.success());
        }
        let conf = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).unwrap();
        std::fs::write(
            self.data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        ca
    }

    /// With [`Cluster::start_tls`]: the CA file (PEM) to verify the server with.
    pub fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    fn server_cmd(&self, tool: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        // The server's working directory must be readable by its user.
        cmd.current_dir("/")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", exe.display()))
    }

    fn client_cmd(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(self.bin.join(tool))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "authmilter",
            ])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"))
    }

    /// Starts the server (again) on the same port and data, waiting until it accepts
    /// connections.
    pub fn pg_start(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories='' -c fsync=on",
            self.port
        );
        let out = self.server_cmd(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-l",
                &self.log.display().to_string(),
                "-o",
                &opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.server_log()
        );
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            let ready = self.client_cmd("pg_isready", &["-d", "postgres"]);
            if ready.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("PostgreSQL did not become ready: {}", self.server_log());
    }

    /// Stops the server (fast shutdown: sessions are disconnected, like a database failover).
    pub fn pg_stop(&self) {
        let out = self.server_cmd(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "fast",
                "-w",
                "-t",
                "30",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the test database.
    pub fn url(&self) -> String {
        format!("postgresql://authmilter@127.0.0.1:{}/dmarc", self.port)
    }

    /// Runs SQL with psql; returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.client_cmd(
            "psql",
            &[
                "-d",
                "dmarc",
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        );
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.server_cmd(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}
