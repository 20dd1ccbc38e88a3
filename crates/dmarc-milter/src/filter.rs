//! dmarc-milter as a chassis [`Filter`]: connection screening (IgnoreHosts) and the per-message
//! policy, with the configuration snapshot taken once per connection.

use crate::policy::evaluate::evaluate;
use crate::runtime::Runtime;
use chassis::envelope::Envelope;
use chassis::message::{BodyPlan, HeaderField, Limits, Message};
use chassis::milter::Snapshots;
use chassis::milter::{ConnectDecision, Filter};
use chassis::verdict::Verdict;
use std::sync::Arc;
use std::time::Duration;

pub struct DmarcFilter {
    current: Snapshots<Runtime>,
}

impl DmarcFilter {
    pub fn new(rt: Runtime) -> Self {
        Self {
            current: Snapshots::new(rt),
        }
    }

    /// Installs a new runtime; sessions already running keep the one they started with.
    pub fn replace(&self, rt: Runtime) {
        self.current.replace(rt);
    }
}

impl Filter for DmarcFilter {
    type Snapshot = Runtime;

    fn snapshot(&self) -> Arc<Runtime> {
        self.current.current()
    }

    fn limits(snap: &Runtime) -> Limits {
        snap.config.limits.clone()
    }

    fn on_connect(snap: &Runtime, env: &Envelope) -> ConnectDecision {
        let name = (!env.client_name.is_empty()).then_some(env.client_name.as_str());
        if snap.config.ignore_hosts.matches(env.client_ip, name) {
            ConnectDecision::Ignore("listed in ignore_hosts".into())
        } else {
            ConnectDecision::Continue
        }
    }

    /// Nothing here reads the body except DKIM body hashing, so the body is hashed as it
    /// arrives and never stored.
    /// With trusted upstream results DKIM is not verified here: no body is needed at all.
    fn wants_body(snap: &Runtime) -> bool {
        !snap.config.trusts_upstream()
    }

    /// With trusted upstream results DKIM is not verified here and nothing is hashed.
    fn body_plan(
        snap: &Runtime,
        _env: &Envelope,
        _headers: &[HeaderField],
        header_block: &[u8],
    ) -> BodyPlan {
        let hashes = if snap.config.trusts_upstream() {
            Vec::new()
        } else {
            chassis::dkimparse::body_specs(
                header_block,
                crate::policy::evaluate::MAX_DKIM_SIGNATURES,
            )
        };
        BodyPlan {
            keep_body: false,
            hashes,
        }
    }

    async fn on_message(snap: Arc<Runtime>, env: Envelope, msg: Message) -> Verdict {
        evaluate(snap, env, msg).await
    }

    fn deadline(snap: &Runtime) -> Duration {
        snap.config.message_timeout + Duration::from_secs(2)
    }
}
