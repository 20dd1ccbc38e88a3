//! `authmilter manpages DIR` (what the package installs in section 1): one page for the command
//! and one per subcommand, each rendering without groff warnings.

#[test]
fn pages_for_the_command_and_each_subcommand_render_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authmilter"))
        .arg("manpages")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "authmilter-audit.1",
            "authmilter-completions.1",
            "authmilter-genkey.1",
            "authmilter-reports-inspect.1",
            "authmilter-reports-run.1",
            "authmilter-reports.1",
            "authmilter-testkey.1",
            "authmilter.1"
        ]
    );
    let genkey = std::fs::read_to_string(dir.path().join("authmilter-genkey.1")).unwrap();
    assert!(genkey.contains("\\-\\-selector"), "{genkey}");
    let run = std::fs::read_to_string(dir.path().join("authmilter-reports-run.1")).unwrap();
    assert!(run.contains("\\-\\-dry\\-run"), "{run}");
    for name in names {
        let out = std::process::Command::new("groff")
            .args(["-man", "-ww", "-z"])
            .arg(dir.path().join(&name))
            .output()
            .expect("groff (groff-base) is needed to check the man pages");
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && warnings.is_empty(),
            "{name}: {warnings}"
        );
    }
}
