//! Host lists (`InternalHosts`, `PeerList`, `ExternalIgnoreList`, `IgnoreHosts`): entries,
//! `csl:` specs, and matching a client against whatever parsed.
//!
//! Input: the first line is the client to match (an address and/or a host name separated by
//! a space); the rest is the list, fed as `csl:` spec, as a bare spec and as TOML-array items.
#![no_main]

use std::net::IpAddr;

use chassis::hostlist::HostList;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (probe, list) = text.split_once('\n').unwrap_or(("", &text));
    let mut words = probe.split(' ');
    let ip: Option<IpAddr> = words.next().and_then(|w| w.parse().ok());
    let name = words.next();

    let mut lists = Vec::new();
    lists.push(HostList::parse_entries(list.split(['\n', ','])));
    lists.push(HostList::parse_spec(&format!("csl:{list}"), None));
    // A bare spec, but never one naming a file: the fuzzer must not read /dev/zero.
    let lower = list.trim().to_ascii_lowercase();
    if !lower.starts_with('/') && !lower.starts_with("file:") && !lower.starts_with("refile:") {
        lists.push(HostList::parse_spec(list, None));
    }
    for parsed in lists {
        match parsed {
            Ok(hl) => {
                let _ = hl.len();
                let _ = hl.matches(ip, name);
                if let Some(ip) = ip {
                    let _ = hl.matches_ip(ip);
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
