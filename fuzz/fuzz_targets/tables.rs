//! OpenDKIM KeyTable and SigningTable text, and SigningTable lookups.
//!
//! Input: up to the first NUL byte, the KeyTable; up to the second, the SigningTable; the rest
//! is the `user@domain` to look up (the first byte of the input also picks plain or `refile:`
//! form). Nothing here touches the file system: key paths are only recorded.
#![no_main]

use std::path::Path;

use dkim_policy::tables::{wildcard_match, KeyTable, SigningTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\0');
    let key_text = parts.next().unwrap_or("");
    let signing_text = parts.next().unwrap_or("");
    let address = parts.next().unwrap_or("");
    let (user, domain) = address.split_once('@').unwrap_or(("", address));
    let wildcard = data.first().is_some_and(|b| b & 1 == 1);

    let file = Path::new("/etc/opendkim/KeyTable");
    let keys = KeyTable::parse(file, key_text, Path::new("/etc/opendkim"));
    if let Ok(keys) = &keys {
        for entry in &keys.entries {
            let _ = entry.is_templated();
            let _ = entry.for_domain(domain);
            assert!(keys.get(&entry.name).is_some());
        }
    }
    // The same text as a SigningTable too: each parser sees the other's shapes.
    for (body, wild) in [(signing_text, wildcard), (key_text, !wildcard)] {
        match SigningTable::parse(Path::new("/etc/opendkim/SigningTable"), body, wild) {
            Ok(table) => {
                for m in table.lookup(user, domain) {
                    if let Ok(keys) = &keys {
                        let _ = keys.get(&m.key_name);
                    }
                }
                for rule in &table.rules {
                    let _ = wildcard_match(&rule.pattern, address);
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
