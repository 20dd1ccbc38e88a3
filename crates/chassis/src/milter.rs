//! The milter front end: thin glue that turns indymilter callbacks into an [`Envelope`] and a
//! [`Message`], hands them to a [`Filter`] at end of message, and applies the [`Verdict`].
//! It collects, it never decides: everything a daemon decides lives behind `Filter`, which knows
//! nothing about the milter protocol.

use crate::envelope::Envelope;
use crate::listener::ResilientListener;
use crate::message::{BodyPlan, HeaderField, Limits, Message, MessageBuilder};
use crate::verdict::{Action, HeaderEdit, SmtpReply, Verdict};
use indymilter::{
    Actions, Callbacks, Context, ContextActions, EomContext, MacroStage, NegotiateContext,
    ProtoOpts, SetErrorReply, SocketInfo, Status,
};
use std::ffi::CString;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What to do with a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectDecision {
    /// Look at the messages of this connection.
    Continue,
    /// Leave the whole connection alone (PeerList, IgnoreHosts); the string is logged.
    Ignore(String),
}

/// The current configuration snapshot of a daemon, swapped whole on reload: sessions take an
/// `Arc` at connect and keep it to the end, so a reload never changes a message half-way.
pub struct Snapshots<T> {
    current: std::sync::RwLock<Arc<T>>,
}

impl<T> Snapshots<T> {
    pub fn new(value: T) -> Self {
        Self {
            current: std::sync::RwLock::new(Arc::new(value)),
        }
    }

    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, value: T) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
    }
}

/// A daemon's policy as the front end sees it.
pub trait Filter: Send + Sync + 'static {
    /// The configuration a session works with from start to end, even across a reload.
    type Snapshot: Send + Sync + 'static;

    /// The current configuration; called once per connection.
    fn snapshot(&self) -> Arc<Self::Snapshot>;

    /// Per-message buffering limits.
    fn limits(snap: &Self::Snapshot) -> Limits;

    /// Macro names to ask the MTA for at end of headers and end of message, beyond the ones
    /// every daemon needs (`i`, `j`, `{daemon_name}`, `{auth_type}`, `{auth_authen}`).
    fn extra_macros(_snap: &Self::Snapshot) -> Vec<String> {
        Vec::new()
    }

    /// Decides whether to look at this connection at all.
    fn on_connect(snap: &Self::Snapshot, env: &Envelope) -> ConnectDecision;

    /// Whether this configuration ever looks at a message body. When it does not, the MTA is
    /// asked not to send bodies at all (`SMFIP_NOBODY`), as OpenDMARC does.
    fn wants_body(_snap: &Self::Snapshot) -> bool {
        true
    }

    /// At end of headers: whether `on_message` will need the body bytes, and which DKIM body
    /// hashes to compute while the body arrives. The default keeps the body and hashes nothing.
    fn body_plan(
        _snap: &Self::Snapshot,
        _env: &Envelope,
        _headers: &[HeaderField],
        _header_block: &[u8],
    ) -> BodyPlan {
        BodyPlan::default()
    }

    /// The decision for one complete message.
    fn on_message(
        snap: Arc<Self::Snapshot>,
        env: Envelope,
        msg: Message,
    ) -> impl Future<Output = Verdict> + Send;

    /// Upper bound for `on_message`; past it the message is tempfailed.
    fn deadline(snap: &Self::Snapshot) -> Duration;
}

static ACTIVE_SESSIONS: AtomicUsize = AtomicUsize::new(0);

/// Milter connections open right now (graceful shutdown waits for this to reach zero).
pub fn active_sessions() -> usize {
    ACTIVE_SESSIONS.load(Ordering::SeqCst)
}

/// Counts a connection from negotiation until its state is dropped, however the session ends.
struct ActiveGuard;

impl ActiveGuard {
    fn new() -> Self {
        ACTIVE_SESSIONS.fetch_add(1, Ordering::SeqCst);
        crate::metrics::metrics().sessions_active.inc();
        ActiveGuard
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        ACTIVE_SESSIONS.fetch_sub(1, Ordering::SeqCst);
        crate::metrics::metrics().sessions_active.dec();
    }
}

/// Per-connection state (opaque to daemons).
pub struct Session<S> {
    _active: ActiveGuard,
    snap: Arc<S>,
    leading_space: bool,
    /// Stages the MTA agreed not to wait for a reply at (`SMFIP_NR_*`).
    noreply: ProtoOpts,
    env: Envelope,
    builder: Option<MessageBuilder>,
}

/// Macros the SMTP server knows and a later stage may answer differently (Postfix sends
/// end-of-header and end-of-message macros from its cleanup process, with its own
/// `{daemon_name}` and no SMTP AUTH data): the first non-empty value stays.
const SESSION_MACROS: &[&str] = &[
    "daemon_name",
    "auth_type",
    "auth_authen",
    "auth_author",
    "client_addr",
    "client_name",
];

