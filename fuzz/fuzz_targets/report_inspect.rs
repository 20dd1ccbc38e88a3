//! `authmilter reports inspect`'s reader: whatever bytes a domain owner may be sent as a
//! "report" (XML, gzip, a mail with attachments).
//!
//! Properties checked besides "never panics": the input cap holds (a larger input is refused),
//! and a report that reads is summarised without panicking, with a message total equal to the
//! sum of its record counts.
#![no_main]

use dmarc_reports::inspect::{parse, summary};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(report) = parse(data, MAX) else { return };
    assert!(data.len() <= MAX);
    let text = summary(&report);
    let total: u64 = report.record.iter().map(|r| u64::from(r.count())).sum();
    assert!(
        text.contains(&format!("messages: {total} from ")),
        "summary total differs from the records: {text}"
    );
});
