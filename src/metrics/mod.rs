//! Prometheus metrics: one registry owned by the app, one `Metrics` value
//! handed to the layers. Label values come only from fixed sets (path
//! templates, methods, status classes, results, MCP methods, decisions) and
//! from the configuration (route names, listed tools, `[limits]` groups):
//! never a user, client, token, raw path or session. The MCP metrics carry
//! the configured route's name as `route` (`route.rs`); `http_requests_total`
//! keeps the matched path template as its `route`, which for MCP endpoints
//! is a configured path.

use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub(crate) mod audit;
pub(crate) mod labels;
pub(crate) mod layer;
mod recorders;
mod route;

pub(crate) use route::{EndpointMetrics, RouteMetrics};

use labels::*;

const NAMESPACE: &str = "mcp_oauth_proxy";

/// Latency buckets from 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Policy evaluation: microseconds to milliseconds.
const POLICY_BUCKETS: [f64; 10] = [
    0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.01, 0.05,
];

/// The registry and every metric one process records, handed to every
/// layer. With `metrics.enabled = false` (decided once when the app starts)
/// its recorders record nothing.
pub struct Metrics {
    registry: Registry,
    /// `metrics.enabled`: when false every recorder (`recorders.rs`) is a
    /// no-op (the one way metrics are turned off; callers never check).
    enabled: bool,
    /// MCP tool names that may appear as label values.
    tools: Arc<[String]>,
    /// The configured routes' series, created with the registry.
    routes: Vec<Arc<route::RouteSeries>>,
    pub(crate) http_requests: IntCounterVec,
    pub(crate) http_duration: HistogramVec,
    pub(crate) registrations: IntCounterVec,
    pub(crate) authorizations: IntCounterVec,
    pub(crate) consents: IntCounterVec,
    pub(crate) callbacks: IntCounterVec,
    pub(crate) token_grants: IntCounterVec,
    pub(crate) revocations: IntCounterVec,
    pub(crate) upstream_duration: HistogramVec,
    pub(crate) upstream_errors: IntCounterVec,
    pub(crate) token_cache_requests: IntCounterVec,
    /// `token_cache_requests`' series by result, each resolved when first
    /// counted: every authenticated request counts one, and a lookup by
    /// label values hashes them and takes a lock.
    pub(crate) token_cache_results: [OnceLock<IntCounter>; CacheResult::ALL.len()],
    pub(crate) token_cache_evictions: IntCounterVec,
    pub(crate) token_cache_entries: IntGauge,
    /// `policy_decisions_total{route,decision}`: the policy's verdicts on
    /// MCP requests, `allow` or `deny`, one per run (each call of a batch).
    pub policy_decisions: IntCounterVec,
    pub(crate) policy_duration: HistogramVec,
    pub(crate) policy_reloads: IntCounterVec,
    pub(crate) policy_shadow_disagreements: IntCounterVec,
    pub(crate) policy_shadow_errors: IntCounterVec,
    pub(crate) policy_observer_dropped: IntCounterVec,
    pub(crate) downstream_requests: IntCounterVec,
    pub(crate) downstream_duration: HistogramVec,
    pub(crate) downstream_connect_errors: IntCounterVec,
    pub(crate) downstream_timeouts: IntCounterVec,
    pub(crate) sse_streams_open: IntGaugeVec,
    pub(crate) sse_events: IntCounterVec,
    pub(crate) mcp_requests: IntCounterVec,
    pub(crate) store_duration: HistogramVec,
    pub(crate) store_errors: IntCounterVec,
    pub(crate) rate_limited: IntCounterVec,
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
    /// The metrics `[metrics]` asks for (recording, or not), with the
    /// configured routes' names as the only values of the `route` label.
    pub(crate) fn from_config<'a>(
        config: &crate::config::MetricsConfig,
        routes: impl IntoIterator<Item = &'a str>,
    ) -> Arc<Metrics> {
        Self::build(&config.tools, routes, config.enabled)
    }

    /// Recording metrics, with `tools` allowed as label values, for the
    /// default route.
    #[cfg(test)]
    pub(crate) fn new(tools: &[String]) -> Arc<Metrics> {
        Self::with_routes(tools, &[crate::config::DEFAULT_ROUTE])
    }

    /// Recording metrics for the routes named `routes`.
    #[cfg(test)]
    pub(crate) fn with_routes(tools: &[String], routes: &[&str]) -> Arc<Metrics> {
        Self::build(tools, routes.iter().copied(), true)
    }

    /// Metrics that record nothing (`metrics.enabled = false`).
    pub fn disabled() -> Arc<Metrics> {
        Self::build(&[], [], false)
    }

    /// Whether recorders record.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    // Long because it declares every metric, one field each; splitting it
    // would only scatter the list.
    fn build<'a>(
        tools: &[String],
        routes: impl IntoIterator<Item = &'a str>,
        enabled: bool,
    ) -> Arc<Metrics> {
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
        let sse_streams_open = IntGaugeVec::new(
            Opts::new("sse_streams_open", "Event streams open to clients").namespace(NAMESPACE),
            &["route", "endpoint"],
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let _ = r.register(Box::new(sse_streams_open.clone()));
        let mut metrics = Metrics {
            enabled,
            tools: tools.into(),
            routes: Vec::new(),
            // `route` here is the matched path template (an MCP route's
            // configured path, `unmatched` for any other): bounded by the
            // router, and named so before routes had names.
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
            token_cache_results: Default::default(),
            token_cache_entries: gauge("token_cache_entries", "Entries in the token cache"),
            policy_decisions: counter(
                r,
                "policy_decisions_total",
                "Policy decisions on MCP requests by route",
                &["route", "decision"],
            ),
            policy_duration: histogram(
                r,
                "policy_evaluation_seconds",
                "Time to run the policy's authorize() for one request, by route",
                &["route"],
                &POLICY_BUCKETS,
            ),
            policy_reloads: counter(
                r,
                "policy_reloads_total",
                "Policy reloads by route and result",
                &["route", "result"],
            ),
            policy_shadow_disagreements: counter(
                r,
                "policy_shadow_disagreements_total",
                "Decisions where the shadow policy disagrees with the enforced one, by route and kind",
                &["route", "kind"],
            ),
            policy_shadow_errors: counter(
                r,
                "policy_shadow_errors_total",
                "Shadow policy evaluations that failed (error, loop, deadline), by route",
                &["route"],
            ),
            policy_observer_dropped: counter(
                r,
                "policy_observer_dropped_total",
                "Decisions not logged or not shadowed because the queue was full, by route and queue",
                &["route", "queue"],
            ),
            downstream_requests: counter(
                r,
                "downstream_requests_total",
                "Requests forwarded to the MCP server by route, endpoint and status class",
                &["route", "endpoint", "status_class"],
            ),
            downstream_duration: histogram(
                r,
                "downstream_request_duration_seconds",
                "Time to the MCP server's response headers",
                &["route", "endpoint"],
                &LATENCY_BUCKETS,
            ),
            downstream_connect_errors: counter(
                r,
                "downstream_connect_errors_total",
                "Failures to reach the MCP server, by route",
                &["route"],
            ),
            downstream_timeouts: counter(
                r,
                "downstream_timeouts_total",
                "MCP server answers that took too long, by route",
                &["route"],
            ),
            sse_streams_open,
            sse_events: counter(
                r,
                "sse_events_total",
                "Events forwarded on event streams",
                &["route", "endpoint"],
            ),
            mcp_requests: counter(
                r,
                "mcp_requests_total",
                "MCP requests by route, method, listed tool and decision",
                &["route", "method", "tool", "decision"],
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
        };
        metrics.zero_fixed_series();
        for name in routes {
            // Configuration rejects a name twice; a repeat adds nothing.
            if !metrics.routes.iter().any(|r| r.name() == name) {
                let series = route::RouteSeries::new(&metrics, name);
                metrics.routes.push(Arc::new(series));
            }
        }
        Arc::new(metrics)
    }

    /// Creates every series whose labels come from a small fixed set, at 0,
    /// so the first event shows in `rate()` and alerts see "0", not "no data".
    fn zero_fixed_series(&self) {
        fn zero(vec: &IntCounterVec, values: impl IntoIterator<Item = &'static str>) {
            for value in values {
                vec.with_label_values(&[value]);
            }
        }
        zero(
            &self.registrations,
            RegistrationResult::ALL.iter().map(|v| v.as_str()),
        );
        zero(
            &self.authorizations,
            AuthorizationResult::ALL.iter().map(|v| v.as_str()),
        );
        zero(
            &self.consents,
            ConsentDecision::ALL.iter().map(|v| v.as_str()),
        );
        zero(
            &self.callbacks,
            CallbackResult::ALL.iter().map(|v| v.as_str()),
        );
        for grant_type in GrantType::ALL {
            for result in TokenResult::ALL {
                self.token_grants
                    .with_label_values(&[grant_type.as_str(), result.as_str()]);
            }
        }
        zero(
            &self.revocations,
            RevocationResult::ALL.iter().map(|v| v.as_str()),
        );
        zero(
            &self.upstream_errors,
            UpstreamOperation::ALL.iter().map(|v| v.as_str()),
        );
        zero(
            &self.token_cache_requests,
            CacheResult::ALL.iter().map(|v| v.as_str()),
        );
        zero(
            &self.token_cache_evictions,
            EvictionCause::ALL.iter().map(|v| v.as_str()),
        );
        zero(
            &self.store_errors,
            StoreOperation::ALL.iter().map(|v| v.as_str()),
        );
        zero(
            &self.rate_limited,
            crate::config::LimitGroup::ALL.iter().map(|g| g.name()),
        );
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_come_from_fixed_sets() {
        let m = Metrics::new(&["whoami".into()]);
        assert_eq!(labels::mcp_method(Some("tools/call")), "tools/call");
        assert_eq!(labels::mcp_method(Some("x/evil-user@example.com")), "other");
        assert_eq!(
            labels::mcp_method(Some("notifications/initialized")),
            "notification"
        );
        let route = m.route("default");
        let tool = |name| route.mcp_labels(None, name).tool_label(&m.tools);
        assert_eq!(tool(Some("whoami")), "whoami");
        assert_eq!(tool(Some("secret-customer-tool")), "other");
        assert_eq!(tool(None), "");
        let text = m.render();
        assert!(text.contains("mcp_oauth_proxy_build_info"));
    }
}
