// SPDX-License-Identifier: GPL-3.0-or-later
//! Emulation of how Postfix applies milter modifications to the message.
//!
//! Tests check what would be *delivered*, e.g. that a DKIM signature lands
//! above the headers it signs, or that a verifier can check the result. That
//! depends on the MTA's editing rules, which are subtle about indexes, so they
//! are reproduced here as a pure function. The rules follow Postfix's cleanup
//! server (`cleanup_milter.c`), which our milters are deployed behind:
//!
//! * Header values are stored as they appear after `Name:`, i.e. usually
//!   with a leading space. Unless `SMFIP_HDR_LEADSPC` was negotiated, the MTA
//!   puts one space between the colon and every value the milter adds,
//!   inserts or changes.
//! * Insert index: a 0-based position among all current headers, the MTA's
//!   own `Received:` (which the milter never saw) included: 0 puts the new
//!   header above it. An index past the end appends.
//! * Change/delete index: the n-th (1-based; 0 counts as 1) current header of
//!   that name, case-insensitively, not counting the first header of the
//!   message, which is normally the MTA's own `Received:` (so its index
//!   matches what the milter saw). Headers deleted earlier no longer count,
//!   headers added earlier do. A change past the last occurrence appends the
//!   header; a delete past it does nothing. A changed header takes the name
//!   as spelt by the milter.

use crate::Modification;

/// Applies the header modifications in `mods` to a message's header block.
///
/// `received` is the MTA's own top `Received:` header (never shown to the
/// milter), or `None` to leave it out; `headers` are the headers the milter
/// saw, values exactly as after the colon. Returns the delivered header
/// block, including `received` if it survives. Non-header modifications are
/// ignored; see [`replaced_body`] for the body.
pub fn apply_modifications(
    received: Option<(String, String)>,
    headers: &[(String, String)],
    mods: &[Modification],
    leadspc: bool,
) -> Vec<(String, String)> {
    let space = if leadspc { "" } else { " " };
    // Postfix skips "the first header in the queue file" when resolving
    // change/delete indexes. That is its own Received: header, unless a
    // milter inserted something above it, in which case the inserted header
    // is skipped instead; keeping this positional reproduces that quirk.
    let skip = usize::from(received.is_some());
    let mut list: Vec<(String, String)> = received.into_iter().collect();
    list.extend(headers.iter().cloned());

    for m in mods {
        match m {
            Modification::AddHeader { name, value } => {
                list.push((name.clone(), format!("{space}{value}")));
            }
            Modification::InsertHeader { index, name, value } => {
                let pos = usize::try_from(*index).map_or(list.len(), |i| i.min(list.len()));
                list.insert(pos, (name.clone(), format!("{space}{value}")));
            }
            Modification::ChangeHeader { index, name, value } => {
                let nth = usize::try_from((*index).max(1)).unwrap_or(usize::MAX);
                let found = list
                    .iter()
                    .enumerate()
                    .skip(skip)
                    .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
                    .nth(nth - 1)
                    .map(|(i, _)| i);
                match (found, value.is_empty()) {
                    (Some(i), true) => {
                        list.remove(i);
                    }
                    (Some(i), false) => list[i] = (name.clone(), format!("{space}{value}")),
                    (None, true) => {}
                    (None, false) => list.push((name.clone(), format!("{space}{value}"))),
                }
            }
            _ => {}
        }
    }
    list
}

/// The replacement body, if the milter sent one: all `ReplaceBody` chunks
/// concatenated in order (the protocol splits large bodies over several
/// packets).
pub fn replaced_body(mods: &[Modification]) -> Option<Vec<u8>> {
    let mut body: Option<Vec<u8>> = None;
    for m in mods {
        if let Modification::ReplaceBody(chunk) = m {
            body.get_or_insert_with(Vec::new).extend_from_slice(chunk);
        }
    }
    body
}

