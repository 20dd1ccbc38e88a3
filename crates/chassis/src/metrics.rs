//! Prometheus metrics for both daemons, served as text on an optional HTTP address. One registry
//! per process; the families cover what operators alert on: verdicts and actions, results per
//! method, signatures added, sessions, evaluation and DNS latency, reloads.

use crate::envelope::Envelope;
use crate::verdict::{Action, HeaderEdit, Verdict};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::OnceLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub method: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignatureLabel {
    pub domain: String,
    pub selector: String,
    pub algorithm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Every metric family.
pub struct Metrics {
    pub messages: Family<ActionLabel, Counter>,
    pub results: Family<ResultLabel, Counter>,
    pub signatures: Family<SignatureLabel, Counter>,
    pub sessions_active: Gauge,
    pub evaluation_seconds: Histogram,
    pub dns_seconds: Histogram,
    pub dns_errors: Counter,
    pub reloads: Family<OutcomeLabel, Counter>,
    /// Messages the history store could not record (dmarc-milter): a lost report row, or a
    /// tempfail, depending on `[actions] store_failure`.
    pub store_failures: Counter,
    registry: Registry,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("authmilter");
        let messages = Family::<ActionLabel, Counter>::default();
        registry.register("messages", "Messages by final action", messages.clone());
        let results = Family::<ResultLabel, Counter>::default();
        registry.register(
            "results",
            "Authentication results by method and result",
            results.clone(),
        );
        let signatures = Family::<SignatureLabel, Counter>::default();
        registry.register(
            "signatures_added",
            "DKIM signatures added",
            signatures.clone(),
        );
        let sessions_active = Gauge::default();
        registry.register(
            "sessions_active",
            "Milter connections open now",
            sessions_active.clone(),
        );
        let evaluation_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "evaluation_seconds",
            "Time to decide one message",
            evaluation_seconds.clone(),
        );
        let dns_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "dns_seconds",
            "Time spent in DNS work for one message",
            dns_seconds.clone(),
        );
        let dns_errors = Counter::default();
        registry.register(
            "dns_errors",
            "Messages whose DNS work failed or timed out",
            dns_errors.clone(),
        );
        let reloads = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "reloads",
            "Configuration reloads by outcome",
            reloads.clone(),
        );
        let store_failures = Counter::default();
        registry.register(
            "store_failures",
            "Messages the history store could not record",
            store_failures.clone(),
        );
        Self {
            store_failures,
            messages,
            results,
            signatures,
            sessions_active,
            evaluation_seconds,
            dns_seconds,
            dns_errors,
            reloads,
            registry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn count_result(&self, method: &str, result: &str) {
        self.results
            .get_or_create(&ResultLabel {
                method: method.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn count_action(&self, action: &str) {
        self.messages
            .get_or_create(&ActionLabel {
                action: action.into(),
            })
            .inc();
    }
}

/// A tag's value in a DKIM-Signature header value.
fn sig_tag<'a>(value: &'a str, tag: &str) -> &'a str {
    value
        .split(';')
        .filter_map(|t| t.split_once('='))
        .find(|(k, _)| k.trim() == tag)
        .map(|(_, v)| v.trim())
        .unwrap_or("")
}

/// Counts a message's results, signatures and action, and logs one structured `verdict` event
/// (a JSON object per message when logging as JSON; filtered out of text logs).
pub fn record_verdict(env: &Envelope, verdict: &Verdict) {
    let m = metrics();
    let mut results = Vec::new();
    let mut signatures = Vec::new();
    if let Some(ar) = &verdict.results {
        for r in &ar.results {
            m.count_result(&r.method, &r.result);
            results.push(
                format!(
                    "{}={} {}",
                    r.method,
                    r.result,
                    r.prop("header.d").unwrap_or("")
                )
                .trim()
                .to_string(),
            );
        }
    }
    for edit in &verdict.edits {
        if let HeaderEdit::Prepend { name, value } = edit {
            if name == "DKIM-Signature" {
                let (d, s, a) = (
                    sig_tag(value, "d"),
                    sig_tag(value, "s"),
                    sig_tag(value, "a"),
                );
                m.signatures
                    .get_or_create(&SignatureLabel {
                        domain: d.into(),
                        selector: s.into(),
                        algorithm: a.into(),
                    })
                    .inc();
                signatures.push(format!("d={d} s={s} a={a}"));
            }
        }
    }
    let action = match &verdict.action {
        Action::Accept => "accept".to_string(),
        Action::Reject(r) => format!("reject {r}"),
        Action::Tempfail(r) => format!("tempfail {r}"),
        Action::Discard => "discard".to_string(),
        Action::Quarantine(why) => format!("quarantine {why}"),
    };
    tracing::info!(
        target: "verdict",
        queue_id = env.queue_id(),
        client = %env.client_label(),
        mail_from = %env.mail_from,
        results = ?results,
        signatures_added = ?signatures,
        action = %action,
        "message verdict"
    );
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// Serves `GET /metrics` on `addr` until the task is dropped. A deliberately tiny HTTP/1.0
/// responder: one request per connection, no keep-alive, bounded request size and time.
pub async fn serve(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut buf),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let request = String::from_utf8_lossy(&buf[..n]);
                let response = if request.starts_with("GET /metrics") {
                    let body = metrics().render();
                    format!(
                        "HTTP/1.0 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
                };
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_appear_in_the_exposition() {
        metrics().count_action("accept");
        metrics().count_result("dkim", "pass");
        let addr = serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
        assert!(
            body.contains("authmilter_messages_total{action=\"accept\"}"),
            "{body}"
        );
        assert!(
            body.contains("authmilter_results_total{method=\"dkim\",result=\"pass\"}"),
            "{body}"
        );
    }
}
