//! Log capture for in-process daemons: every formatted tracing line is kept in memory so a test
//! can assert on the exact wording operators grep for. Tests share one process, so each test
//! uses its own queue id and filters on it.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

static LINES: OnceLock<Mutex<Vec<String>>> = OnceLock::new();

fn lines() -> &'static Mutex<Vec<String>> {
    LINES.get_or_init(|| Mutex::new(Vec::new()))
}

struct CaptureWriter(Vec<u8>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for CaptureWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0).into_owned();
        eprint!("{text}");
        let mut l = lines().lock().unwrap_or_else(|p| p.into_inner());
        for line in text.lines() {
            l.push(line.to_string());
        }
    }
}

/// Installs the capturing subscriber (idempotent).
pub fn install() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into())
                    // The structured per-message verdict is for JSON logs, not the text lines.
                    .add_directive("verdict=off".parse().expect("static directive")),
            )
            .with_ansi(false)
            .with_target(false)
            .without_time()
            .with_writer(|| CaptureWriter(Vec::new()))
            .try_init();
    });
}

/// Every captured line containing `needle` (usually a test's queue id), message text only.
pub fn lines_with(needle: &str) -> Vec<String> {
    let l = lines().lock().unwrap_or_else(|p| p.into_inner());
    l.iter()
        .filter(|x| x.contains(needle))
        .map(|x| strip_level(x))
        .collect()
}

fn strip_level(line: &str) -> String {
    let t = line.trim_start();
    for lvl in ["ERROR ", "WARN ", "INFO ", "DEBUG ", "TRACE "] {
        if let Some(rest) = t.strip_prefix(lvl) {
            return rest.trim_start().to_string();
        }
    }
    t.to_string()
}