/// Writes a message: `Name:value` CRLF for each header, an empty line, then
/// `body` as is.
///
/// Header values hold folded lines separated by a bare `"\n"` (that is how
/// they travel in the protocol); each such line break becomes CRLF. Existing
/// CRLFs are kept.
pub fn render(headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64 * headers.len() + 2);
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        let mut prev = 0u8;
        for &b in value.as_bytes() {
            if b == b'\n' && prev != b'\r' {
                out.push(b'\r');
            }
            out.push(b);
            prev = b;
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn add(name: &str, value: &str) -> Modification {
        Modification::AddHeader {
            name: name.into(),
            value: value.into(),
        }
    }

    fn ins(index: u32, name: &str, value: &str) -> Modification {
        Modification::InsertHeader {
            index,
            name: name.into(),
            value: value.into(),
        }
    }

    fn chg(index: u32, name: &str, value: &str) -> Modification {
        Modification::ChangeHeader {
            index,
            name: name.into(),
            value: value.into(),
        }
    }

    fn rcvd() -> Option<(String, String)> {
        Some(("Received".into(), " by mta".into()))
    }

    fn base() -> Vec<(String, String)> {
        h(&[
            ("Received", " by relay"),
            ("From", " a@example.org"),
            ("Subject", " one"),
            ("subject", " two"),
        ])
    }

    #[test]
    fn no_mods_keeps_everything() {
        assert_eq!(
            apply_modifications(rcvd(), &base(), &[], false),
            h(&[
                ("Received", " by mta"),
                ("Received", " by relay"),
                ("From", " a@example.org"),
                ("Subject", " one"),
                ("subject", " two"),
            ])
        );
        assert_eq!(apply_modifications(None, &base(), &[], true), base());
    }

    #[test]
    fn add_appends_with_space_unless_leadspc() {
        assert_eq!(
            apply_modifications(None, &h(&[("A", " 1")]), &[add("X", "v")], false),
            h(&[("A", " 1"), ("X", " v")])
        );
        assert_eq!(
            apply_modifications(None, &h(&[("A", " 1")]), &[add("X", "v")], true),
            h(&[("A", " 1"), ("X", "v")])
        );
    }

    #[test]
    fn insert_counts_own_received() {
        let got = apply_modifications(
            rcvd(),
            &base(),
            &[
                ins(0, "X-Top", "0"),
                ins(2, "X-Two", "2"),
                ins(99, "X-End", "e"),
            ],
            false,
        );
        assert_eq!(
            got,
            h(&[
                ("X-Top", " 0"),
                ("Received", " by mta"),
                ("X-Two", " 2"),
                ("Received", " by relay"),
                ("From", " a@example.org"),
                ("Subject", " one"),
                ("subject", " two"),
                ("X-End", " e"),
            ])
        );
        // The lone-milter case DKIM signers rely on: index 1 goes right
        // below the MTA's own Received.
        let got = apply_modifications(rcvd(), &base(), &[ins(1, "DKIM-Signature", " s")], true);
        assert_eq!(got[0], ("Received".into(), " by mta".into()));
        assert_eq!(got[1], ("DKIM-Signature".into(), " s".into()));
        assert_eq!(got[2], ("Received".into(), " by relay".into()));
    }

    #[test]
    fn change_skips_own_received_and_counts_case_insensitively() {
        let got = apply_modifications(
            rcvd(),
            &base(),
            &[chg(1, "Received", "x"), chg(2, "SUBJECT", "new")],
            false,
        );
        assert_eq!(
            got,
            h(&[
                ("Received", " by mta"),
                ("Received", " x"),
                ("From", " a@example.org"),
                ("Subject", " one"),
                ("SUBJECT", " new"),
            ])
        );
    }

    #[test]
    fn index_zero_means_one() {
        let got = apply_modifications(None, &base(), &[chg(0, "Subject", "")], false);
        assert_eq!(
            got,
            h(&[
                ("Received", " by relay"),
                ("From", " a@example.org"),
                ("subject", " two"),
            ])
        );
    }

    #[test]
    fn deleted_headers_stop_counting() {
        // Deleting occurrence 1 twice removes both Subject headers.
        let got = apply_modifications(
            rcvd(),
            &base(),
            &[chg(1, "Subject", ""), chg(1, "Subject", "")],
            false,
        );
        assert_eq!(
            got,
            h(&[
                ("Received", " by mta"),
                ("Received", " by relay"),
                ("From", " a@example.org"),
            ])
        );
    }

    #[test]
    fn added_headers_count_for_change() {
        let got = apply_modifications(
            None,
            &h(&[("A", " 1")]),
            &[add("X", "first"), chg(1, "x", "second")],
            true,
        );
        assert_eq!(got, h(&[("A", " 1"), ("x", "second")]));
    }

    #[test]
    fn change_past_end_appends_delete_past_end_ignored() {
        let got = apply_modifications(
            rcvd(),
            &base(),
            &[
                chg(3, "Subject", "three"),
                chg(5, "From", ""),
                chg(1, "Nope", ""),
            ],
            false,
        );
        assert_eq!(
            got,
            h(&[
                ("Received", " by mta"),
                ("Received", " by relay"),
                ("From", " a@example.org"),
                ("Subject", " one"),
                ("subject", " two"),
                ("Subject", " three"),
            ])
        );
    }

    #[test]
    fn own_received_cannot_be_changed_or_deleted() {
        let mine = h(&[("Subject", " s")]);
        let got = apply_modifications(rcvd(), &mine, &[chg(1, "Received", "")], false);
        assert_eq!(got, h(&[("Received", " by mta"), ("Subject", " s")]));
    }

    #[test]
    fn insert_above_received_shifts_the_skipped_header() {
        // Postfix quirk: after an insert at 0, the *inserted* header is the
        // one skipped, and the MTA's Received becomes changeable.
        let got = apply_modifications(
            rcvd(),
            &[],
            &[ins(0, "Received", " top"), chg(1, "Received", "")],
            true,
        );
        assert_eq!(got, h(&[("Received", " top")]));
    }

    #[test]
    fn other_modifications_ignored_and_body_concatenated() {
        let mods = [
            Modification::Quarantine("q".into()),
            Modification::ReplaceBody(b"a\r\n".to_vec()),
            Modification::AddRcpt("<x@y>".into()),
            Modification::ReplaceBody(b"b\r\n".to_vec()),
        ];
        assert_eq!(apply_modifications(None, &base(), &mods, false), base());
        assert_eq!(replaced_body(&mods).unwrap(), b"a\r\nb\r\n");
        assert_eq!(replaced_body(&mods[..1]), None);
    }

    #[test]
    fn renders_crlf() {
        let got = render(
            &h(&[("Subject", " a\n\tb"), ("X", "v"), ("Y", " c\r\n d")]),
            b"body\r\n",
        );
        assert_eq!(
            got,
            b"Subject: a\r\n\tb\r\nX:v\r\nY: c\r\n d\r\n\r\nbody\r\n"
        );
    }
}
