//! Per-route series: the `route` label of the MCP metrics. Its values are
//! the configured route names and nothing else: each route's series are
//! resolved once, when the registry is built, into a `RouteSeries`, and the
//! route's layers keep a handle (`RouteMetrics`, `EndpointMetrics`) to it.
//! A name the configuration does not know gets a handle that records
//! nothing, so no request and no wiring mistake can add a label value.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge};

use super::labels::*;
use super::Metrics;

/// The series of one `(route, endpoint)` pair. Streams open are created at
/// zero; the others appear with their first event, as before routes had a
/// label, and are then reached without a label lookup.
struct EndpointSeries {
    streams_open: IntGauge,
    events: OnceLock<IntCounter>,
    duration: OnceLock<Histogram>,
    responses: [OnceLock<IntCounter>; STATUS_CLASSES.len()],
}

/// Every series of one configured route.
pub(crate) struct RouteSeries {
    name: Arc<str>,
    tools: Arc<[String]>,
    mcp_requests: IntCounterVec,
    /// The `mcp_requests` series requests have reached so far, by their
    /// labels: found again without prometheus' label lookup (SipHash of
    /// four values under its own lock: ~300 instructions a request in
    /// callgrind). Bounded like the labels: methods and tools are fixed
    /// sets, decisions `'static` names.
    mcp_counters: RwLock<HashMap<McpSeriesKey, IntCounter, foldhash::fast::RandomState>>,
    /// Indexed by `PolicyVerdict::index`.
    policy_decisions: [IntCounter; PolicyVerdict::ALL.len()],
    policy_duration: Histogram,
    /// Indexed by `ReloadResult::index`.
    policy_reloads: [IntCounter; ReloadResult::ALL.len()],
    /// Indexed by `ShadowDisagreement::index`.
    shadow_disagreements: [IntCounter; ShadowDisagreement::ALL.len()],
    shadow_errors: IntCounter,
    /// Indexed by `ObserverQueue::index`.
    observer_dropped: [IntCounter; ObserverQueue::ALL.len()],
    connect_errors: IntCounter,
    timeouts: IntCounter,
    downstream_requests: IntCounterVec,
    downstream_duration: HistogramVec,
    sse_events: IntCounterVec,
    /// Indexed by `McpEndpoint::index`.
    endpoints: [EndpointSeries; McpEndpoint::ALL.len()],
}

impl RouteSeries {
    /// Creates route `name`'s series in `metrics`' registry, at zero where
    /// an alert or the dashboard's `route` variable needs them before the
    /// first event.
    pub(super) fn new(metrics: &Metrics, name: &str) -> RouteSeries {
        let verdicts = std::array::from_fn(|i| {
            let verdict = PolicyVerdict::ALL[i].as_str();
            metrics.policy_decisions.with_label_values(&[name, verdict])
        });
        let reloads = std::array::from_fn(|i| {
            let result = ReloadResult::ALL[i].as_str();
            metrics.policy_reloads.with_label_values(&[name, result])
        });
        let disagreements = std::array::from_fn(|i| {
            let kind = ShadowDisagreement::ALL[i].as_str();
            metrics
                .policy_shadow_disagreements
                .with_label_values(&[name, kind])
        });
        let dropped = std::array::from_fn(|i| {
            let queue = ObserverQueue::ALL[i].as_str();
            metrics
                .policy_observer_dropped
                .with_label_values(&[name, queue])
        });
        // The series a route's first requests write (no body read yet:
        // method "none"), so `label_values(mcp_requests_total, route)` lists
        // every configured route from the start.
        for decision in McpDecision::ALL {
            metrics.mcp_requests.with_label_values(&[
                name,
                mcp_method(None),
                "",
                decision.as_str(),
            ]);
        }
        let endpoint = |endpoint: McpEndpoint| EndpointSeries {
            streams_open: metrics
                .sse_streams_open
                .with_label_values(&[name, endpoint.as_str()]),
            events: OnceLock::new(),
            duration: OnceLock::new(),
            responses: Default::default(),
        };
        RouteSeries {
            name: name.into(),
            tools: metrics.tools.clone(),
            mcp_requests: metrics.mcp_requests.clone(),
            mcp_counters: RwLock::default(),
            policy_decisions: verdicts,
            policy_duration: metrics.policy_duration.with_label_values(&[name]),
            policy_reloads: reloads,
            shadow_disagreements: disagreements,
            shadow_errors: metrics.policy_shadow_errors.with_label_values(&[name]),
            observer_dropped: dropped,
            connect_errors: metrics.downstream_connect_errors.with_label_values(&[name]),
            timeouts: metrics.downstream_timeouts.with_label_values(&[name]),
            downstream_requests: metrics.downstream_requests.clone(),
            downstream_duration: metrics.downstream_duration.clone(),
            sse_events: metrics.sse_events.clone(),
            endpoints: std::array::from_fn(|i| endpoint(McpEndpoint::ALL[i])),
        }
    }

