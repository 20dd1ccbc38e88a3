//! man/dkim-milter.conf.5 documents every key of the configuration model and no other (the keys
//! are read from the model itself, chassis::keydoc), and renders without groff warnings.

use std::path::Path;

#[test]
fn every_key_is_documented_and_every_documented_key_exists() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../man/dkim-milter.conf.5");
    let parse = |text: &str| {
        dkim_policy::config::Config::from_toml(Path::new("/probe/dkim-milter.toml"), text)
            .err()
            .map(|e| e.message)
    };
    if let Err(e) = chassis::keydoc::check_reference_page(&page, &parse, 20) {
        panic!("{e}");
    }
}
