//! Milter socket specifications (`Socket inet:8891@localhost`, `-p local:/run/x.sock`).
//!
//! Property checked besides "never panics": the canonical spelling ([`Display`]) of anything
//! that parsed parses back to the same value, as its documentation promises.
#![no_main]

use chassis::socketspec::SocketSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match text.parse::<SocketSpec>() {
        Ok(spec) => {
            let _ = spec.postfix_form();
            let _ = spec.is_unix();
            let canonical = spec.to_string();
            let again: SocketSpec = canonical
                .parse()
                .unwrap_or_else(|e| panic!("{canonical:?} (from {text:?}) does not parse: {e}"));
            assert_eq!(again, spec, "{canonical:?} (from {text:?}) changed meaning");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
