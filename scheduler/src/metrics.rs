//! Prometheus metrics of the run loop, and the HTTP endpoint that serves them (`--metrics ADDR`).
//!
//! - `casement_reboot_invocations_total{policy,outcome}`: `reboot` invocations by how they ended
//!   (`accepted`, `already_done`, `refused`, `offline`, `error`).
//! - `casement_reboots_total{policy,result}`: reboots seen through (`completed`, `failed`).
//! - `casement_reboots_in_flight{policy}`: devices invoked or rebooting now.
//! - `casement_paused_policies`: policies with an occurrence paused by the failure budget.
//! - `casement_tick_duration_seconds`: how long each pass of the loop took (summary: sum, count)
//!   and `casement_last_tick_duration_seconds`.
//! - `casement_hub_calls_total{op,status}`: the loop's calls to the hub by operation (`query`,
//!   `twin_read`, `method`) and HTTP status (`200`, `429`, `404`, …; `error` when no status came
//!   back) — 429s show how close the loop runs to the tier's quotas.
//! - `casement_query_pages_per_pass`: candidate query pages read in each pass (summary: sum,
//!   count) and `casement_query_pages_last_pass`, `casement_query_pages_max_pass`: flat in the
//!   fleet size, bounded by what a pass can start.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The counters and gauges; shared between the loop and the endpoint.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Values>,
}

