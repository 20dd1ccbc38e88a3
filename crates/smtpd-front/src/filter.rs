//! The filter loop: smtpd's lines in on stdin, ours out on stdout.
//!
//! One task reads and dispatches every line in order (sessions are independent, but the lines
//! of one session must be taken in order); each finished message is evaluated in its own task,
//! which writes the rewritten message back and leaves the disposition for the commit request.
//! One writer task owns stdout, so lines are never interleaved mid-line, and the channel to it
//! is bounded, so a 20 MB message is written back at the pace smtpd reads it, not buffered.
//!
//! Input that is not valid protocol is logged and skipped (a filter must not exit: smtpd treats
//! that as fatal), except a protocol version we do not speak, which ends the filter with a clear
//! error rather than a misreading of every line. End of stdin (smtpd stopped) ends the filter.

use crate::proto::{self, Decision, Input, ParseError};
use crate::session::{self, Incoming, Rewrite, Session};
use chassis::envelope::Envelope;
use chassis::message::SeenAuthResults;
use chassis::policy::{ConnectDecision, Policy, Snapshots};
use chassis::verdict::{Action, SmtpReply, Verdict};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// The longest line we read. smtpd's own lines are far shorter (a message line is at most
/// about 1,000 bytes); anything longer is not valid input and is skipped, keeping memory bounded.
pub const MAX_LINE: usize = 64 * 1024;

/// Chunks queued for stdout before the producers wait (each a batch of whole lines of at most
/// about [`CHUNK`] bytes: a few MiB in flight at most, whatever the message size).
const OUTPUT_QUEUE: usize = 64;

/// A message is handed to the writer in chunks of about this size: one write and one wake-up
/// per chunk instead of per line (per line, those cost more CPU than the rest of the filter).
const CHUNK: usize = 64 * 1024;

/// Why the filter stopped other than end of input.
#[derive(Debug)]
pub enum Stopped {
    /// smtpd speaks a protocol version we do not.
    Protocol(String),
    Io(io::Error),
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Protocol(e) => write!(f, "{e}"),
            Stopped::Io(e) => write!(f, "cannot read from smtpd: {e}"),
        }
    }
}

/// How much of smtpd's output is read at a time: a 4 KiB message with its protocol prefixes
/// is about 10 KiB, so a whole message usually comes in one read.
const READ_BUFFER: usize = 64 * 1024;

/// How a line that did not fit the read buffer ended.
enum Long {
    /// The whole line is in the caller's buffer.
    Complete,
    /// More than [`MAX_LINE`] bytes: the buffer holds its first 256 bytes.
    Overlong(usize),
}

/// Reads one `\n`-terminated line into `buf` (cleared first), keeping at most [`MAX_LINE`]
/// bytes; `None` at end of input.
async fn read_line(
    r: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
) -> io::Result<Option<Long>> {
    buf.clear();
    let mut len = 0usize;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            if len == 0 {
                return Ok(None);
            }
            break;
        }
        let (part, used, done) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        if len + part.len() <= MAX_LINE {
            buf.extend_from_slice(part);
        } else if buf.len() < 256 {
            let room = 256 - buf.len();
            buf.extend_from_slice(&part[..part.len().min(room)]);
        }
        len += part.len();
        r.consume(used);
        if done {
            break;
        }
    }
    Ok(Some(if len <= MAX_LINE {
        Long::Complete
    } else {
        buf.truncate(256);
        Long::Overlong(len)
    }))
}