    /// The route's name, its `route` label value.
    pub(super) fn name(&self) -> &str {
        &self.name
    }
}

/// The labels of an MCP request besides the route and the decision: the
/// method's label, and the tool (`None`: the request calls none;
/// `Some(None)`: one not in `metrics.tools`, labelled `other`; else its
/// place there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct McpLabels {
    method: &'static str,
    tool: Option<Option<usize>>,
}

impl McpLabels {
    /// The tool's label value: one of `tools` (`metrics.tools`), `other`,
    /// or empty when the request calls none.
    pub(super) fn tool_label<'a>(&self, tools: &'a [String]) -> &'a str {
        match self.tool {
            None => "",
            Some(listed) => listed
                .and_then(|at| tools.get(at))
                .map_or("other", String::as_str),
        }
    }
}

impl Default for McpLabels {
    /// A request whose body was not read: no method, no tool.
    fn default() -> Self {
        McpLabels {
            method: mcp_method(None),
            tool: None,
        }
    }
}

/// An `mcp_requests` series of a route. The `'static` labels are keyed by
/// where they are and their length, not hashed and compared as text: the
/// same address and length are the same text, and a label spelled by two
/// literals gets two keys, which resolve to the same series.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct McpSeriesKey {
    method: (usize, usize),
    tool: Option<Option<usize>>,
    decision: (usize, usize),
}

impl McpSeriesKey {
    fn new(labels: McpLabels, decision: &'static str) -> Self {
        let place = |label: &'static str| (label.as_ptr() as usize, label.len());
        McpSeriesKey {
            method: place(labels.method),
            tool: labels.tool,
            decision: place(decision),
        }
    }
}

/// One route's recorders. Cloning is one reference count; recording is a
/// few atomic adds (the MCP request counter, whose method, tool and
/// decision vary per request, is found in the route's own map first).
#[derive(Clone)]
pub(crate) struct RouteMetrics(Arc<RouteHandle>);

struct RouteHandle {
    /// The name asked for, configured or not (for logs).
    name: Arc<str>,
    /// `None`: metrics are off, or the route is not configured.
    series: Option<Arc<RouteSeries>>,
}

impl Metrics {
    /// The recorders of route `name`: its series when it is configured and
    /// metrics are on, otherwise recorders that record nothing (asking for
    /// an unknown route never creates a series).
    pub(crate) fn route(&self, name: &str) -> RouteMetrics {
        let series = if self.enabled {
            let series = self.routes.iter().find(|r| r.name() == name).cloned();
            if series.is_none() {
                tracing::warn!(route = name, "no metrics for a route the configuration does not name; its requests are not counted");
            }
            series
        } else {
            None
        };
        RouteMetrics(Arc::new(RouteHandle {
            name: name.into(),
            series,
        }))
    }
}

