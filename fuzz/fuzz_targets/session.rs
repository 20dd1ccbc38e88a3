//! A whole dkim-milter session: envelope, macros, headers and body chunks in any order and
//! amount, reassembled as the milter front end does, then dkim-milter's policy to its
//! end-of-message verdict (sign, verify, forged A-R removal, On-* action).
//!
//! Input: byte 0 picks one of the configurations below, then events `op len data...`.
//!
//! DNS: mail-auth 0.13.3 offers no way to pre-seed its caches outside its `test` feature, so
//! every lookup goes to a closed loopback port (127.0.0.1:9, 10 ms timeout, one attempt) and
//! fails at once; verification therefore ends in the DNS-error paths, never in a pass.
//!
//! `FUZZ_SESSION_DEBUG=1` prints each envelope and verdict (to see what a seed exercises).
//!
//! Property checked besides "never panics": every header edit is well formed (a deletion names a
//! header occurrence the message has; an insertion has a name and no bare CR or LF that would
//! end the header early).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use chassis::envelope::Envelope;
use chassis::message::MessageBuilder;
use chassis::verdict::HeaderEdit;
use dkim_policy::config::Config;
use dkim_policy::keygen::{generate, write_private, KeyKind};
use dkim_policy::runtime::Runtime;
use libfuzzer_sys::fuzz_target;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::MessageAuthenticator;

/// Configurations a session may run under, all signing for example.com with one Ed25519 key.
const CONFIGS: &[&str] = &[
    // Sign and verify, relaxed, several signatures, oversigning.
    r#"
mode = "sv"
canonicalization = "relaxed/relaxed"
key_table = "file:KeyTable"
signing_table = "refile:SigningTable"
multiple_signatures = true
require_safe_keys = false
internal_hosts = ["127.0.0.1", "::1", ".internal.example"]
external_ignore_list = ["192.0.2.0/24"]
macro_list = ["daemon_name=ORIGINATING", "auth_type"]
sender_headers = ["Sender", "From"]
oversign_headers = ["From", "Subject"]
max_signatures_to_verify = 3
[actions]
bad_signature = "reject"
no_signature = "quarantine"
dns_error = "tempfail"
security = "tempfail"
[limits]
max_header_bytes = 4096
max_headers = 30
spill_threshold = 2048
"#,
    // The single-key shorthand, simple canonicalization, OpenDKIM-ish defaults.
    r#"
mode = "sv"
canonicalization = "simple/simple"
domain = "example.com"
selector = "fuzz"
key_file = "fuzz.key"
require_safe_keys = false
mta = ["MSA"]
allow_sha1 = true
"#,
    // Verify only.
    r#"
mode = "v"
max_signatures_to_verify = 1
[actions]
bad_signature = "accept"
dns_error = "accept"
"#,
];

struct Harness {
    tokio: tokio::runtime::Runtime,
    runtimes: Vec<Runtime>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let key = generate(KeyKind::Ed25519).expect("Ed25519 key");
        write_private(&dir.path().join("fuzz.key"), &key.private_pem).expect("key file");
        std::fs::write(
            dir.path().join("KeyTable"),
            "fuzz example.com:fuzz:fuzz.key\n\
             tmpl %:fuzz:keys/%.key\n\
             org example.org:fuzz:./fuzz.key\n",
        )
        .expect("KeyTable");
        std::fs::write(
            dir.path().join("SigningTable"),
            "*@example.com fuzz\n*@*.example.com fuzz:%\n*@*.example.net tmpl\n*@example.org org:postmaster@example.org\n",
        )
        .expect("SigningTable");
        let runtimes = CONFIGS
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let path = dir.path().join(format!("dkim-milter-{i}.toml"));
                let mut config = Config::from_toml(&path, text)
                    .unwrap_or_else(|e| panic!("fuzz configuration {i}: {e}"));
                // tmpfs if there is one: spilling fsyncs, which on a disk costs the fuzzer 10x.
                let shm = Path::new("/dev/shm");
                if shm.is_dir() {
                    config.limits.temp_dir = Some(shm.to_path_buf());
                }
                Runtime {
                    config,
                    res: chassis::resources::Resources {
                        auth: closed_port_resolver(),
                        hostname: "mx.example.net".to_string(),
                        keys: chassis::keycache::TxtCache::new(64),
                    },
                }
            })
            .collect();
        // Every non-templated key is in memory now; templated ones fail to load, as wanted.
        drop(dir);
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Harness { tokio, runtimes }
    })
}

