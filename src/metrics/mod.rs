//! Prometheus metrics: one registry owned by the app, one `Metrics` value
//! handed to the layers. Label values come only from fixed sets (route
//! templates, methods, status classes, results, MCP methods, decisions):
//! never a user, client, token, raw path or session.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub mod audit;
pub mod layer;

const NAMESPACE: &str = "mcp_oauth_proxy";

/// Latency buckets from 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Policy evaluation: microseconds to milliseconds.
const POLICY_BUCKETS: [f64; 10] = [
    0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.01, 0.05,
];

/// The MCP methods counted by name; anything else is "other".
const MCP_METHODS: [&str; 16] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/list",
    "tasks/cancel",
];

pub struct Metrics {
    registry: Registry,
    /// MCP tool names that may appear as label values.
    tools: Vec<String>,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub registrations: IntCounterVec,
    pub authorizations: IntCounterVec,
    pub consents: IntCounterVec,
    pub callbacks: IntCounterVec,
    pub token_grants: IntCounterVec,
    pub revocations: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub token_cache_requests: IntCounterVec,
    pub token_cache_evictions: IntCounterVec,
    pub token_cache_entries: IntGauge,
    pub policy_decisions: IntCounterVec,
    pub policy_duration: prometheus::Histogram,
    pub policy_reloads: IntCounterVec,
    pub downstream_requests: IntCounterVec,
    pub downstream_duration: HistogramVec,
    pub downstream_connect_errors: IntCounter,
    pub downstream_timeouts: IntCounter,
    pub sse_streams_open: IntGaugeVec,
    pub sse_events: IntCounterVec,
    pub mcp_requests: IntCounterVec,
    pub store_duration: HistogramVec,
    pub store_errors: IntCounterVec,
    pub rate_limited: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace(NAMESPACE), labels)
        .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help)
            .namespace(NAMESPACE)
            .buckets(buckets.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
    let _ = registry.register(Box::new(h.clone()));
    h
}

