//! dkim-milter as a chassis [`Filter`]: connection screening (PeerList) and the per-message
//! policy, with the configuration snapshot taken once per connection.

use crate::policy::decide::{decide, Decision};
use crate::policy::evaluate::evaluate;
use crate::runtime::Runtime;
use chassis::envelope::Envelope;
use chassis::message::{BodyPlan, HeaderField, Limits, Message};
use chassis::milter::Snapshots;
use chassis::milter::{ConnectDecision, Filter};
use chassis::verdict::Verdict;
use std::sync::Arc;
use std::time::Duration;

pub struct DkimFilter {
    current: Snapshots<Runtime>,
}

impl DkimFilter {
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

impl Filter for DkimFilter {
    type Snapshot = Runtime;

    fn snapshot(&self) -> Arc<Runtime> {
        self.current.current()
    }

    fn limits(snap: &Runtime) -> Limits {
        snap.config.limits.clone()
    }

    fn extra_macros(snap: &Runtime) -> Vec<String> {
        snap.config
            .macro_list
            .iter()
            .map(|m| m.name.clone())
            .collect()
    }

    fn on_connect(snap: &Runtime, env: &Envelope) -> ConnectDecision {
        let name = (!env.client_name.is_empty()).then_some(env.client_name.as_str());
        if snap.config.peer_list.matches(env.client_ip, name) {
            ConnectDecision::Ignore("listed in peer_list".into())
        } else {
            ConnectDecision::Continue
        }
    }

    /// Signing needs the body (mail-auth's signer reads the whole message); verifying needs only
    /// the body hashes of the signatures present, computed as the body arrives, so a message
    /// that is only verified is never stored, whatever its size.
    fn body_plan(
        snap: &Runtime,
        env: &Envelope,
        headers: &[HeaderField],
        header_block: &[u8],
    ) -> BodyPlan {
        let cfg = &snap.config;
        match decide(cfg, env, headers) {
            Decision::Sign { .. } => BodyPlan::default(),
            Decision::Verify { .. } => BodyPlan {
                keep_body: false,
                hashes: chassis::dkimparse::body_specs(header_block, cfg.max_signatures_to_verify),
            },
            Decision::Skip(_) => BodyPlan {
                keep_body: false,
                hashes: Vec::new(),
            },
        }
    }

    async fn on_message(snap: Arc<Runtime>, env: Envelope, msg: Message) -> Verdict {
        evaluate(&snap, &env, &msg).await
    }

    fn deadline(snap: &Runtime) -> Duration {
        snap.config.message_timeout + Duration::from_secs(2)
    }
}
