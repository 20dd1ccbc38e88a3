// SPDX-License-Identifier: GPL-3.0-or-later
//! The benchmark's DNS zone as a small text file, served by the test kit's
//! authoritative server (`milter-bench dns`).
//!
//! One record a line: `NAME TYPE VALUE`, with TYPE `TXT` (the rest of the
//! line is the value, split into 255-byte strings as needed), `A`, `AAAA`,
//! `MX` (`PREF HOST`) or `PTR` (NAME is the address). Empty lines and lines
//! starting with `#` are ignored.

use testkit::dns::Zone;

/// Parses the zone text.
pub fn parse_zone(text: &str) -> Result<Zone, String> {
    let mut zone = Zone::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("zone line {}: {why}: {line:?}", no + 1);
        let mut parts = line.splitn(3, char::is_whitespace);
        let (Some(name), Some(kind), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("want NAME TYPE VALUE"));
        };
        let value = value.trim();
        zone = match kind.to_ascii_uppercase().as_str() {
            "TXT" => zone.txt(name, value.trim_matches('"')),
            "A" => zone.a(name, value.parse().map_err(|_| bad("bad IPv4 address"))?),
            "AAAA" => zone.aaaa(name, value.parse().map_err(|_| bad("bad IPv6 address"))?),
            "MX" => {
                let (pref, host) = value
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| bad("want PREF HOST"))?;
                zone.mx(
                    name,
                    pref.parse().map_err(|_| bad("bad preference"))?,
                    host.trim(),
                )
            }
            "PTR" => zone.ptr(name.parse().map_err(|_| bad("bad address"))?, value),
            _ => return Err(bad("unknown type")),
        };
    }
    Ok(zone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_and_rejects_garbage() {
        let z = "# comment\n\nsel._domainkey.example.com TXT v=DKIM1; k=rsa; p=AAAA\n\
                 example.com A 192.0.2.1\nexample.com MX 10 mx.example.com\n";
        assert!(parse_zone(z).is_ok());
        assert!(parse_zone("x.example A notanip").is_err());
        assert!(parse_zone("x.example SRV 1 2 3").is_err());
        assert!(parse_zone("lonely").is_err());
    }
}