/// Owns stdout: writes each queued chunk (whole lines, each with its newline), flushing when
/// the queue is empty.
async fn write_lines(mut rx: mpsc::Receiver<Vec<u8>>, out: impl AsyncWrite + Unpin) {
    let mut out = tokio::io::BufWriter::new(out);
    while let Some(chunk) = rx.recv().await {
        let mut next = Some(chunk);
        while let Some(l) = next {
            if out.write_all(&l).await.is_err() {
                tracing::error!("cannot write to smtpd (stdout closed)");
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().await.is_err() {
            tracing::error!("cannot write to smtpd (stdout closed)");
            return;
        }
    }
    let _ = out.flush().await;
}

/// Dispositions decided at the end of a message's data, taken by its commit request.
type Decisions = Arc<Mutex<HashMap<String, Decision>>>;

/// Serves smtpd on `input`/`output` until end of input.
pub async fn serve<P: Policy>(
    policy: Arc<Snapshots<P>>,
    input: impl AsyncRead + Unpin,
    output: impl AsyncWrite + Unpin + Send + 'static,
) -> Result<(), Stopped> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(OUTPUT_QUEUE);
    let writer = tokio::spawn(write_lines(rx, output));
    let mut input = BufReader::with_capacity(READ_BUFFER, input);
    let mut long = Vec::new();
    let mut state = State {
        policy,
        tx,
        decisions: Decisions::default(),
        sessions: HashMap::new(),
        admd: None,
        registered: false,
        mail_reports: true,
        warned_facts: false,
    };
    let result = loop {
        // A line already whole in the read buffer is handled where it lies (no copy); one
        // that continues past it is gathered in `long`.
        let avail = match input.fill_buf().await {
            Ok(a) => a,
            Err(e) => break Err(Stopped::Io(e)),
        };
        if avail.is_empty() {
            break Ok(());
        }
        if let Some(i) = avail.iter().position(|b| *b == b'\n') {
            let flow = state.line(&avail[..i]).await;
            input.consume(i + 1);
            match flow {
                Flow::Continue => continue,
                Flow::Stop(r) => break r,
            }
        }
        match read_line(&mut input, &mut long).await {
            Ok(None) => break Ok(()),
            Err(e) => break Err(Stopped::Io(e)),
            Ok(Some(Long::Overlong(len))) => state.overlong(&long, len),
            Ok(Some(Long::Complete)) => {
                if let Flow::Stop(r) = state.line(&long).await {
                    break r;
                }
            }
        }
    };
    drop(state);
    let _ = writer.await;
    result
}

/// Whether to read on after a line.
enum Flow {
    Continue,
    Stop(Result<(), Stopped>),
}

struct State<P: Policy> {
    policy: Arc<Snapshots<P>>,
    tx: mpsc::Sender<Vec<u8>>,
    decisions: Decisions,
    sessions: HashMap<String, Session<P>>,
    /// `config|admd|ID`: smtpd's configured authserv-id, our default one.
    admd: Option<String>,
    registered: bool,
    /// We registered for MAIL FROM's reports (`tx-begin`, `tx-mail`); without them each
    /// message's queue id is read from smtpd's Received field.
    mail_reports: bool,
    /// A reloaded configuration that needs MAIL FROM, which smtpd no longer sends, was logged.
    warned_facts: bool,
}

impl<P: Policy> State<P> {
    /// Queues a line for stdout; false when stdout is gone. (Takes `&mut self` so the future
    /// stays `Send` without asking the policy's carry type to be `Sync`.)
    async fn send(&mut self, mut line: Vec<u8>) -> bool {
        line.push(b'\n');
        let tx = self.tx.clone();
        tx.send(line).await.is_ok()
    }

    /// Handles one line (without its newline).
    async fn line(&mut self, line: &[u8]) -> Flow {
        if line.len() > MAX_LINE {
            self.overlong(&line[..256], line.len());
            return Flow::Continue;
        }
        match proto::parse(line) {
            Ok(input) => {
                if !self.dispatch(input).await {
                    return Flow::Stop(Ok(()));
                }
            }
            Err(e @ ParseError::Version(_)) => {
                return Flow::Stop(Err(Stopped::Protocol(e.to_string())))
            }
            Err(e) => tracing::warn!(
                "ignoring a line from smtpd that is not filter protocol: {e}: {:?}",
                String::from_utf8_lossy(&line[..line.len().min(120)])
            ),
        }
        Flow::Continue
    }

    fn new_session(&self) -> Session<P> {
        let mut s = Session::new(self.policy.current());
        s.env.mta_hostname = self.admd.clone();
        s
    }

    fn overlong(&mut self, start: &[u8], len: usize) {
        tracing::error!(
            "skipping a line of {len} bytes from smtpd (more than {MAX_LINE}): {:?}",
            String::from_utf8_lossy(&start[..start.len().min(120)])
        );
        // A message line we could not read: that message must not pass as if complete.
        let fields: Vec<&[u8]> = start.splitn(8, |b| *b == b'|').collect();
        if fields.len() >= 7 && fields[0] == b"filter" && fields[4] == b"data-line" {
            let sid = String::from_utf8_lossy(fields[5]).into_owned();
            let token = String::from_utf8_lossy(fields[6]).into_owned();
            if let Some(s) = self.sessions.get_mut(&sid) {
                let m = s.message(&token);
                m.broken = Some(format!("a message line of {len} bytes could not be read"));
            }
        }
    }

    /// Handles one parsed line; false when stdout is gone.
    async fn dispatch(&mut self, input: Input<'_>) -> bool {
        match input {
            Input::Config { key, value } => {
                let value = String::from_utf8_lossy(value);
                match key {
                    "ready" if !self.registered => {
                        self.registered = true;
                        // smtpd's name is the authserv-id only without a configured one and
                        // without `config|admd` (sent before `ready`); a reload that drops a
                        // configured id falls back to this host's name, not smtpd's.
                        let greeting = self.admd.is_none()
                            && self.policy.current().configured_authserv_id().is_none();
                        let facts = self.policy.current().facts();
                        self.mail_reports = facts.mail_from;
                        for line in proto::registration(facts, greeting) {
                            if !self.send(line.into_bytes()).await {
                                return false;
                            }
                        }
                    }
                    "admd" if !value.is_empty() => self.admd = Some(value.into_owned()),
                    _ => tracing::debug!("smtpd config {key}: {value}"),
                }
                true
            }
            Input::Report {
                version,
                subsystem: "smtp-in",
                event,
                session,
                params,
            } => {
                match event {
                    "link-connect" => {
                        let mut s = self.new_session();
                        s.report(version, event, params);
                        if let ConnectDecision::Ignore(why) = s.snap.on_connect(&s.env) {
                            tracing::info!(
                                "ignoring connection from {}: {why}",
                                s.env.client_label()
                            );
                            s.ignored = true;
                        }
                        self.sessions.insert(session.to_string(), s);
                    }
                    "link-disconnect" => {
                        self.sessions.remove(session);
                        self.decisions
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(session);
                    }
                    _ => {
                        if !self.sessions.contains_key(session) {
                            self.sessions
                                .insert(session.to_string(), self.new_session());
                        }
                        if let Some(s) = self.sessions.get_mut(session) {
                            s.report(version, event, params);
                        }
                    }
                }
                true
            }
            Input::Report { .. } => true,
            Input::Filter {
                phase: "data-line",
                session,
                token,
                params,
                ..
            } => self.data_line(session, token, params).await,
            Input::Filter {
                phase: "commit",
                session,
                token,
                ..
            } => {
                let decision = self
                    .decisions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(session)
                    .unwrap_or(Decision::Proceed);
                self.send(proto::result(session, token, &decision).into_bytes())
                    .await
            }
            Input::Filter {
                phase,
                session,
                token,
                ..
            } => {
                // Not a phase we registered; proceeding is always a valid answer.
                tracing::debug!("unexpected filter phase {phase}; proceeding");
                self.send(proto::result(session, token, &Decision::Proceed).into_bytes())
                    .await
            }
        }
    }

    async fn data_line(&mut self, sid: &str, token: &str, line: &[u8]) -> bool {
        if !self.sessions.contains_key(sid) {
            tracing::debug!("data for a session that began before this filter: {sid}");
            self.sessions.insert(sid.to_string(), self.new_session());
        }
        let Some(s) = self.sessions.get_mut(sid) else {
            return true;
        };
        if s.ignored {
            let mut echo = format!("filter-dataline|{sid}|{token}|").into_bytes();
            echo.extend_from_slice(line);
            return self.send(echo).await;
        }
        if s.message.is_none()
            && !self.mail_reports
            && !self.warned_facts
            && s.snap.facts().mail_from
        {
            self.warned_facts = true;
            tracing::warn!(
                "the configuration now reads MAIL FROM ([[arc.seal]] senders), which smtpd \
                 sends only to a filter that asked for it when it started: restart smtpd \
                 (smtpctl stop, then start it) so the filter registers for it"
            );
        }
        if line != b"." {
            s.line(token, line);
            return true;
        }
        let incoming = s.take_message(token);
        tokio::spawn(end_of_message(
            s.snap.clone(),
            s.env.clone(),
            sid.to_string(),
            incoming,
            self.tx.clone(),
            self.decisions.clone(),
        ));
        true
    }
}

/// What a verdict does to the message on its way back. The milter front end inserts each new
/// field at the top in turn, so the last one ends up first; the same order here.
fn rewrite_for(verdict: &Verdict, seen: &[SeenAuthResults]) -> Rewrite {
    let mut on_top = verdict.new_fields();
    on_top.reverse();
    Rewrite {
        on_top,
        remove_auth_results: verdict.removed_auth_results(seen),
    }
}

fn tempfail(text: &str) -> Verdict {
    Verdict::new(
        Vec::new(),
        Action::Tempfail(SmtpReply::new("451", "4.7.0", text)),
    )
}

/// Evaluates a finished message, writes it back rewritten, and leaves the disposition for the
/// commit request (before the final `.`, after which smtpd sends commit).
async fn end_of_message<P: Policy>(
    snap: Arc<P>,
    mut env: Envelope,
    sid: String,
    incoming: Incoming<P>,
    tx: mpsc::Sender<Vec<u8>>,
    decisions: Decisions,
) {
    let token = incoming.token.clone();
    let broken = incoming.broken.clone();
    let (msg, carry, copy) = incoming.finish(&snap, &mut env);
    // After `finish`: a message ended before its header did still had its Received read.
    let qid = env.queue_id().to_string();
    let (verdict, seen) = match (broken, msg) {
        (Some(why), _) => {
            tracing::error!("{qid}: {why}; temporarily failing");
            (
                tempfail("message could not be read, try again later"),
                Vec::new(),
            )
        }
        (None, Err(e)) => {
            tracing::error!("{qid}: cannot buffer message: {e}");
            (chassis::evaluation::internal_error(), Vec::new())
        }
        (None, Ok(m)) => {
            let seen = m.auth_results_seen().to_vec();
            (
                chassis::evaluation::within_deadline(snap, env, m, carry).await,
                seen,
            )
        }
    };
    let rewrite = rewrite_for(&verdict, &seen);
    let mut decision = session::decision(&verdict.action, &qid);
    let copy_in_memory = copy.in_memory() && copy.len_hint() < CHUNK;
    // Lines are batched into chunks; the last chunk (with the final ".") goes out only after
    // the disposition is stored, since smtpd sends commit as soon as it has the ".". A small
    // message kept in memory is written back here in one chunk; a larger one on a blocking
    // thread, handing full chunks to the writer as it goes (bounded memory).
    let written: Result<io::Result<Vec<u8>>, String> = if copy_in_memory {
        // Room for the lines plus each line's `filter-dataline|SESSION|TOKEN|` prefix; sized
        // to the message, since a buffer of allocator-trimming size per message costs more
        // in page faults than the rest of the write-back.
        let mut chunk = Vec::with_capacity(2 * copy.len_hint() + 2048);
        Ok(copy
            .write_back(&rewrite, &mut |line| {
                proto::push_data_line(&mut chunk, &sid, &token, line);
                Ok(())
            })
            .map(|()| chunk))
    } else {
        let (lines, sid, token) = (tx.clone(), sid.clone(), token.clone());
        tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
            let mut chunk = Vec::with_capacity(CHUNK + 1024);
            copy.write_back(&rewrite, &mut |line| {
                proto::push_data_line(&mut chunk, &sid, &token, line);
                if chunk.len() >= CHUNK {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK + 1024));
                    lines
                        .blocking_send(full)
                        .map_err(|_| io::Error::other("stdout closed"))?;
                }
                Ok(())
            })?;
            Ok(chunk)
        })
        .await
        .map_err(|e| e.to_string())
    };
    let (tail, failure) = match written {
        Ok(Ok(tail)) => (tail, None),
        Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
        Err(e) => (Vec::new(), Some(e)),
    };
    if let Some(e) = failure {
        tracing::error!("{qid}: cannot write the message back to smtpd: {e}; temporarily failing");
        decision = Decision::Reject(
            SmtpReply::new("451", "4.7.0", "filter error, try again later").to_string(),
        );
    }
    chassis::metrics::metrics().count_action(match &decision {
        Decision::Proceed => "accept",
        Decision::Reject(r) if r.starts_with('4') => "tempfail",
        Decision::Reject(_) => "reject",
    });
    decisions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(sid.clone(), decision);
    let mut tail = tail;
    tail.extend_from_slice(proto::data_end(&sid, &token).as_bytes());
    tail.push(b'\n');
    let _ = tx.send(tail).await;
}
