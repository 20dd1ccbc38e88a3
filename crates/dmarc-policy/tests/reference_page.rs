//! man/dmarc-milter.conf.5 documents every key of the configuration model and no other: the keys
//! are read from the model itself (chassis::keydoc) and from the page's entries.

use std::path::Path;

#[test]
fn every_key_is_documented_and_every_documented_key_exists() {
    let page_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../man/dmarc-milter.conf.5");
    let page = std::fs::read_to_string(&page_path).expect("man/dmarc-milter.conf.5");
    let parse = |text: &str| {
        dmarc_policy::config::Config::from_toml(Path::new("/probe/dmarc-milter.toml"), text)
            .err()
            .map(|e| e.message)
    };
    let model = chassis::keydoc::model_keys(&parse).unwrap();
    assert!(model.len() > 30, "{model:?}");
    let documented = chassis::keydoc::documented_keys(&page);
    if let Err(e) = chassis::keydoc::compare(&model, &documented) {
        panic!("{}: {e}", page_path.display());
    }
}

#[test]
fn the_page_renders_without_groff_warnings() {
    let page_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../man/dmarc-milter.conf.5");
    let out = std::process::Command::new("groff")
        .args(["-man", "-ww", "-z"])
        .arg(&page_path)
        .output()
        .expect("groff (groff-base) is needed to check the man page");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && warnings.is_empty(), "{warnings}");
}
