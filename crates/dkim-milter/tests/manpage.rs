//! `dkim-milter manpage` (what the package installs as dkim-milter(8)) is clap's page for the
//! real command line and renders without groff warnings.

const BIN: &str = env!("CARGO_BIN_EXE_dkim-milter");

#[test]
fn the_generated_page_renders_cleanly() {
    let page = std::process::Command::new(BIN)
        .arg("manpage")
        .output()
        .unwrap();
    assert!(page.status.success());
    let text = String::from_utf8(page.stdout.clone()).unwrap();
    for needle in [
        ".TH dkim-milter 8",
        "\\-\\-check\\-config",
        "\\-\\-opensmtpd",
        "convert",
    ] {
        assert!(text.contains(needle), "no {needle} in {text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dkim-milter.8");
    std::fs::write(&path, &page.stdout).unwrap();
    let out = std::process::Command::new("groff")
        .args(["-man", "-ww", "-z"])
        .arg(&path)
        .output()
        .expect("groff (groff-base) is needed to check the man page");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && warnings.is_empty(), "{warnings}");
}
