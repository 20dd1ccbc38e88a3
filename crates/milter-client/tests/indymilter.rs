// SPDX-License-Identifier: GPL-3.0-or-later
//! The client against an independent milter implementation (indymilter,
//! running in-process): if both sides agree on every byte, the client speaks
//! the protocol as other implementations understand it, not just as we do.

use indymilter::{
    Callbacks, Config, ContextActions, NegotiateContext, ProtoOpts, SetErrorReply, SocketInfo,
    Status,
};
use milter_client::consts::*;
use milter_client::{
    apply_modifications, render, run, Endpoint, Error, MilterClient, Modification, Negotiated,
    Reply, Stage, Transaction,
};
use std::ffi::CStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// What the test milter observed, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Negotiate {
        actions: u32,
        opts: u32,
    },
    Connect {
        host: String,
        info: SocketInfo,
        j: Option<String>,
    },
    Helo(String),
    Mail {
        args: Vec<String>,
        i: Option<String>,
        auth: Option<String>,
    },
    Rcpt(Vec<String>),
    Data,
    Header(Vec<u8>, Vec<u8>),
    Eoh,
    Body(Vec<u8>),
    Eom {
        i: Option<String>,
    },
    Abort,
    Close,
}

type Log = Arc<Mutex<Vec<Ev>>>;

/// How the test milter behaves.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Protocol options to add in negotiation.
    extra_opts: ProtoOpts,
    /// Register a HELO callback (without one, indymilter asks for NOHELO).
    helo: bool,
    /// Answer Skip to the first body chunk.
    skip_body: bool,
}

fn text(s: &CStr) -> String {
    s.to_str().unwrap().to_owned()
}

fn macro_of(m: &indymilter::Macros, name: &CStr) -> Option<String> {
    m.get(name).map(text)
}

