//! The OpenSMTPD filter-protocol parser on arbitrary input: never a panic, and every line it
//! accepts re-encodes to replies smtpd can take (no newline inside, a valid reject code).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpdfront::proto::{self, Decision, Input};

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        if let Ok(Input::Filter {
            session,
            token,
            params,
            ..
        }) = proto::parse(line)
        {
            let out = proto::data_line(session, token, params);
            assert!(!out.contains(&b'\n'));
            let reply = String::from_utf8_lossy(params).into_owned();
            let r = proto::result(session, token, &Decision::Reject(reply));
            assert!(!r.contains('\n') && !r.contains('\r'));
            let code = r.rsplit("|reject|").next().unwrap_or("");
            assert!(code.starts_with('4') || code.starts_with('5'), "{r}");
        }
    }
});
