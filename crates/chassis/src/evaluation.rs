//! Running a policy's evaluation of one message the way every front end must: a panic caught,
//! bounded by the policy's deadline, cancelled (not left running) when the deadline passes or
//! the front end stops waiting, with the same metrics and log lines whichever MTA asked.

use crate::envelope::Envelope;
use crate::message::Message;
use crate::policy::Policy;
use crate::verdict::{Action, SmtpReply, Verdict};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A future whose panic becomes an error value, so one message's bug is that message's
/// tempfail, not the end of the session or of the process.
struct CatchPanic<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string()))),
        }
    }
}

/// The verdict when evaluation failed or ran out of time: the MTA is asked to retry.
pub fn internal_error() -> Verdict {
    Verdict::new(
        Vec::new(),
        Action::Tempfail(SmtpReply::new(
            "451",
            "4.7.0",
            "internal error, try again later",
        )),
    )
}

/// Evaluates `msg` with `snap` within `snap.deadline()`, recording the evaluation time and the
/// verdict in the metrics. A panic in the policy or the deadline gives [`internal_error`].
pub async fn within_deadline<P: Policy>(
    snap: Arc<P>,
    env: Envelope,
    msg: Message,
    carry: Option<P::Carry>,
) -> Verdict {
    let qid = env.queue_id().to_string();
    let deadline = snap.deadline();
    let started = std::time::Instant::now();
    let env_for_record = env.clone();
    // The evaluation runs in the caller's task: dropping it (the deadline, or a front end that
    // stops waiting) cancels it at its next await, so nothing of it runs on unobserved (a
    // history row committed after the MTA was told to retry would count the retry twice).
    let mut eval = CatchPanic(Box::pin(snap.evaluate(env, msg, carry)));
    // Most evaluations (every signature; verification with cached keys) finish in their first
    // poll. Those get no timer: arming one wakes the event loop once more per message.
    let first = std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut eval).poll(cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        })
    })
    .await;
    let outcome = match first {
        Some(r) => Ok(r),
        None => tokio::time::timeout_at((started + deadline).into(), eval).await,
    };
    match outcome {
        Ok(Ok(v)) => {
            crate::metrics::metrics()
                .evaluation_seconds
                .observe(started.elapsed().as_secs_f64());
            crate::metrics::record_verdict(&env_for_record, &v);
            v
        }
        Ok(Err(panic)) => {
            tracing::error!("{qid}: internal error while evaluating the message: {panic}");
            internal_error()
        }
        Err(_) => {
            tracing::error!(
                "{qid}: evaluation took longer than {} s; cancelled, temporarily failing",
                deadline.as_secs()
            );
            internal_error()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_panic_is_an_error_value_and_a_value_passes_through() {
        let ok = CatchPanic(Box::pin(async { 7 })).await;
        assert_eq!(ok, Ok(7));
        let text = CatchPanic(Box::pin(async {
            tokio::task::yield_now().await;
            if ok.is_ok() {
                panic!("bad header {}", 3);
            }
            1
        }))
        .await;
        assert_eq!(text, Err("bad header 3".to_string()));
        let fixed = CatchPanic(Box::pin(async {
            if ok.is_ok() {
                panic!("fixed text");
            }
        }))
        .await;
        assert_eq!(fixed, Err("fixed text".to_string()));
    }
}