/// A resolver whose only server is a closed loopback port: every lookup fails fast.
fn closed_port_resolver() -> MessageAuthenticator {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let ns = NameServerConfig::new(addr.ip(), true, vec![udp]);
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_millis(10);
    opts.attempts = 1;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.ndots = 0;
    MessageAuthenticator::new(ResolverConfig::from_name_servers(vec![ns]), opts).expect("resolver")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn client_ip(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        0 => None,
        1..=15 => {
            let mut a = [127, 0, 0, 1];
            for (d, s) in a.iter_mut().zip(b) {
                *d = *s;
            }
            Some(IpAddr::V4(Ipv4Addr::from(a)))
        }
        _ => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[..16]);
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    let rt = &h.runtimes[usize::from(pick) % h.runtimes.len()];
    let mut env = Envelope::default();
    let mut builder = MessageBuilder::new(rt.config.limits.clone(), pick & 0x80 != 0);
    while let Some((&op, tail)) = rest.split_first() {
        let len = tail.first().copied().unwrap_or(0) as usize;
        let tail = tail.get(1..).unwrap_or(&[]);
        let (chunk, after) = tail.split_at(len.min(tail.len()));
        rest = after;
        let split = |sep: u8| match chunk.iter().position(|&b| b == sep) {
            Some(i) => (&chunk[..i], &chunk[i + 1..]),
            None => (chunk, &[][..]),
        };
        match op % 8 {
            0 => {
                let (ip, name) = split(b' ');
                env.client_ip = client_ip(ip);
                env.client_name = text(name);
            }
            1 => env.helo = text(chunk),
            2 => env.mail_from = text(chunk),
            3 => env.rcpts.push(text(chunk)),
            4 => {
                let (name, value) = split(b'=');
                match text(name).as_str() {
                    "i" => env.queue_id = Some(text(value)),
                    "j" => env.mta_hostname = Some(text(value)),
                    "daemon_name" => env.listener = Some(text(value)),
                    "auth" => {
                        env.auth = Some(chassis::envelope::Authenticated {
                            user: text(value),
                            mechanism: "PLAIN".into(),
                        })
                    }
                    other => {
                        env.attributes.insert(other.to_string(), text(value));
                    }
                }
            }
            5 => {
                let (name, value) = split(b':');
                builder.header(name, value);
            }
            6 => builder.end_of_headers(),
            _ => builder.body(chunk),
        }
    }
    let Ok(msg) = builder.finish() else {
        return;
    };
    let verdict = h
        .tokio
        .block_on(dkim_policy::policy::evaluate::evaluate(rt, &env, &msg, None));
    let _ = dkim_policy::policy::evaluate::authserv_id(rt, &env);
    for edit in &verdict.edits {
        match edit {
            HeaderEdit::RemoveAuthResults { authserv_ids } => {
                let seen = msg.auth_results_seen();
                for occurrence in chassis::forged::forged_occurrences(seen, authserv_ids) {
                    assert!(
                        occurrence >= 1 && occurrence as usize <= seen.len(),
                        "deletes Authentication-Results #{occurrence} of {}",
                        seen.len()
                    );
                }
            }
            HeaderEdit::Prepend { name, value } => {
                assert!(!name.is_empty() && !name.contains([':', '\r', '\n', ' ']));
                for (i, line) in value.split('\n').enumerate() {
                    assert!(!line.contains('\r'), "bare CR in {name}: {value:?}");
                    if i > 0 {
                        assert!(
                            line.starts_with([' ', '\t']),
                            "{name} value has an unfolded line break: {value:?}"
                        );
                    }
                }
            }
        }
    }
    if std::env::var_os("FUZZ_SESSION_DEBUG").is_some() {
        eprintln!("{env:?}\n{verdict:#?}");
    }
});
