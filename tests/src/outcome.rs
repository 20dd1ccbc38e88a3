//! What a milter's answer does to a message, for the in-process milter tests: the message as
//! the MTA would deliver it, the fields the milter inserted, and its one Authentication-Results.

use milter_client::{apply_modifications, render, Modification, Outcome, Transaction};

/// The message after the milter's modifications, with the receiving MTA's Received field on
/// top (as the milter saw none: MTAs add their own after the milter).
pub fn delivered(tx: &Transaction, out: &Outcome) -> Vec<u8> {
    let received = Some((
        "Received".to_string(),
        " from client by mx.test.example (Postfix)".to_string(),
    ));
    let headers = apply_modifications(received, &tx.headers, &out.modifications, out.leadspc());
    render(&headers, &tx.body)
}

/// The values of the fields named `name` (any case) the milter inserted, in order.
pub fn inserted(out: &Outcome, name: &str) -> Vec<String> {
    out.modifications
        .iter()
        .filter_map(|m| match m {
            Modification::InsertHeader { name: n, value, .. } if n.eq_ignore_ascii_case(name) => {
                Some(value.trim_start().to_string())
            }
            _ => None,
        })
        .collect()
}

/// The one Authentication-Results field the milter inserted, unfolded.
pub fn auth_results(out: &Outcome) -> String {
    let ar = inserted(out, "Authentication-Results");
    assert_eq!(ar.len(), 1, "exactly one A-R expected, got {ar:?}");
    ar[0].replace("\r\n\t", " ").replace("\n\t", " ")
}