impl RouteMetrics {
    /// The route's name, as asked for.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.0.name
    }

    /// Whether anything is recorded.
    pub(crate) fn records(&self) -> bool {
        self.0.series.is_some()
    }

    /// The recorders of one of the route's endpoints.
    pub(crate) fn endpoint(&self, endpoint: McpEndpoint) -> EndpointMetrics {
        EndpointMetrics {
            route: self.clone(),
            endpoint,
        }
    }

    /// The labels an MCP request's method and tool are counted under:
    /// found once, where the call is read, so that the audit keeps two
    /// words rather than copies of the names.
    pub(crate) fn mcp_labels(&self, method: Option<&str>, tool: Option<&str>) -> McpLabels {
        let listed = |t: &str| {
            self.0
                .series
                .as_ref()
                .and_then(|s| s.tools.iter().position(|listed| listed == t))
        };
        McpLabels {
            method: mcp_method(method),
            tool: tool.map(listed),
        }
    }

    /// One MCP request, as the audit saw it.
    pub(crate) fn mcp_request(&self, labels: McpLabels, decision: &'static str) {
        let Some(s) = &self.0.series else {
            return;
        };
        let key = McpSeriesKey::new(labels, decision);
        let known = s
            .mcp_counters
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(counter) = known.get(&key) {
            counter.inc();
            return;
        }
        drop(known);
        let tool = labels.tool_label(&s.tools);
        let counter = s
            .mcp_requests
            .with_label_values(&[&s.name, labels.method, tool, decision]);
        counter.inc();
        s.mcp_counters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, counter);
    }

    /// A policy decision on an MCP request and the time it took.
    pub(crate) fn policy_decision(&self, verdict: PolicyVerdict, elapsed: Duration) {
        if let Some(s) = &self.0.series {
            s.policy_duration.observe(elapsed.as_secs_f64());
            s.policy_decisions[verdict.index()].inc();
        }
    }

    /// The shadow policy disagreed with the enforced one.
    pub(crate) fn shadow_disagreement(&self, kind: ShadowDisagreement) {
        if let Some(s) = &self.0.series {
            s.shadow_disagreements[kind.index()].inc();
        }
    }

    /// The shadow policy failed (error, loop, deadline).
    pub(crate) fn shadow_error(&self) {
        if let Some(s) = &self.0.series {
            s.shadow_errors.inc();
        }
    }

    /// A decision the decision log or the shadow had no room for.
    pub(crate) fn observer_dropped(&self, queue: ObserverQueue) {
        if let Some(s) = &self.0.series {
            s.observer_dropped[queue.index()].inc();
        }
    }

    /// A reload of the route's policy.
    pub(crate) fn policy_reload(&self, result: ReloadResult) {
        if let Some(s) = &self.0.series {
            s.policy_reloads[result.index()].inc();
        }
    }
}

/// The recorders of one endpoint of one route: the forwarder's and its
/// event streams'.
#[derive(Clone)]
pub(crate) struct EndpointMetrics {
    route: RouteMetrics,
    endpoint: McpEndpoint,
}

impl EndpointMetrics {
    fn series(&self) -> Option<(&RouteSeries, &EndpointSeries)> {
        let s = self.route.0.series.as_deref()?;
        Some((s, &s.endpoints[self.endpoint.index()]))
    }

    /// Whether anything is recorded.
    pub(crate) fn records(&self) -> bool {
        self.route.records()
    }

    /// A downstream answer (its headers).
    pub(crate) fn downstream_response(&self, status: u16, elapsed: Duration) {
        let Some((s, e)) = self.series() else { return };
        let class = status_class_index(status);
        let labels = [&*s.name, self.endpoint.as_str(), STATUS_CLASSES[class]];
        e.responses[class]
            .get_or_init(|| s.downstream_requests.with_label_values(&labels))
            .inc();
        e.duration
            .get_or_init(|| s.downstream_duration.with_label_values(&labels[..2]))
            .observe(elapsed.as_secs_f64());
    }

    /// The downstream could not be reached.
    pub(crate) fn downstream_connect_error(&self) {
        if let Some((s, _)) = self.series() {
            s.connect_errors.inc();
        }
    }

    /// The downstream took too long.
    pub(crate) fn downstream_timeout(&self) {
        if let Some((s, _)) = self.series() {
            s.timeouts.inc();
        }
    }

    /// An event stream opened (+1) or closed (-1).
    pub(crate) fn sse_stream(&self, delta: i64) {
        if let Some((_, e)) = self.series() {
            e.streams_open.add(delta);
        }
    }

    /// Events forwarded on a stream.
    pub(crate) fn sse_events(&self, events: u64) {
        if let Some((s, e)) = self.series() {
            e.events
                .get_or_init(|| {
                    s.sse_events
                        .with_label_values(&[&s.name, self.endpoint.as_str()])
                })
                .inc_by(events);
        }
    }
}

#[cfg(test)]
mod tests;
