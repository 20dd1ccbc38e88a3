//! The milter front end: thin glue that turns indymilter callbacks into an [`Envelope`] and a
//! [`Message`], asks the [`Policy`] for a plan at end of headers and a [`Verdict`] at end of
//! message, and applies it as milter actions. It collects, it never decides: the milter
//! vocabulary (macro names, 1-based header occurrences, protocol flags) stops here.

use crate::listener::ResilientListener;
use crate::macros::MacroState;
use chassis::envelope::Envelope;
use chassis::message::{MessageBuilder, SeenAuthResults};
use chassis::policy::{ConnectDecision, Policy, Snapshots};
use chassis::verdict::{Action, SmtpReply, Verdict};
use indymilter::{
    Actions, Callbacks, Context, ContextActions, EomContext, NegotiateContext, ProtoOpts,
    SetErrorReply, SocketInfo, Status,
};
use std::ffi::CString;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
        chassis::metrics::metrics().sessions_active.inc();
        ActiveGuard
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        ACTIVE_SESSIONS.fetch_sub(1, Ordering::SeqCst);
        chassis::metrics::metrics().sessions_active.dec();
    }
}

/// Per-connection state (opaque to policies).
pub struct Session<P: Policy> {
    _active: ActiveGuard,
    snap: Arc<P>,
    leading_space: bool,
    /// Stages the MTA agreed not to wait for a reply at (`SMFIP_NR_*`).
    noreply: ProtoOpts,
    macros: MacroState,
    env: Envelope,
    builder: Option<MessageBuilder>,
    carry: Option<P::Carry>,
}

impl<P: Policy> Session<P> {
    /// Takes in the macros of this stage and refreshes the typed envelope from them.
    fn absorb(&mut self, macros: &indymilter::Macros) {
        self.macros.merge(macros);
        self.macros.fill(&mut self.env);
    }