impl Metrics {
    pub fn new(tools: &[String]) -> Arc<Metrics> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let r = &registry;
        let build = IntGaugeVec::new(
            Opts::new("build_info", "The running version (always 1)").namespace(NAMESPACE),
            &["version"],
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let _ = r.register(Box::new(build));
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(Opts::new(name, help).namespace(NAMESPACE))
                .unwrap_or_else(|e| unreachable!("{e}"));
            let _ = r.register(Box::new(g.clone()));
            g
        };
        let plain_counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(name, help).namespace(NAMESPACE))
                .unwrap_or_else(|e| unreachable!("{e}"));
            let _ = r.register(Box::new(c.clone()));
            c
        };
        let policy_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "policy_evaluation_seconds",
                "Time to run the policy's authorize() for one request",
            )
            .namespace(NAMESPACE)
            .buckets(POLICY_BUCKETS.to_vec()),
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let _ = r.register(Box::new(policy_duration.clone()));
        let sse_streams_open = IntGaugeVec::new(
            Opts::new("sse_streams_open", "Event streams open to clients").namespace(NAMESPACE),
            &["route"],
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let _ = r.register(Box::new(sse_streams_open.clone()));
        let metrics = Arc::new(Metrics {
            tools: tools.to_vec(),
            http_requests: counter(
                r,
                "http_requests_total",
                "HTTP requests by route template, method and status class",
                &["route", "method", "status_class"],
            ),
            http_duration: histogram(
                r,
                "http_request_duration_seconds",
                "Time to response headers by route template",
                &["route", "method"],
                &LATENCY_BUCKETS,
            ),
            registrations: counter(
                r,
                "registrations_total",
                "Dynamic client registrations by result",
                &["result"],
            ),
            authorizations: counter(
                r,
                "authorizations_total",
                "Authorization requests by outcome",
                &["result"],
            ),
            consents: counter(r, "consents_total", "Consent form answers", &["decision"]),
            callbacks: counter(
                r,
                "callbacks_total",
                "Returns from the identity provider by result",
                &["result"],
            ),
            token_grants: counter(
                r,
                "token_grants_total",
                "Token endpoint requests by grant type and result",
                &["grant_type", "result"],
            ),
            revocations: counter(
                r,
                "revocations_total",
                "Token revocation requests by result",
                &["result"],
            ),
            upstream_duration: histogram(
                r,
                "upstream_request_duration_seconds",
                "Calls to the identity provider",
                &["operation", "result"],
                &LATENCY_BUCKETS,
            ),
            upstream_errors: counter(
                r,
                "upstream_errors_total",
                "Failed calls to the identity provider",
                &["operation"],
            ),
            token_cache_requests: counter(
                r,
                "token_cache_requests_total",
                "Token cache lookups by result",
                &["result"],
            ),
            token_cache_evictions: counter(
                r,
                "token_cache_evictions_total",
                "Token cache entries removed, by cause",
                &["cause"],
            ),
            token_cache_entries: gauge("token_cache_entries", "Entries in the token cache"),
            policy_decisions: counter(
                r,
                "policy_decisions_total",
                "Policy decisions on MCP requests",
                &["decision"],
            ),
            policy_duration,
            policy_reloads: counter(
                r,
                "policy_reloads_total",
                "Policy reloads by result",
                &["result"],
            ),
            downstream_requests: counter(
                r,
                "downstream_requests_total",
                "Requests forwarded to the MCP server by route and status class",
                &["route", "status_class"],
            ),
            downstream_duration: histogram(
                r,
                "downstream_request_duration_seconds",
                "Time to the MCP server's response headers",
                &["route"],
                &LATENCY_BUCKETS,
            ),
            downstream_connect_errors: plain_counter(
                "downstream_connect_errors_total",
                "Failures to reach the MCP server",
            ),
            downstream_timeouts: plain_counter(
                "downstream_timeouts_total",
                "MCP server answers that took too long",
            ),
            sse_streams_open,
            sse_events: counter(
                r,
                "sse_events_total",
                "Events forwarded on event streams",
                &["route"],
            ),
            mcp_requests: counter(
                r,
                "mcp_requests_total",
                "MCP requests by method, listed tool and decision",
                &["method", "tool", "decision"],
            ),
            store_duration: histogram(
                r,
                "store_operation_duration_seconds",
                "Store operations",
                &["operation"],
                &LATENCY_BUCKETS,
            ),
            store_errors: counter(
                r,
                "store_errors_total",
                "Failed store operations",
                &["operation"],
            ),
            rate_limited: counter(
                r,
                "rate_limited_total",
                "Requests refused with 429 by a [limits] table",
                &["limit"],
            ),
            registry,
        });
        metrics.zero_fixed_series();
        metrics
    }

    /// Creates every series whose labels come from a small fixed set, at 0,
    /// so the first event shows in `rate()` and alerts see "0", not "no data".
    fn zero_fixed_series(&self) {
        for result in [
            "success",
            "invalid_redirect_uri",
            "invalid_client_metadata",
            "temporarily_unavailable",
            "server_error",
        ] {
            self.registrations.with_label_values(&[result]);
        }
        for result in [
            "consent_required",
            "consent_remembered",
            "rejected",
            "error_redirect",
        ] {
            self.authorizations.with_label_values(&[result]);
        }
        for decision in ["approve", "deny", "invalid"] {
            self.consents.with_label_values(&[decision]);
        }
        for result in [
            "success",
            "invalid_state",
            "provider_error",
            "token_exchange_failed",
            "id_token_invalid",
            "login_denied",
            "error",
        ] {
            self.callbacks.with_label_values(&[result]);
        }
        for grant_type in ["authorization_code", "refresh_token"] {
            for result in [
                "success",
                "invalid_grant",
                "invalid_client",
                "invalid_request",
                "temporarily_unavailable",
            ] {
                self.token_grants.with_label_values(&[grant_type, result]);
            }
        }
        for result in ["success", "invalid_client", "invalid_request"] {
            self.revocations.with_label_values(&[result]);
        }
        for operation in ["discovery", "token", "refresh", "userinfo"] {
            self.upstream_errors.with_label_values(&[operation]);
        }
        for result in ["hit", "miss", "negative_hit"] {
            self.token_cache_requests.with_label_values(&[result]);
        }
        for cause in ["expired", "explicit", "replaced", "size"] {
            self.token_cache_evictions.with_label_values(&[cause]);
        }
        for decision in ["allow", "deny"] {
            self.policy_decisions.with_label_values(&[decision]);
        }
        for result in ["success", "failure"] {
            self.policy_reloads.with_label_values(&[result]);
        }
        for operation in [
            "get",
            "put",
            "insert_new",
            "take",
            "compare_and_swap",
            "delete",
            "list",
            "purge_expired",
            "ping",
        ] {
            self.store_errors.with_label_values(&[operation]);
        }
        for route in ["/mcp", "/sse", "/sse/message"] {
            self.sse_streams_open.with_label_values(&[route]);
        }
        for group in crate::config::LimitGroup::ALL {
            self.rate_limited.with_label_values(&[group.name()]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buffer) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// An MCP method as a label value.
    pub fn mcp_method_label(method: Option<&str>) -> &'static str {
        match method {
            None => "none",
            Some(m) if m.starts_with("notifications/") => "notification",
            Some(m) => MCP_METHODS
                .iter()
                .find(|known| **known == m)
                .copied()
                .unwrap_or("other"),
        }
    }

    /// A tool name as a label value: only names listed in `metrics.tools`.
    pub fn tool_label<'a>(&'a self, tool: Option<&str>) -> &'a str {
        match tool {
            None => "",
            Some(t) => self
                .tools
                .iter()
                .find(|listed| *listed == t)
                .map(String::as_str)
                .unwrap_or("other"),
        }
    }

    pub fn observe_store(&self, operation: &'static str, elapsed: Duration, ok: bool) {
        self.store_duration
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.store_errors.with_label_values(&[operation]).inc();
        }
    }
}

/// "2xx" … "5xx".
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_come_from_fixed_sets() {
        let m = Metrics::new(&["whoami".into()]);
        assert_eq!(Metrics::mcp_method_label(Some("tools/call")), "tools/call");
        assert_eq!(
            Metrics::mcp_method_label(Some("x/evil-user@example.com")),
            "other"
        );
        assert_eq!(
            Metrics::mcp_method_label(Some("notifications/initialized")),
            "notification"
        );
        assert_eq!(m.tool_label(Some("whoami")), "whoami");
        assert_eq!(m.tool_label(Some("secret-customer-tool")), "other");
        let text = m.render();
        assert!(text.contains("mcp_oauth_proxy_build_info"));
    }
}
