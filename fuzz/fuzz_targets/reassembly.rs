//! Message reassembly from milter events (headers, end of headers, body chunks, end of
//! message), raw-message splitting, and the address parser for From/Sender values.
//!
//! Input: byte 0 = flags (leading-space mode, tiny limits so the header caps and the spill to
//! a temporary file are reached), then events `op len data...`.
//!
//! Property checked besides "never panics": the reassembled message is exactly the kept header
//! fields, a blank line and the body chunks in order, whether in memory or spilled.
#![no_main]

use std::path::PathBuf;

use chassis::address::mailboxes;
use chassis::message::{split_raw, Limits, Message, MessageBuilder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let limits = if flags & 2 != 0 {
        Limits {
            max_header_bytes: 200,
            max_headers: 4,
            spill_threshold: 64,
            // tmpfs if there is one: spilling fsyncs, which on a disk costs the fuzzer 10x.
            temp_dir: Some(PathBuf::from("/dev/shm")).filter(|d| d.is_dir()),
        }
    } else {
        Limits::default()
    };
    let mut builder = MessageBuilder::new(limits, flags & 1 != 0);
    let mut body = Vec::new();
    while let Some((&op, tail)) = rest.split_first() {
        let len = tail.first().copied().unwrap_or(0) as usize;
        let tail = tail.get(1..).unwrap_or(&[]);
        let (chunk, after) = tail.split_at(len.min(tail.len()));
        rest = after;
        match op % 3 {
            0 => {
                let (name, value) = match chunk.iter().position(|&b| b == b':') {
                    Some(i) => (&chunk[..i], &chunk[i + 1..]),
                    None => (chunk, &[][..]),
                };
                builder.header(name, value);
                let _ = builder.headers_truncated();
            }
            1 => {
                builder.end_of_headers();
            }
            _ => {
                builder.body(chunk);
                body.extend_from_slice(chunk);
            }
        }
    }
    let msg = match builder.finish() {
        Ok(m) => m,
        // Only a failing spill file may fail this.
        Err(e) => panic!("finish failed: {e}"),
    };
    let mut expected = Vec::new();
    for h in &msg.headers {
        expected.extend_from_slice(&h.name);
        expected.push(b':');
        expected.extend_from_slice(&h.value);
        expected.extend_from_slice(b"\r\n");
    }
    expected.extend_from_slice(b"\r\n");
    expected.extend_from_slice(&body);
    assert!(msg.raw() == expected.as_slice(), "reassembled bytes differ");

    for h in &msg.headers {
        let _ = h.name_is("From");
        let value = h.value_str();
        for mb in mailboxes(&value) {
            let _ = mb.address();
        }
    }
    let _ = msg.header_values("from");
    let _ = msg.is_spilled();

    // The whole input as a raw message, as tools and other front ends pass it.
    let (hs, b) = split_raw(data);
    for (n, v) in &hs {
        assert!(
            !n.contains(&b'\n'),
            "a split header name holds a line break"
        );
        let _ = mailboxes(&String::from_utf8_lossy(v));
    }
    let _ = b;
    let again = Message::from_raw(data).expect("an in-memory message");
    let _ = again.raw().len();
    let _ = mailboxes(&String::from_utf8_lossy(data));
});