    fn builder(&mut self) -> &mut MessageBuilder {
        let (snap, leading_space) = (&self.snap, self.leading_space);
        self.builder
            .get_or_insert_with(|| MessageBuilder::new(snap.limits(), leading_space))
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

/// The stages whose reply is always "continue" here, so they need none when the MTA agrees.
const NO_REPLY_STAGES: ProtoOpts = ProtoOpts::NOREPLY_HELO
    .union(ProtoOpts::NOREPLY_MAIL)
    .union(ProtoOpts::NOREPLY_RCPT)
    .union(ProtoOpts::NOREPLY_HEADER)
    .union(ProtoOpts::NOREPLY_EOH)
    .union(ProtoOpts::NOREPLY_BODY);

/// Actions without which a message cannot be handled safely: our results are added with
/// add-header, and forged Authentication-Results can only be removed with change-header.
const REQUIRED_ACTIONS: [(Actions, &str, &str); 2] = [
    (
        Actions::ADD_HEADER,
        "add-header",
        "write our Authentication-Results",
    ),
    (
        Actions::CHANGE_HEADER,
        "change-header",
        "remove forged Authentication-Results",
    ),
];

/// "Continue" at `stage`, or no reply at all when the MTA agreed to that.
fn go_on<P: Policy>(session: &Option<Session<P>>, stage: ProtoOpts) -> Status {
    match session {
        Some(s) if s.noreply.contains(stage) => Status::Noreply,
        _ => Status::Continue,
    }
}

/// Builds the indymilter callbacks for the policy snapshots in `current`.
pub fn callbacks<P: Policy>(current: Arc<Snapshots<P>>) -> Callbacks<Session<P>> {
    Callbacks::new()
        .on_negotiate(move |cx: &mut NegotiateContext<Session<P>>, actions: Actions, opts: ProtoOpts| {
            let current = current.clone();
            Box::pin(async move {
                for (action, name, why) in REQUIRED_ACTIONS {
                    if !actions.contains(action) {
                        tracing::error!(
                            "milter negotiation: the MTA does not offer the {name} action (offered {:#x}), needed to {why}; refusing the connection",
                            actions.bits()
                        );
                        return Status::Reject;
                    }
                }
                let mut wanted = Actions::ADD_HEADER | Actions::CHANGE_HEADER;
                if actions.contains(Actions::QUARANTINE) {
                    wanted |= Actions::QUARANTINE;
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
                let snap = current.current();
                if !snap.needs_body() && opts.contains(ProtoOpts::NO_BODY) {
                    cx.requested_opts |= ProtoOpts::NO_BODY;
                }
                let macros = MacroState::new(snap.wanted_attributes());
                if actions.contains(Actions::REQUEST_MACROS) {
                    for (stage, list) in macros.requests() {
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
                    macros,
                    env: Envelope::default(),
                    builder: None,
                    carry: None,
                });
                Status::Continue
            })
        })
        .on_connect(|cx: &mut Context<Session<P>>, hostname: CString, info: SocketInfo| {
            Box::pin(async move {
                let Some(s) = cx.data.as_mut() else { return Status::Tempfail };
                s.absorb(&cx.macros);
                s.env.client_name = hostname.to_string_lossy().into_owned();
                s.env.client_ip = match info {
                    SocketInfo::Inet(addr) => Some(addr.ip()),
                    _ => s.macros.get("client_addr").and_then(|a| a.parse::<IpAddr>().ok()),
                };
                match s.snap.on_connect(&s.env) {
                    ConnectDecision::Continue => Status::Continue,
                    ConnectDecision::Ignore(why) => {
                        tracing::info!("ignoring connection from {}: {why}", s.env.client_label());
                        Status::Accept
                    }
                }
            })
        })
        .on_helo(|cx: &mut Context<Session<P>>, helo: CString| {
            Box::pin(async move {
                if let Some(s) = cx.data.as_mut() {
                    s.absorb(&cx.macros);
                    s.env.helo = helo.to_string_lossy().into_owned();
                }
                go_on(&cx.data, ProtoOpts::NOREPLY_HELO)
            })
        })
        .on_mail(|cx: &mut Context<Session<P>>, args: Vec<CString>| {
            Box::pin(async move {
                let Some(s) = cx.data.as_mut() else { return Status::Tempfail };
                s.absorb(&cx.macros);
                s.env.reset_transaction();
                s.env.mail_from = strip_angle(&cstr_arg(&args, 0));
                s.builder = Some(MessageBuilder::new(s.snap.limits(), s.leading_space));
                s.carry = None;
                go_on(&cx.data, ProtoOpts::NOREPLY_MAIL)
            })
        })
        .on_rcpt(|cx: &mut Context<Session<P>>, args: Vec<CString>| {
            Box::pin(async move {
                if let Some(s) = cx.data.as_mut() {
                    s.absorb(&cx.macros);
                    s.env.rcpts.push(strip_angle(&cstr_arg(&args, 0)));
                }
                go_on(&cx.data, ProtoOpts::NOREPLY_RCPT)
            })
        })
        .on_header(|cx: &mut Context<Session<P>>, name: CString, value: CString| {
            Box::pin(async move {
                if let Some(s) = cx.data.as_mut() {
                    s.builder().header(name.as_bytes(), value.as_bytes());
                }
                go_on(&cx.data, ProtoOpts::NOREPLY_HEADER)
            })
        })
        .on_eoh(|cx: &mut Context<Session<P>>| {
            Box::pin(async move {
                if let Some(s) = cx.data.as_mut() {
                    s.absorb(&cx.macros);
                    s.builder().end_of_headers();
                    plan::<P>(s);
                }
                go_on(&cx.data, ProtoOpts::NOREPLY_EOH)
            })
        })
        .on_body(|cx: &mut Context<Session<P>>, chunk: bytes::Bytes| {
            Box::pin(async move {
                if let Some(b) = cx.data.as_mut().and_then(|s| s.builder.as_mut()) {
                    b.body(&chunk);
                }
                go_on(&cx.data, ProtoOpts::NOREPLY_BODY)
            })
        })
        .on_eom(|cx: &mut EomContext<Session<P>>| Box::pin(end_of_message::<P>(cx)))
        .on_abort(|cx: &mut Context<Session<P>>| {
            Box::pin(async move {
                if let Some(s) = cx.data.as_mut() {
                    s.builder = None;
                    s.carry = None;
                    s.env.reset_transaction();
                }
                Status::Continue
            })
        })
}

/// The end-of-headers decision, made once: the body plan goes to the builder, the carry is
/// kept for end of message.
fn plan<P: Policy>(s: &mut Session<P>) {
    let Some(b) = s.builder.as_mut() else { return };
    let planned = s.snap.plan(&s.env, b.headers(), b.header_block());
    b.plan_body(planned.body);
    s.carry = Some(planned.carry);
}

async fn end_of_message<P: Policy>(cx: &mut EomContext<Session<P>>) -> Status {
    let Some(s) = cx.data.as_mut() else {
        return Status::Tempfail;
    };
    s.absorb(&cx.macros);
    if s.builder.is_none() || s.carry.is_none() {
        // No end of headers was seen (a message without any): decide now, as then.
        s.builder().end_of_headers();
        plan::<P>(s);
    }
    let env = s.env.clone();
    let qid = env.queue_id().to_string();
    let builder = s.builder.take().expect("created above");
    let carry = s.carry.take();
    let leading_space = s.leading_space;
    let snap = s.snap.clone();
    let (verdict, seen) = match builder.finish() {
        Err(e) => {
            tracing::error!("{qid}: cannot buffer message: {e}");
            (chassis::evaluation::internal_error(), Vec::new())
        }
        Ok(msg) => {
            let seen = msg.auth_results_seen().to_vec();
            let verdict = chassis::evaluation::within_deadline(snap, env, msg, carry).await;
            (verdict, seen)
        }
    };
    apply(cx, &qid, verdict, &seen, leading_space).await
}

/// The reply when a header change the verdict needs could not be made: delivering without it
/// could pass a forged result or an unsigned message, so the MTA is asked to retry.
fn edit_failed() -> SmtpReply {
    SmtpReply::new("451", "4.7.0", "header change failed, try again later")
}

/// Applies the verdict as milter actions: removals, then prepended fields, then our
/// Authentication-Results on top, then the disposition. A failed header change tempfails.
async fn apply<P: Policy>(
    cx: &mut EomContext<Session<P>>,
    qid: &str,
    verdict: Verdict,
    seen: &[SeenAuthResults],
    leading_space: bool,
) -> Status {
    let metrics = chassis::metrics::metrics();
    // Removals first (occurrences count the fields as they arrived), highest occurrence first
    // as forged_occurrences orders them, then the new fields.
    for occurrence in verdict.removed_auth_results(seen) {
        let removed = cx
            .actions
            .change_header("Authentication-Results", occurrence as i32, None::<CString>)
            .await;
        if let Err(e) = removed {
            tracing::error!(
                "{qid}: cannot remove forged Authentication-Results header #{occurrence}: {e}; temporarily failing"
            );
            metrics.count_action("tempfail");
            return set_reply(cx, qid, &edit_failed(), Status::Tempfail);
        }
    }
    let prepend = verdict.new_fields();
    for (name, value) in prepend {
        let value = if leading_space {
            format!(" {value}")
        } else {
            value
        };
        let Ok(value) = CString::new(value) else {
            tracing::error!("{qid}: refusing to add header {name}: value contains a NUL byte");
            continue;
        };
        if let Err(e) = cx.actions.insert_header(0, name.as_str(), value).await {
            tracing::error!("{qid}: cannot add header {name}: {e}; temporarily failing");
            metrics.count_action("tempfail");
            return set_reply(cx, qid, &edit_failed(), Status::Tempfail);
        }
    }
    metrics.count_action(verdict.action.word());
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

fn set_reply<P: Policy>(
    cx: &mut EomContext<Session<P>>,
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
pub async fn serve<P: Policy>(
    listener: ResilientListener,
    current: Arc<Snapshots<P>>,
    max_connections: usize,
    shutdown: impl Future,
) -> std::io::Result<()> {
    serve_with(
        listener,
        current,
        max_connections,
        Duration::from_secs(900),
        shutdown,
    )
    .await
}

/// [`serve`] with an explicit idle timeout: a connection on which the MTA sends nothing for
/// that long is closed, so silent clients cannot hold every connection slot.
pub async fn serve_with<P: Policy>(
    listener: ResilientListener,
    current: Arc<Snapshots<P>>,
    max_connections: usize,
    idle_timeout: Duration,
    shutdown: impl Future,
) -> std::io::Result<()> {
    let config = indymilter::Config {
        max_connections,
        connection_timeout: idle_timeout,
        ..Default::default()
    };
    indymilter::run(listener, callbacks(current), config, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn angle_brackets_are_stripped() {
        assert_eq!(strip_angle("<a@b.example>"), "a@b.example");
        assert_eq!(strip_angle("<>"), "");
    }
}
