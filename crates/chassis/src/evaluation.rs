//! Running a policy's evaluation of one message the way every front end must: in its own task,
//! bounded by the policy's deadline, cancelled (not left running) when the deadline passes or
//! the front end stops waiting, with the same metrics and log lines whichever MTA asked.

use crate::envelope::Envelope;
use crate::message::Message;
use crate::policy::Policy;
use crate::verdict::{Action, SmtpReply, Verdict};
use std::sync::Arc;

/// Aborts the evaluation task when dropped: nothing of it runs on unobserved (a history row
/// committed after the MTA was told to retry would count the retry twice).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
    let task = tokio::spawn(snap.evaluate(env, msg, carry));
    let _cancel = AbortOnDrop(task.abort_handle());
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
                "{qid}: evaluation took longer than {} s; cancelled, temporarily failing",
                deadline.as_secs()
            );
            internal_error()
        }
    }
}
