//! Authentication-Results values: the full parser, the authserv-id reader used for forged-header
//! removal, and our writer.
//!
//! Properties checked besides "never panics":
//! * what we write from a parsed header parses again (the writer quotes and cleans everything
//!   that came from outside), and writing and reading that again gives the same results (one
//!   round reaches a fixed point: nothing is lost or reinterpreted on a second pass);
//! * `authserv_id` finds the id of anything `parse_full` accepted (forged-header removal must
//!   never miss a header the parser would read), and `forged_indexes` flags it.
#![no_main]

use chassis::authres::{authserv_id, forged_indexes, parse, parse_full, summary, MAX_VALUE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let id = authserv_id(&text);
    let parsed = parse_full(&text);
    let headers = [
        ("Authentication-Results", text.as_bytes()),
        ("Received", b"x".as_slice()),
        (" authentication-results ", data),
    ];
    let ours = vec![id.clone().unwrap_or_else(|| "mx.example.net".to_string())];
    let forged = forged_indexes(&headers, &ours);
    assert!(forged.len() <= 2);

    let Ok(parsed) = parsed else { return };
    let header = parsed.header;
    let _ = summary(&header);
    // The id as forged-header removal compares it: `/jobid` and one trailing dot removed.
    let key = header.authserv_id.split('/').next().unwrap_or("").trim();
    let key = key.strip_suffix('.').unwrap_or(key);
    if !key.is_empty() {
        let found = id
            .as_deref()
            .unwrap_or_else(|| panic!("{text:?}: parse_full read id {key:?}, authserv_id none"));
        assert!(
            found
                .strip_suffix('.')
                .unwrap_or(found)
                .eq_ignore_ascii_case(key),
            "{text:?}: parse_full read id {key:?}, authserv_id {found:?}"
        );
        assert_eq!(
            forged.first(),
            Some(&2),
            "{text:?}: our id {found:?} not flagged"
        );
    }

    let written = header.to_value();
    let again = match parse(&written) {
        Ok(again) => again,
        Err(_) if written.len() > MAX_VALUE_LEN => return,
        Err(e) => panic!("we wrote {written:?} (from {text:?}) and cannot read it: {e}"),
    };
    // Control characters are dropped on writing (by design), so the first round may change a
    // value; from then on nothing may change.
    let third = parse(&again.to_value()).expect("a value we wrote parses");
    assert_eq!(
        third, again,
        "{text:?}: reading what we wrote twice differs"
    );
});