#[derive(Debug, Default)]
struct Values {
    invocations: BTreeMap<(String, &'static str), u64>,
    reboots: BTreeMap<(String, &'static str), u64>,
    in_flight: BTreeMap<String, u64>,
    paused: BTreeMap<String, bool>,
    tick_sum: f64,
    tick_count: u64,
    tick_last: f64,
    hub_calls: BTreeMap<(&'static str, String), u64>,
    pages_sum: u64,
    pages_count: u64,
    pages_last: u64,
    pages_max: u64,
}

/// Escapes a label value for the text exposition format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// New, all zero.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn values(&self) -> std::sync::MutexGuard<'_, Values> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts an invocation outcome (`accepted`, `already_done`, `refused`, `offline`, `error`).
    pub fn invocation(&self, policy: &str, outcome: &'static str) {
        *self
            .values()
            .invocations
            .entry((policy.to_owned(), outcome))
            .or_default() += 1;
    }

    /// Counts a reboot seen through (`completed` or `failed`).
    pub fn reboot(&self, policy: &str, result: &'static str) {
        *self
            .values()
            .reboots
            .entry((policy.to_owned(), result))
            .or_default() += 1;
    }

    /// Sets a policy's in-flight gauge and paused flag.
    pub fn policy_state(&self, policy: &str, in_flight: u32, paused: bool) {
        let mut v = self.values();
        v.in_flight.insert(policy.to_owned(), u64::from(in_flight));
        v.paused.insert(policy.to_owned(), paused);
    }

    /// Forgets a policy's gauges (it was removed from the policy files).
    pub fn forget_policy(&self, policy: &str) {
        let mut v = self.values();
        v.in_flight.remove(policy);
        v.paused.remove(policy);
    }

    /// Records a pass of the loop.
    pub fn tick(&self, took: Duration) {
        let mut v = self.values();
        let secs = took.as_secs_f64();
        v.tick_sum += secs;
        v.tick_count += 1;
        v.tick_last = secs;
    }

    /// Counts a call to the hub: `op` is `query`, `twin_read` or `method`; `status` the HTTP
    /// status, or `None` when none came back.
    pub fn hub_call(&self, op: &'static str, status: Option<u16>) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        *self.values().hub_calls.entry((op, status)).or_default() += 1;
    }

    /// Calls counted for (op, status).
    pub fn hub_calls(&self, op: &'static str, status: &str) -> u64 {
        self.values()
            .hub_calls
            .get(&(op, status.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Records the query pages one pass read.
    pub fn pass_pages(&self, pages: u64) {
        let mut v = self.values();
        v.pages_sum += pages;
        v.pages_count += 1;
        v.pages_last = pages;
        v.pages_max = v.pages_max.max(pages);
    }

    /// Seconds spent in passes, and passes.
    pub fn pass_seconds(&self) -> (f64, u64) {
        let v = self.values();
        (v.tick_sum, v.tick_count)
    }

    /// Candidate query pages over all passes, passes, and the most in one pass.
    pub fn pages_per_pass(&self) -> (u64, u64, u64) {
        let v = self.values();
        (v.pages_sum, v.pages_count, v.pages_max)
    }

    /// Invocations counted for (policy, outcome).
    pub fn invocations(&self, policy: &str, outcome: &'static str) -> u64 {
        self.values()
            .invocations
            .get(&(policy.to_owned(), outcome))
            .copied()
            .unwrap_or(0)
    }

    /// Reboots seen through for (policy, result).
    pub fn reboots(&self, policy: &str, result: &'static str) -> u64 {
        self.values()
            .reboots
            .get(&(policy.to_owned(), result))
            .copied()
            .unwrap_or(0)
    }

    /// Invocations counted for a policy, all outcomes.
    pub fn invocations_total(&self, policy: &str) -> u64 {
        self.values()
            .invocations
            .iter()
            .filter(|((p, _), _)| p == policy)
            .map(|(_, n)| n)
            .sum()
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let v = self.values();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP casement_reboot_invocations_total reboot direct-method invocations by outcome.\n# TYPE casement_reboot_invocations_total counter"
        );
        for ((policy, outcome), n) in &v.invocations {
            let _ = writeln!(
                out,
                "casement_reboot_invocations_total{{policy=\"{}\",outcome=\"{outcome}\"}} {n}",
                label(policy)
            );
        }
        let _ = writeln!(
            out,
            "# HELP casement_reboots_total Reboots seen through, by result.\n# TYPE casement_reboots_total counter"
        );
        for ((policy, result), n) in &v.reboots {
            let _ = writeln!(
                out,
                "casement_reboots_total{{policy=\"{}\",result=\"{result}\"}} {n}",
                label(policy)
            );
        }
        let _ = writeln!(
            out,
            "# HELP casement_reboots_in_flight Devices invoked or rebooting now.\n# TYPE casement_reboots_in_flight gauge"
        );
        for (policy, n) in &v.in_flight {
            let _ = writeln!(
                out,
                "casement_reboots_in_flight{{policy=\"{}\"}} {n}",
                label(policy)
            );
        }
        let paused = v.paused.values().filter(|p| **p).count();
        let _ = writeln!(
            out,
            "# HELP casement_paused_policies Policies with a window paused by the failure budget.\n# TYPE casement_paused_policies gauge\ncasement_paused_policies {paused}"
        );
        let _ = writeln!(
            out,
            "# HELP casement_tick_duration_seconds Duration of one pass of the run loop.\n# TYPE casement_tick_duration_seconds summary\ncasement_tick_duration_seconds_sum {}\ncasement_tick_duration_seconds_count {}",
            v.tick_sum, v.tick_count
        );
        let _ = writeln!(
            out,
            "# HELP casement_last_tick_duration_seconds Duration of the last pass.\n# TYPE casement_last_tick_duration_seconds gauge\ncasement_last_tick_duration_seconds {}",
            v.tick_last
        );
        let _ = writeln!(
            out,
            "# HELP casement_hub_calls_total Calls the run loop made to the hub, by operation and HTTP status.\n# TYPE casement_hub_calls_total counter"
        );
        for ((op, status), n) in &v.hub_calls {
            let _ = writeln!(
                out,
                "casement_hub_calls_total{{op=\"{op}\",status=\"{}\"}} {n}",
                label(status)
            );
        }
        let _ = writeln!(
            out,
            "# HELP casement_query_pages_per_pass Candidate query pages read per pass.\n# TYPE casement_query_pages_per_pass summary\ncasement_query_pages_per_pass_sum {}\ncasement_query_pages_per_pass_count {}",
            v.pages_sum, v.pages_count
        );
        let _ = writeln!(
            out,
            "# HELP casement_query_pages_last_pass Candidate query pages read by the last pass.\n# TYPE casement_query_pages_last_pass gauge\ncasement_query_pages_last_pass {}",
            v.pages_last
        );
        let _ = writeln!(
            out,
            "# HELP casement_query_pages_max_pass Most candidate query pages read by one pass.\n# TYPE casement_query_pages_max_pass gauge\ncasement_query_pages_max_pass {}",
            v.pages_max
        );
        out
    }
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}

/// Binds `addr` and serves `GET /metrics` until `shutdown` completes. Returns the bound address
/// (port 0 picks one) and the server task.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(metrics);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_prometheus_text_format() {
        let m = Metrics::new();
        m.invocation("gw", "accepted");
        m.invocation("gw", "accepted");
        m.invocation("gw", "offline");
        m.reboot("gw", "completed");
        m.policy_state("gw", 3, true);
        m.policy_state("we\"ird", 0, false);
        m.tick(Duration::from_millis(250));
        m.hub_call("method", Some(429));
        m.hub_call("method", Some(429));
        m.hub_call("query", None);
        m.pass_pages(1);
        m.pass_pages(3);
        let text = m.render();
        assert!(text.contains("casement_hub_calls_total{op=\"method\",status=\"429\"} 2"));
        assert!(text.contains("casement_hub_calls_total{op=\"query\",status=\"error\"} 1"));
        assert!(text.contains("casement_query_pages_per_pass_sum 4"));
        assert!(text.contains("casement_query_pages_per_pass_count 2"));
        assert!(text.contains("casement_query_pages_last_pass 3"));
        assert!(text.contains("casement_query_pages_max_pass 3"));
        assert_eq!(m.hub_calls("method", "429"), 2);
        assert_eq!(m.pages_per_pass(), (4, 2, 3));
        assert!(
            text.contains(
                "casement_reboot_invocations_total{policy=\"gw\",outcome=\"accepted\"} 2"
            )
        );
        assert!(text.contains("casement_reboots_total{policy=\"gw\",result=\"completed\"} 1"));
        assert!(text.contains("casement_reboots_in_flight{policy=\"gw\"} 3"));
        assert!(text.contains("casement_reboots_in_flight{policy=\"we\\\"ird\"} 0"));
        assert!(text.contains("casement_paused_policies 1"));
        assert!(text.contains("casement_tick_duration_seconds_count 1"));
        assert!(text.contains("casement_tick_duration_seconds_sum 0.25"));
        assert_eq!(m.invocations_total("gw"), 3);
        assert_eq!(m.invocations("gw", "offline"), 1);
        assert_eq!(m.reboots("gw", "completed"), 1);
        assert_eq!(m.reboots("gw", "failed"), 0);
    }

    #[tokio::test]
    async fn the_endpoint_serves_metrics_and_stops_on_shutdown() {
        casement_client::ensure_crypto_provider();
        let m = Metrics::new();
        m.invocation("gw", "refused");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), m.clone(), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
        let body = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("outcome=\"refused\"} 1"), "{body}");
        let _ = tx.send(());
        task.await.unwrap();
    }
}