fn merge_macros<S>(data: &mut Option<Session<S>>, macros: &indymilter::Macros) {
    if let Some(s) = data.as_mut() {
        for (k, v) in macros.to_hash_map() {
            let name = k.to_string_lossy();
            let value = v.to_string_lossy();
            let bare = name.trim_start_matches('{').trim_end_matches('}');
            let known = s.env.macro_value(bare).is_some();
            if known && (value.is_empty() || SESSION_MACROS.contains(&bare)) {
                continue;
            }
            s.env.set_macro(&name, &value);
        }
    }
}

fn cstr_arg(args: &[CString], i: usize) -> String {
    args.get(i)
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn strip_angle(s: &str) -> String {
    s.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

/// The fixed set of macros both daemons use; the MTA only sends those its config lists.
fn macro_requests(extra: &[String]) -> Vec<(MacroStage, String)> {
    // Only the queue id here (plus MacroList names): the SMTP-session macros come at connect
    // and MAIL, from the process that knows them.
    let mut eoh = String::from("i");
    for m in extra {
        let name = if m.len() > 1 && !m.starts_with('{') {
            format!("{{{m}}}")
        } else {
            m.clone()
        };
        eoh.push(' ');
        eoh.push_str(&name);
    }
    vec![
        (
            MacroStage::Connect,
            "j {daemon_name} {client_addr} {client_name}".to_string(),
        ),
        (
            MacroStage::Mail,
            "i {auth_type} {auth_authen} {mail_addr}".to_string(),
        ),
        (MacroStage::Eoh, eoh.clone()),
        (MacroStage::Eom, eoh),
    ]
}

/// The stages whose reply is always "continue" here, so they need none when the MTA agrees.
const NO_REPLY_STAGES: ProtoOpts = ProtoOpts::NOREPLY_HELO
    .union(ProtoOpts::NOREPLY_MAIL)
    .union(ProtoOpts::NOREPLY_RCPT)
    .union(ProtoOpts::NOREPLY_HEADER)
    .union(ProtoOpts::NOREPLY_EOH)
    .union(ProtoOpts::NOREPLY_BODY);

/// "Continue" at `stage`, or no reply at all when the MTA agreed to that.
fn go_on<S>(session: &Option<Session<S>>, stage: ProtoOpts) -> Status {
    match session {
        Some(s) if s.noreply.contains(stage) => Status::Noreply,
        _ => Status::Continue,
    }
}

/// Builds the indymilter callbacks for `filter`.
pub fn callbacks<F: Filter>(filter: Arc<F>) -> Callbacks<Session<F::Snapshot>> {
    Callbacks::new()
        .on_negotiate(move |cx: &mut NegotiateContext<Session<F::Snapshot>>, actions: Actions, opts: ProtoOpts| {
            let filter = filter.clone();
            Box::pin(async move {
                if !actions.contains(Actions::ADD_HEADER) {
                    tracing::error!(
                        "milter negotiation: the MTA does not offer the add-header action (offered {:#x}); refusing",
                        actions.bits()
                    );
                    return Status::Reject;
                }
                let mut wanted = Actions::ADD_HEADER;
                for a in [Actions::CHANGE_HEADER, Actions::QUARANTINE] {
                    if actions.contains(a) {
                        wanted |= a;
                    }
                }
                cx.requested_actions = wanted;
                let leading_space = opts.contains(ProtoOpts::LEADING_SPACE);
                if leading_space {
                    cx.requested_opts |= ProtoOpts::LEADING_SPACE;
                }
                // Every stage but connect (whose reply can be "accept": ignore this connection)
                // and end of message always continues, so the MTA need not wait for a reply:
                // fewer round trips per message, for the MTA and for us.
                let noreply = opts & NO_REPLY_STAGES;
                cx.requested_opts |= noreply;
                let snap = filter.snapshot();
                if !F::wants_body(&snap) && opts.contains(ProtoOpts::NO_BODY) {
                    cx.requested_opts |= ProtoOpts::NO_BODY;
                }
                if actions.contains(Actions::REQUEST_MACROS) {
                    for (stage, list) in macro_requests(&F::extra_macros(&snap)) {
                        if let Ok(c) = CString::new(list) {
                            cx.requested_macros.insert(stage, c);
                        }
                    }
                }
                cx.data = Some(Session {
                    _active: ActiveGuard::new(),
                    snap,
                    leading_space,
                    noreply,
                    env: Envelope::default(),
                    builder: None,
                });
                Status::Continue
            })
        })
        .on_connect(|cx: &mut Context<Session<F::Snapshot>>, hostname: CString, info: SocketInfo| {
            Box::pin(async move {
                merge_macros(&mut cx.data, &cx.macros);
                let Some(s) = cx.data.as_mut() else { return Status::Tempfail };
                s.env.client_name = hostname.to_string_lossy().into_owned();
                s.env.client_ip = match info {
                    SocketInfo::Inet(addr) => Some(addr.ip()),
                    _ => s.env.macro_value("client_addr").and_then(|a| a.parse::<IpAddr>().ok()),
                };
                match F::on_connect(&s.snap, &s.env) {
                    ConnectDecision::Continue => Status::Continue,
                    ConnectDecision::Ignore(why) => {
                        tracing::info!("ignoring connection from {}: {why}", s.env.client_label());
                        Status::Accept
                    }
                }
            })
        })
        .on_helo(|cx: &mut Context<Session<F::Snapshot>>, helo: CString| {
            Box::pin(async move {
                merge_macros(&mut cx.data, &cx.macros);
                if let Some(s) = cx.data.as_mut() {
                    s.env.helo = helo.to_string_lossy().into_owned();
                }
                go_on(&cx.data, ProtoOpts::NOREPLY_HELO)
            })
        })
        .on_mail(|cx: &mut Context<Session<F::Snapshot>>, args: Vec<CString>| {
            Box::pin(async move {
                merge_macros(&mut cx.data, &cx.macros);
                let Some(s) = cx.data.as_mut() else { return Status::Tempfail };
                s.env.mail_from = strip_angle(&cstr_arg(&args, 0));
                s.env.rcpts.clear();
                s.builder = Some(MessageBuilder::new(F::limits(&s.snap), s.leading_space));
                go_on(&cx.data, ProtoOpts::NOREPLY_MAIL)
            })
        })
        .on_rcpt(|cx: &mut Context<Session<F::Snapshot>>, args: Vec<CString>| {
            Box::pin(async move {
                merge_macros(&mut cx.data, &cx.macros);
                if let Some(s) = cx.data.as_mut() {
                    s.env.rcpts.push(strip_angle(&cstr_arg(&args, 0)));
                }
                go_on(&cx.data, ProtoOpts::NOREPLY_RCPT)
            })
        })
        .on_header(|cx: &mut Context<Session<F::Snapshot>>, name: CString, value: CString| {
            Box::pin(async move {
                if let Some(s) = cx.data.as_mut() {
                    let leading_space = s.leading_space;
                    let snap = &s.snap;
                    s.builder
                        .get_or_insert_with(|| MessageBuilder::new(F::limits(snap), leading_space))
                        .header(name.as_bytes(), value.as_bytes());
                }
                go_on(&cx.data, ProtoOpts::NOREPLY_HEADER)
            })
        })
        .on_eoh(|cx: &mut Context<Session<F::Snapshot>>| {
            Box::pin(async move {
                merge_macros(&mut cx.data, &cx.macros);
                if let Some(s) = cx.data.as_mut() {
                    let (snap, leading_space) = (&s.snap, s.leading_space);
                    let b = s
                        .builder
                        .get_or_insert_with(|| MessageBuilder::new(F::limits(snap), leading_space));
                    b.end_of_headers();
                    b.plan_body(F::body_plan(snap, &s.env, b.headers(), b.header_block()));
                }
                go_on(&cx.data, ProtoOpts::NOREPLY_EOH)
            })
        })
        .on_body(|cx: &mut Context<Session<F::Snapshot>>, chunk: bytes::Bytes| {
            Box::pin(async move {
                if let Some(b) = cx.data.as_mut().and_then(|s| s.builder.as_mut()) {
                    b.body(&chunk);
                }
                go_on(&cx.data, ProtoOpts::NOREPLY_BODY)
            })
        })
        .on_eom(|cx: &mut EomContext<Session<F::Snapshot>>| Box::pin(end_of_message::<F>(cx)))
        .on_abort(|cx: &mut Context<Session<F::Snapshot>>| {
            Box::pin(async move {
                if let Some(s) = cx.data.as_mut() {
                    s.builder = None;
                    s.env.mail_from.clear();
                    s.env.rcpts.clear();
                }
                Status::Continue
            })
        })
}

async fn end_of_message<F: Filter>(cx: &mut EomContext<Session<F::Snapshot>>) -> Status {
    merge_macros(&mut cx.data, &cx.macros);
    let Some(s) = cx.data.as_mut() else {
        return Status::Tempfail;
    };
    let env = s.env.clone();
    let qid = env.queue_id().to_string();
    let builder = s
        .builder
        .take()
        .unwrap_or_else(|| MessageBuilder::new(F::limits(&s.snap), s.leading_space));
    let leading_space = s.leading_space;
    let snap = s.snap.clone();
    let verdict = match builder.finish() {
        Err(e) => {
            tracing::error!("{qid}: cannot buffer message: {e}");
            internal_error()
        }
        Ok(msg) => {
            let deadline = F::deadline(&snap);
            let started = std::time::Instant::now();
            let env_for_record = env.clone();
            let task = tokio::spawn(F::on_message(snap, env, msg));
            match tokio::time::timeout(deadline, task).await {
                Ok(Ok(v)) => {
                    crate::metrics::metrics()
                        .evaluation_seconds
                        .observe(started.elapsed().as_secs_f64());
                    crate::metrics::record_verdict(&env_for_record, &v);
                    v
                }
                Ok(Err(join)) => {
                    tracing::error!("{qid}: internal error while evaluating the message: {join}");
                    internal_error()
                }
                Err(_) => {
                    tracing::error!(
                        "{qid}: evaluation took longer than {} s; temporarily failing",
                        deadline.as_secs()
                    );
                    internal_error()
                }
            }
        }
    };
    let m = crate::metrics::metrics();
    m.count_action(match &verdict.action {
        Action::Accept => "accept",
        Action::Reject(_) => "reject",
        Action::Tempfail(_) => "tempfail",
        Action::Discard => "discard",
        Action::Quarantine(_) => "quarantine",
    });
    apply(cx, &qid, verdict, leading_space).await
}

fn internal_error() -> Verdict {
    Verdict {
        edits: Vec::new(),
        action: Action::Tempfail(SmtpReply::new(
            "451",
            "4.7.0",
            "internal error, try again later",
        )),
    }
}

async fn apply<S: Send + Sync>(
    cx: &mut EomContext<Session<S>>,
    qid: &str,
    verdict: Verdict,
    leading_space: bool,
) -> Status {
    for edit in verdict.edits {
        let result = match edit {
            HeaderEdit::Delete { name, occurrence } => {
                cx.actions
                    .change_header(name.as_str(), occurrence as i32, None::<CString>)
                    .await
            }
            HeaderEdit::Insert { index, name, value } => {
                let value = if leading_space {
                    format!(" {value}")
                } else {
                    value
                };
                match CString::new(value) {
                    Ok(v) => {
                        cx.actions
                            .insert_header(index as i32, name.as_str(), v)
                            .await
                    }
                    Err(_) => {
                        tracing::error!(
                            "{qid}: refusing to add header {name}: value contains a NUL byte"
                        );
                        continue;
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::error!("{qid}: header change failed: {e}");
        }
    }
    match verdict.action {
        Action::Accept => Status::Accept,
        Action::Discard => Status::Discard,
        Action::Quarantine(reason) => {
            if let Err(e) = cx.actions.quarantine(reason.as_str()).await {
                tracing::error!("{qid}: quarantine failed: {e}");
            }
            Status::Accept
        }
        Action::Reject(reply) => set_reply(cx, qid, &reply, Status::Reject),
        Action::Tempfail(reply) => set_reply(cx, qid, &reply, Status::Tempfail),
    }
}

fn set_reply<S: Send + Sync>(
    cx: &mut EomContext<Session<S>>,
    qid: &str,
    reply: &SmtpReply,
    status: Status,
) -> Status {
    let text = reply.text.replace(['\r', '\n'], " ");
    if let Err(e) = cx.reply.set_error_reply(
        reply.code.as_str(),
        Some(reply.xcode.as_str()),
        [text.as_str()],
    ) {
        tracing::warn!("{qid}: cannot set SMTP reply {reply}: {e}");
    }
    status
}

/// Serves milter connections on `listener` until `shutdown` completes, then lets sessions in
/// flight finish.
pub async fn serve<F: Filter>(
    listener: ResilientListener,
    filter: Arc<F>,
    max_connections: usize,
    shutdown: impl Future,
) -> std::io::Result<()> {
    serve_with(
        listener,
        filter,
        max_connections,
        Duration::from_secs(900),
        shutdown,
    )
    .await
}

/// [`serve`] with an explicit idle timeout: a connection on which the MTA sends nothing for
/// that long is closed, so silent clients cannot hold every connection slot.
pub async fn serve_with<F: Filter>(
    listener: ResilientListener,
    filter: Arc<F>,
    max_connections: usize,
    idle_timeout: Duration,
    shutdown: impl Future,
) -> std::io::Result<()> {
    let config = indymilter::Config {
        max_connections,
        connection_timeout: idle_timeout,
        ..Default::default()
    };
    indymilter::run(listener, callbacks(filter), config, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_lists_include_extra_names_braced() {
        let reqs = macro_requests(&["daemon_name".into(), "{auth_authen}".into(), "i".into()]);
        let eoh = &reqs.iter().find(|(s, _)| *s == MacroStage::Eoh).unwrap().1;
        assert_eq!(eoh, "i {daemon_name} {auth_authen} i");
    }

    #[test]
    fn angle_brackets_are_stripped() {
        assert_eq!(strip_angle("<a@b.example>"), "a@b.example");
        assert_eq!(strip_angle("<>"), "");
    }
}