/// Starts indymilter on 127.0.0.1:0; returns its endpoint, its log, and a
/// guard that shuts it down when dropped.
async fn start(b: Behaviour) -> (Endpoint, Log, oneshot::Sender<()>) {
    let log: Log = Arc::default();
    let l = log.clone();
    let push = move |e: Ev| l.lock().unwrap().push(e);

    let p = push.clone();
    let mut callbacks =
        Callbacks::<()>::new().on_negotiate(move |cx: &mut NegotiateContext<()>, actions, opts| {
            let p = p.clone();
            Box::pin(async move {
                p(Ev::Negotiate {
                    actions: actions.bits(),
                    opts: opts.bits(),
                });
                cx.requested_opts |= b.extra_opts;
                Status::Continue
            })
        });
    let p = push.clone();
    callbacks = callbacks.on_connect(move |cx, host, info| {
        let p = p.clone();
        Box::pin(async move {
            p(Ev::Connect {
                host: text(&host),
                info,
                j: macro_of(&cx.macros, c"j"),
            });
            Status::Continue
        })
    });
    if b.helo {
        let p = push.clone();
        callbacks = callbacks.on_helo(move |_cx, helo| {
            let p = p.clone();
            Box::pin(async move {
                p(Ev::Helo(text(&helo)));
                Status::Continue
            })
        });
    }
    let p = push.clone();
    callbacks = callbacks.on_mail(move |cx, args| {
        let p = p.clone();
        Box::pin(async move {
            p(Ev::Mail {
                args: args.iter().map(|a| text(a)).collect(),
                i: macro_of(&cx.macros, c"i"),
                auth: macro_of(&cx.macros, c"{auth_type}"),
            });
            Status::Continue
        })
    });
    let p = push.clone();
    callbacks = callbacks.on_rcpt(move |cx, args| {
        let p = p.clone();
        Box::pin(async move {
            let args: Vec<String> = args.iter().map(|a| text(a)).collect();
            let bad = args[0] == "<bad@example.org>";
            p(Ev::Rcpt(args));
            if bad {
                cx.reply
                    .set_error_reply("550", Some("5.7.1"), ["nope"])
                    .unwrap();
                Status::Reject
            } else {
                Status::Continue
            }
        })
    });
    let p = push.clone();
    callbacks = callbacks.on_data(move |_cx| {
        let p = p.clone();
        Box::pin(async move {
            p(Ev::Data);
            Status::Continue
        })
    });
    let p = push.clone();
    callbacks = callbacks.on_header(move |_cx, name, value| {
        let p = p.clone();
        Box::pin(async move {
            p(Ev::Header(name.into_bytes(), value.into_bytes()));
            Status::Continue
        })
    });
    let p = push.clone();
    callbacks = callbacks.on_eoh(move |_cx| {
        let p = p.clone();
        Box::pin(async move {
            p(Ev::Eoh);
            Status::Continue
        })
    });
    let p = push.clone();
    callbacks = callbacks.on_body(move |_cx, chunk| {
        let p = p.clone();
        Box::pin(async move {
            p(Ev::Body(chunk.to_vec()));
            if b.skip_body {
                Status::Skip
            } else {
                Status::Continue
            }
        })
    });
    let p = push.clone();
    callbacks = callbacks.on_eom(move |cx| {
        let p = p.clone();
        Box::pin(async move {
            p(Ev::Eom {
                i: macro_of(&cx.macros, c"i"),
            });
            // Values carry their own leading space only under LEADSPC.
            let sp = if b.extra_opts.contains(ProtoOpts::LEADING_SPACE) {
                " "
            } else {
                ""
            };
            cx.actions
                .insert_header(0, "X-Test", format!("{sp}v"))
                .await
                .unwrap();
            cx.actions
                .change_header("Subject", 1, None::<&str>)
                .await
                .unwrap();
            cx.actions.quarantine("held for review").await.unwrap();
            Status::Accept
        })
    });
    let p = push.clone();
    callbacks = callbacks.on_abort(move |_cx| {
        let p = p.clone();
        Box::pin(async move {
            p(Ev::Abort);
            Status::Continue
        })
    });
    let p = push.clone();
    callbacks = callbacks.on_close(move |_cx| {
        let p = p.clone();
        Box::pin(async move {
            p(Ev::Close);
            Status::Continue
        })
    });

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ep = Endpoint::Tcp(listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(indymilter::run(listener, callbacks, Config::default(), rx));
    (ep, log, tx)
}

/// Waits until the milter has logged its close callback, then returns the
/// log. The client does not wait for the milter after QUIT, so the last
/// events may still be in flight when `run` returns.
async fn closed_log(log: &Log) -> Vec<Ev> {
    for _ in 0..500 {
        {
            let l = log.lock().unwrap();
            if l.last() == Some(&Ev::Close) {
                return l.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("milter never closed; log: {:?}", log.lock().unwrap());
}

fn message() -> Vec<u8> {
    let mut m = b"Received: from relay.example.net\r\n\tby gw.example.org; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
From: Alice <alice@example.net>\r\n\
To: bob@example.org\r\n\
Subject:  two spaces\r\n\
X-Tab:\tvalue\r\n\
X-None:value\r\n\
X-Utf8: caf\xc3\xa9\r\n\
\r\n"
        .to_vec();
    // More than one 64 KiB chunk, with varied bytes per line.
    for i in 0..3000 {
        m.extend_from_slice(format!("line {i:05} {}\r\n", "x".repeat(i % 23)).as_bytes());
    }
    m
}

fn tx_for(msg: &[u8]) -> Transaction {
    let mut tx = Transaction::from_message(msg);
    tx.client_name = "mail.example.net".into();
    tx.client_addr = Some("192.0.2.25:41234".parse().unwrap());
    tx.helo = "helo.example.net".into();
    tx.mail_from = "alice@example.net".into();
    tx.mail_args = vec!["BODY=8BITMIME".into()];
    tx.rcpts = vec!["bob@example.org".into(), "carol@example.org".into()];
    tx.connect_macros = vec![("j".into(), "mx.example.org".into())];
    tx.mail_macros = vec![
        ("i".into(), "MAILQID".into()),
        ("{auth_type}".into(), "PLAIN".into()),
    ];
    tx.eom_macros = vec![("i".into(), "EOMQID".into())];
    tx.timeout = Duration::from_secs(5);
    tx
}

fn headers_seen(log: &[Ev]) -> Vec<(Vec<u8>, Vec<u8>)> {
    log.iter()
        .filter_map(|e| match e {
            Ev::Header(n, v) => Some((n.clone(), v.clone())),
            _ => None,
        })
        .collect()
}

fn body_seen(log: &[Ev]) -> Vec<Vec<u8>> {
    log.iter()
        .filter_map(|e| match e {
            Ev::Body(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn full_transaction_with_leadspc() {
    let (ep, log, _guard) = start(Behaviour {
        extra_opts: ProtoOpts::LEADING_SPACE,
        helo: true,
        skip_body: false,
    })
    .await;
    let msg = message();
    let tx = tx_for(&msg);
    let out = run(&ep, &tx).await.unwrap();

    // indymilter asks for NOUNKNOWN (no callback), SKIP (offered) and what we
    // added; it takes all offered actions.
    assert_eq!(
        out.negotiated,
        Negotiated {
            version: 6,
            actions: ALL_ACTIONS,
            protocol: SMFIP_NOUNKNOWN | SMFIP_SKIP | SMFIP_HDR_LEADSPC,
        }
    );
    assert_eq!(out.stage, Stage::Eom);
    assert_eq!(out.reply, Reply::Accept);
    assert_eq!(
        out.modifications,
        vec![
            Modification::InsertHeader {
                index: 0,
                name: "X-Test".into(),
                value: " v".into()
            },
            Modification::ChangeHeader {
                index: 1,
                name: "Subject".into(),
                value: "".into()
            },
            Modification::Quarantine("held for review".into()),
        ]
    );

    let log = closed_log(&log).await;
    assert_eq!(
        log[0],
        Ev::Negotiate {
            actions: ALL_ACTIONS,
            opts: ALL_PROTOCOL
        }
    );
    assert_eq!(
        log[1],
        Ev::Connect {
            host: "mail.example.net".into(),
            info: SocketInfo::Inet("192.0.2.25:41234".parse().unwrap()),
            j: Some("mx.example.org".into()),
        }
    );
    assert_eq!(log[2], Ev::Helo("helo.example.net".into()));
    assert_eq!(
        log[3],
        Ev::Mail {
            args: vec!["<alice@example.net>".into(), "BODY=8BITMIME".into()],
            i: Some("MAILQID".into()),
            auth: Some("PLAIN".into()),
        }
    );
    assert_eq!(log[4], Ev::Rcpt(vec!["<bob@example.org>".into()]));
    assert_eq!(log[5], Ev::Rcpt(vec!["<carol@example.org>".into()]));
    assert_eq!(log[6], Ev::Data);

    // LEADSPC: values verbatim, folding as bare LF, no trailing line end.
    let expected: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (
            b"Received".to_vec(),
            b" from relay.example.net\n\tby gw.example.org; Mon, 1 Jan 2024 00:00:00 +0000"
                .to_vec(),
        ),
        (b"From".to_vec(), b" Alice <alice@example.net>".to_vec()),
        (b"To".to_vec(), b" bob@example.org".to_vec()),
        (b"Subject".to_vec(), b"  two spaces".to_vec()),
        (b"X-Tab".to_vec(), b"\tvalue".to_vec()),
        (b"X-None".to_vec(), b"value".to_vec()),
        (b"X-Utf8".to_vec(), b" caf\xc3\xa9".to_vec()),
    ];
    assert_eq!(headers_seen(&log), expected);

    let chunks = body_seen(&log);
    let body_start = msg.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(msg.len() - body_start > MILTER_CHUNK_SIZE);
    assert_eq!(chunks[0].len(), MILTER_CHUNK_SIZE);
    assert_eq!(chunks.concat(), &msg[body_start..]);

    let after_body = log
        .iter()
        .skip_while(|e| !matches!(e, Ev::Eoh))
        .skip_while(|e| matches!(e, Ev::Eoh | Ev::Body(_)))
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(
        after_body,
        vec![
            Ev::Eom {
                i: Some("EOMQID".into())
            },
            Ev::Close
        ]
    );

    // The delivered header block, Postfix style.
    let received = ("Received".to_string(), " by mx.example.org".to_string());
    let delivered = apply_modifications(
        Some(received),
        &tx.headers,
        &out.modifications,
        out.leadspc(),
    );
    let names: Vec<&str> = delivered.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["X-Test", "Received", "Received", "From", "To", "X-Tab", "X-None", "X-Utf8"]
    );
    assert_eq!(delivered[0].1, " v");
    let rendered = render(&delivered, &tx.body);
    assert!(rendered.starts_with(
        b"X-Test: v\r\nReceived: by mx.example.org\r\nReceived: from relay.example.net\r\n\tby gw."
    ));
    assert!(rendered.ends_with(&msg[body_start - 2..]));
}

#[tokio::test]
async fn without_leadspc_exactly_one_space_is_stripped() {
    let (ep, log, _guard) = start(Behaviour::default()).await;
    let msg = message();
    let tx = tx_for(&msg);
    let out = run(&ep, &tx).await.unwrap();
    assert!(!out.leadspc());
    // No HELO callback: indymilter asked for NOHELO, and we did not send it.
    assert!(out.negotiated.has_protocol(SMFIP_NOHELO));
    assert_eq!(out.reply, Reply::Accept);

    let log = closed_log(&log).await;
    assert!(!log.iter().any(|e| matches!(e, Ev::Helo(_))));
    let seen = headers_seen(&log);
    let values: Vec<&[u8]> = seen.iter().map(|(_, v)| v.as_slice()).collect();
    assert_eq!(
        values,
        [
            &b"from relay.example.net\n\tby gw.example.org; Mon, 1 Jan 2024 00:00:00 +0000"[..],
            b"Alice <alice@example.net>",
            b"bob@example.org",
            b" two spaces",
            b"\tvalue",
            b"value",
            b"caf\xc3\xa9",
        ]
    );

    // The milter sent "v" without a space; the MTA supplies it.
    assert_eq!(
        out.modifications[0],
        Modification::InsertHeader {
            index: 0,
            name: "X-Test".into(),
            value: "v".into()
        }
    );
    let delivered = apply_modifications(None, &tx.headers, &out.modifications, out.leadspc());
    assert_eq!(delivered[0], ("X-Test".into(), " v".into()));
    assert!(!delivered.iter().any(|(n, _)| n == "Subject"));
}

#[tokio::test]
async fn rcpt_reject_with_reply_code_stops_the_run() {
    let (ep, log, _guard) = start(Behaviour {
        helo: true,
        ..Default::default()
    })
    .await;
    let msg = message();
    let mut tx = tx_for(&msg);
    tx.rcpts = vec![
        "good@example.org".into(),
        "bad@example.org".into(),
        "later@example.org".into(),
    ];
    let out = run(&ep, &tx).await.unwrap();
    assert_eq!(out.stage, Stage::Rcpt);
    assert_eq!(out.reply, Reply::ReplyCode("550 5.7.1 nope".into()));
    assert!(out.modifications.is_empty());

    let log = closed_log(&log).await;
    let tail: Vec<Ev> = log
        .iter()
        .skip_while(|e| !matches!(e, Ev::Rcpt(_)))
        .cloned()
        .collect();
    assert_eq!(
        tail,
        vec![
            Ev::Rcpt(vec!["<good@example.org>".into()]),
            Ev::Rcpt(vec!["<bad@example.org>".into()]),
            Ev::Abort,
            Ev::Close,
        ]
    );
}

#[tokio::test]
async fn no_reply_headers_and_body_skip() {
    let (ep, log, _guard) = start(Behaviour {
        extra_opts: ProtoOpts::NOREPLY_HEADER,
        helo: false,
        skip_body: true,
    })
    .await;
    let msg = message();
    let tx = tx_for(&msg);
    // Were we to wait for header replies that never come, this would time
    // out; were we to send body chunks after Skip, the milter would log them.
    let out = run(&ep, &tx).await.unwrap();
    assert!(out.negotiated.has_protocol(SMFIP_NR_HDR | SMFIP_SKIP));
    assert_eq!(out.stage, Stage::Eom);
    assert_eq!(out.reply, Reply::Accept);
    let log = closed_log(&log).await;
    assert_eq!(headers_seen(&log).len(), 7);
    let chunks = body_seen(&log);
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].len(), MILTER_CHUNK_SIZE);
}

#[tokio::test]
async fn low_level_client_and_raw_bytes() {
    let (ep, log, _guard) = start(Behaviour {
        extra_opts: ProtoOpts::LEADING_SPACE,
        helo: true,
        skip_body: false,
    })
    .await;
    let mut c = MilterClient::connect(&ep).await.unwrap();
    let n = c.negotiate(ALL_ACTIONS, ALL_PROTOCOL).await.unwrap();
    assert!(n.leadspc());
    c.macros(b'C', &[("j", "mx.example.org")]).await.unwrap();
    assert_eq!(
        c.connect_info("[unknown]", None).await.unwrap(),
        Reply::Continue
    );
    assert_eq!(c.helo("h").await.unwrap(), Reply::Continue);
    assert_eq!(c.mail(&["<>"]).await.unwrap(), Reply::Continue);
    assert_eq!(c.rcpt(&["<x@example.org>"]).await.unwrap(), Reply::Continue);
    assert_eq!(c.data().await.unwrap(), Reply::Continue);
    // 8-bit, non-UTF-8 bytes go through untouched.
    assert_eq!(
        c.header_bytes(b"Subject", b" caf\xe9\x01\x7f")
            .await
            .unwrap(),
        Reply::Continue
    );
    assert_eq!(c.eoh().await.unwrap(), Reply::Continue);
    assert_eq!(c.body(b"\xff\xfe\r\n").await.unwrap(), Reply::Continue);
    let eom = c.eom().await.unwrap();
    assert_eq!(eom.reply, Reply::Accept);
    assert_eq!(eom.modifications.len(), 3);
    c.quit().await.unwrap();

    let log = closed_log(&log).await;
    assert_eq!(
        log[1],
        Ev::Connect {
            host: "[unknown]".into(),
            info: SocketInfo::Unknown,
            j: Some("mx.example.org".into()),
        }
    );
    assert_eq!(
        headers_seen(&log),
        vec![(b"Subject".to_vec(), b" caf\xe9\x01\x7f".to_vec())]
    );
    assert_eq!(body_seen(&log), vec![b"\xff\xfe\r\n".to_vec()]);
}

#[tokio::test]
async fn refused_connection_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ep = Endpoint::Tcp(listener.local_addr().unwrap());
    drop(listener);
    let e = run(&ep, &Transaction::default()).await.unwrap_err();
    assert!(matches!(e, Error::Io(_)), "{e}");
}
