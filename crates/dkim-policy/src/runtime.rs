//! What a session works with: the validated configuration plus the live resources built from
//! it (resolver, key cache). One `Runtime` is shared by every session that started under it; a
//! reload builds a new one and sessions in flight keep theirs. It is dkim-milter's
//! [`Policy`]: every front end drives it the same way.

use crate::config::Config;
use crate::policy::decide::{decide, Decision};
use chassis::envelope::Envelope;
use chassis::message::{BodyPlan, HeaderField, Message};
use chassis::policy::{ConnectDecision, HeadersPlan, Policy};
use chassis::resources::Resources;
use chassis::verdict::Verdict;
use std::sync::Arc;
use std::time::Duration;

pub struct Runtime {
    pub config: Config,
    /// Resolver, host name and parsed-key cache, as both daemons build them.
    pub res: Resources,
}

impl Runtime {
    pub fn new(config: Config) -> Result<Runtime, String> {
        let res = Resources::new(&config.resolver)?;
        Ok(Runtime { config, res })
    }
}

impl Policy for Runtime {
    const NAME: &'static str = "dkim-milter";
    const DEFAULT_CONFIG: &'static str = "/etc/authmilter/dkim-milter.toml";
    type Config = Config;
    /// The sign/verify/skip decision, made once at end of headers.
    type Carry = Decision;
    /// Signing and verifying look at the client, AUTH and the listener, never at HELO or the
    /// recipients.
    const FACTS: chassis::envelope::Facts = chassis::envelope::Facts {
        helo: false,
        mail_from: true,
        recipients: false,
    };

    /// MAIL FROM only matters to `[[arc.seal]]` rules (their `senders`); signing and
    /// verifying never read it.
    fn facts(&self) -> chassis::envelope::Facts {
        chassis::envelope::Facts {
            mail_from: !self.config.arc.seal.is_empty(),
            ..Self::FACTS
        }
    }

    fn describe(cfg: &Config) -> String {
        format!(
            "{} key(s), {} signing rule(s)",
            cfg.keys.len(),
            cfg.signing_table.rules.len()
        )
    }

    fn build(cfg: Config) -> Result<Self, String> {
        Runtime::new(cfg)
    }

    fn config(&self) -> &Config {
        &self.config
    }

    fn wanted_attributes(&self) -> Vec<String> {
        self.config
            .macro_list
            .iter()
            .map(|m| m.name.clone())
            .collect()
    }

    fn configured_authserv_id(&self) -> Option<&str> {
        self.config.authserv_id.as_deref()
    }

    fn on_connect(&self, env: &Envelope) -> ConnectDecision {
        ConnectDecision::unless_listed(&self.config.peer_list, "peer_list", env)
    }

    /// Signing needs the body (mail-auth's signer reads the whole message); verifying needs only
    /// the body hashes of the signatures present (DKIM and the newest ARC-Message-Signature),
    /// computed as the body arrives, so a message that is only verified is never stored,
    /// whatever its size. ARC sealing needs the body as signing does.
    fn plan(
        &self,
        env: &Envelope,
        headers: &[HeaderField],
        header_block: &[u8],
    ) -> HeadersPlan<Decision> {
        let cfg = &self.config;
        let decision = decide(cfg, env, headers);
        // ARC sealing signs the body (the ARC-Message-Signature), so it keeps it.
        let sealing = cfg.arc.rule_for(env, headers).is_some();
        let body = match &decision {
            Decision::Sign { .. } => BodyPlan::default(),
            Decision::Verify { .. } if sealing => BodyPlan {
                keep_body: true,
                hashes: chassis::dkimparse::body_specs(header_block, cfg.max_signatures_to_verify),
            },
            Decision::Verify { .. } => BodyPlan {
                keep_body: false,
                hashes: chassis::dkimparse::body_specs(header_block, cfg.max_signatures_to_verify),
            },
            Decision::Skip(_) => BodyPlan {
                keep_body: false,
                hashes: Vec::new(),
            },
        };
        HeadersPlan {
            body,
            carry: decision,
        }
    }

    async fn evaluate(
        self: Arc<Self>,
        env: Envelope,
        msg: Message,
        carry: Option<Decision>,
    ) -> Verdict {
        crate::policy::evaluate::evaluate(&self, &env, &msg, carry).await
    }

    fn deadline(&self) -> Duration {
        self.config.message_timeout + Duration::from_secs(2)
    }
}
