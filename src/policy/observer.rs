//! What watches a route's decisions without taking part in them: the
//! decision log (`decision_log`) and the shadow policy (`shadow`).
//!
//! `EnforcePolicy` asks the engine for an `Observation` once per request
//! (`PolicyEngine::observe`: `None`, and nothing allocated, when neither is
//! configured) and hands it each decision. The observation copies what the
//! script saw — tokens replaced by placeholders, redacted headers written
//! `[redacted]` — and offers it to bounded queues; writing and shadow
//! evaluation happen on their own threads, never on the request path.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rhai::{Dynamic, Map};
use serde::{Deserialize, Serialize};

use super::decision_log::DecisionLog;
use super::layer::{McpCall, RequestView};
use super::shadow::Shadow;
use super::{CompiledPolicy, Decision, PolicyEngine, PolicyError};
use crate::config::PolicyConfig;
use crate::metrics::labels::ObserverQueue;
use crate::metrics::{Metrics, RouteMetrics};
use crate::store::UpstreamTokens;

/// What stands for the provider's access token in logs, shadows and replays.
pub const ACCESS_TOKEN_PLACEHOLDER: &str = "[upstream access token]";
/// What stands for the provider's id_token in logs, shadows and replays.
pub const ID_TOKEN_PLACEHOLDER: &str = "[upstream id token]";
/// What a redacted header or claim value is written as.
pub const REDACTED: &str = "[redacted]";

/// Why a route's decision log or shadow policy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    /// The decision log file cannot be opened.
    #[error("cannot open {path}: {message}")]
    Log {
        /// The configured path.
        path: String,
        /// The operating system's reason.
        message: String,
    },
    /// The shadow policy does not compile.
    #[error("{0}")]
    Shadow(#[from] PolicyError),
}

impl ObserverError {
    /// The configuration key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            ObserverError::Log { .. } => "policy.decision_log",
            ObserverError::Shadow(_) => "policy.shadow_path",
        }
    }
}

/// A decision as the proxy acted on it, tokens replaced by placeholders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Allowed (forwarded) or denied.
    pub allow: bool,
    /// A denial's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// A denial's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The headers an allow sets, by lower-case name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl Outcome {
    /// The outcome of `decision`; where a header carries one of `tokens`,
    /// the token is written as its placeholder.
    pub(crate) fn of(decision: &Decision, tokens: &UpstreamTokens) -> Outcome {
        match decision {
            Decision::Allow { headers } => Outcome {
                allow: true,
                status: None,
                reason: None,
                headers: headers
                    .iter()
                    .map(|(name, value)| {
                        let text = String::from_utf8_lossy(value.as_bytes());
                        let text = without_tokens(&text, tokens).into_owned();
                        (name.as_str().to_string(), text)
                    })
                    .collect(),
            },
            Decision::Deny { status, reason } => Outcome {
                allow: false,
                status: Some(status.as_u16()),
                reason: Some(reason.clone()),
                headers: BTreeMap::new(),
            },
        }
    }
}

/// `text` with the provider's tokens written as placeholders (borrowed,
/// without a copy, when it holds none: the usual case).
fn without_tokens<'a>(text: &'a str, tokens: &UpstreamTokens) -> Cow<'a, str> {
    let mut text = Cow::Borrowed(text);
    if !tokens.access_token.is_empty() && text.contains(tokens.access_token.as_str()) {
        text = Cow::Owned(text.replace(&tokens.access_token, ACCESS_TOKEN_PLACEHOLDER));
    }
    if let Some(id) = tokens.id_token.as_deref().filter(|t| !t.is_empty()) {
        if text.contains(id) {
            text = Cow::Owned(text.replace(id, ID_TOKEN_PLACEHOLDER));
        }
    }
    text
}

/// How long a decision log writer or shadow thread sleeps when its queue
/// is empty. The threads poll rather than block: a producer never wakes
/// one (a wake-up per request costs more than the work itself), and a
/// queue holds far more than arrives in this time.
pub(crate) const POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// The next queued item, sleeping `POLL` while there is none (`idle` runs
/// first, once per idle spell); `None` when the producers are gone.
pub(crate) fn next_polled<T>(
    queue: &std::sync::mpsc::Receiver<T>,
    mut idle: impl FnMut(),
) -> Option<T> {
    use std::sync::mpsc::TryRecvError;
    let mut idled = false;
    loop {
        match queue.try_recv() {
            Ok(item) => return Some(item),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {
                if !idled {
                    idle();
                    idled = true;
                }
                std::thread::sleep(POLL);
            }
        }
    }
}

/// The tokens a replayed or shadowed decision works with: placeholders,
/// never the provider's.
pub(crate) fn placeholder_tokens(id_token: bool) -> UpstreamTokens {
    UpstreamTokens {
        access_token: ACCESS_TOKEN_PLACEHOLDER.into(),
        id_token: id_token.then(|| ID_TOKEN_PLACEHOLDER.into()),
        ..UpstreamTokens::default()
    }
}

/// A bounded queue to a thread of its own that works through the route's
/// observations (the decision log's writer, the shadow): when the thread
/// falls behind, an observation is dropped and counted
/// (`policy_observer_dropped_total{queue}`) rather than making a request
/// wait.
pub(crate) struct ObserverThread {
    queue: std::sync::mpsc::SyncSender<Arc<Observed>>,
    metrics: RouteMetrics,
    which: ObserverQueue,
}

/// What an `ObserverThread` runs.
pub(crate) trait ObserverWork: Send + 'static {
    /// One observation.
    fn observe(&mut self, observed: &Observed);
    /// The queue ran empty (and once more at the end, when the route is
    /// dropped).
    fn idle(&mut self) {}
}

impl ObserverThread {
    /// Starts `work` on a thread of its own behind a queue of `capacity`.
    pub(crate) fn spawn(
        which: ObserverQueue,
        capacity: usize,
        metrics: RouteMetrics,
        mut work: impl ObserverWork,
    ) -> std::io::Result<ObserverThread> {
        let (queue, observations) = std::sync::mpsc::sync_channel::<Arc<Observed>>(capacity);
        std::thread::Builder::new()
            .name(format!("policy-{}", which.as_str()))
            .spawn(move || {
                while let Some(observed) = next_polled(&observations, || work.idle()) {
                    work.observe(&observed);
                }
                work.idle();
            })?;
        Ok(ObserverThread {
            queue,
            metrics,
            which,
        })
    }

    /// Queues an observation; when the queue is full it is dropped and
    /// counted.
    pub(crate) fn offer(&self, observed: Arc<Observed>) {
        if self.queue.try_send(observed).is_err() {
            self.metrics.observer_dropped(self.which);
        }
    }
}

/// One decision as observed: the inputs the script saw and what the
/// enforced policy decided, with no token in it.
pub(crate) struct Observed {
    /// Unix seconds when the request arrived; replays and the shadow run
    /// at this time.
    pub(crate) time: i64,
    pub(crate) route: Arc<str>,
    pub(crate) policy: Arc<CompiledPolicy>,
    pub(crate) user: Dynamic,
    pub(crate) request: Dynamic,
    /// Whether the session had an id_token (`upstream_id_token()` sets a
    /// header only then).
    pub(crate) id_token: bool,
    pub(crate) outcome: Outcome,
}

/// A route's decision log and shadow policy.
pub(crate) struct PolicyObserver {
    route: Arc<str>,
    log: Option<DecisionLog>,
    shadow: Option<Shadow>,
    /// Lower-case names of request headers written `[redacted]`.
    redact_headers: HashSet<String>,
    sample_percent: u64,
    seen: AtomicU64,
}

impl PolicyObserver {
    /// The route's observer, or `None` when neither a decision log nor a
    /// shadow policy is configured.
    pub(crate) fn new(
        settings: &PolicyConfig,
        route: &str,
        max_header_bytes: usize,
        metrics: &Arc<Metrics>,
    ) -> Result<Option<Self>, ObserverError> {
        if settings.decision_log.is_none() && settings.shadow_path.is_none() {
            return Ok(None);
        }
        let route_metrics = metrics.route(route);
        let shadow = match &settings.shadow_path {
            Some(path) => {
                let engine = PolicyEngine::new(Some(path), &settings.identity_headers)?
                    .with_route(route)
                    .with_max_header_bytes(max_header_bytes);
                Some(Shadow::start(Arc::new(engine), route_metrics.clone()))
            }
            None => None,
        };
        let log = match &settings.decision_log {
            Some(target) => Some(DecisionLog::start(
                target,
                settings,
                shadow.as_ref().map(|s| s.engine().clone()),
                route_metrics,
            )?),
            None => None,
        };
        Ok(Some(PolicyObserver {
            route: route.into(),
            log,
            shadow,
            redact_headers: settings
                .decision_log_redact_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            sample_percent: u64::from(settings.decision_log_sample_percent.clamp(1, 100)),
            seen: AtomicU64::new(0),
        }))
    }

    /// The shadow policy's engine (for reloads).
    pub(crate) fn shadow_engine(&self) -> Option<&Arc<PolicyEngine>> {
        self.shadow.as_ref().map(Shadow::engine)
    }

    /// Whether this decision is one of the sampled share the log records:
    /// spread evenly (`percent` of every hundred).
    fn sampled(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        (n * self.sample_percent) % 100 < self.sample_percent
    }
}

/// One request's observation: the observer and a copy of the request view.
pub struct Observation {
    observer: Arc<PolicyObserver>,
    view: RequestView,
    /// When the request arrived, before its policy ran: what replays and
    /// the shadow give `now()`.
    time: i64,
}

impl Observation {
    pub(crate) fn new(observer: Arc<PolicyObserver>, view: &RequestView) -> Self {
        Observation {
            observer,
            view: view.clone(),
            time: crate::now_unix(),
        }
    }

    /// Hands one decision to the decision log and the shadow (each takes
    /// it only when its queue has room). `upstream`: the session's provider
    /// tokens, only to write them as placeholders wherever they appear.
    pub fn decided(
        &self,
        upstream: &UpstreamTokens,
        user: impl FnOnce() -> Dynamic,
        call: Option<&McpCall>,
        policy: &Arc<CompiledPolicy>,
        decision: &Decision,
    ) {
        let o = &self.observer;
        let log = o.log.as_ref().filter(|_| o.sampled());
        if log.is_none() && o.shadow.is_none() {
            return;
        }
        // Built only for a decision something takes (sampled, or shadowed).
        let user = user();
        let request = self.view.for_call(call);
        let outcome = Outcome::of(decision, upstream);
        let observed = |request, outcome| {
            Arc::new(Observed {
                time: self.time,
                route: o.route.clone(),
                policy: policy.clone(),
                user: user.clone(),
                request,
                id_token: upstream.id_token.is_some(),
                outcome,
            })
        };
        // Redaction is for what is written: the shadow judges the request
        // as the enforced policy saw it, or a candidate reading a redacted
        // header would disagree where it would not.
        if let Some(log) = log {
            let written = redacted_request(request.clone(), &o.redact_headers, upstream);
            log.offer(observed(written, outcome.clone()));
        }
        if let Some(shadow) = &o.shadow {
            shadow.offer(observed(request, outcome));
        }
    }
}

/// The request view with redacted headers written `[redacted]` and any
/// header value carrying a provider token written as its placeholder;
/// headers left as they are are not copied.
fn redacted_request(
    request: Dynamic,
    redact: &HashSet<String>,
    tokens: &UpstreamTokens,
) -> Dynamic {
    let Some(mut map) = request.try_cast::<Map>() else {
        return Dynamic::UNIT;
    };
    if let Some(headers) = map.get_mut("headers") {
        let mut cleaned = std::mem::take(headers)
            .try_cast::<Map>()
            .unwrap_or_default();
        for (name, value) in cleaned.iter_mut() {
            let replacement = if redact.contains(name.as_str()) {
                Some(REDACTED.to_string())
            } else {
                value.read_lock::<rhai::ImmutableString>().and_then(|text| {
                    match without_tokens(text.as_str(), tokens) {
                        Cow::Owned(clean) => Some(clean),
                        Cow::Borrowed(_) => None,
                    }
                })
            };
            if let Some(text) = replacement {
                *value = Dynamic::from(text);
            }
        }
        // Read-only, as the live policy sees them.
        *headers = Dynamic::from_map(cleaned).into_read_only();
    }
    Dynamic::from_map(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observer(percent: u64) -> PolicyObserver {
        PolicyObserver {
            route: "default".into(),
            log: None,
            shadow: None,
            redact_headers: HashSet::new(),
            sample_percent: percent,
            seen: AtomicU64::new(0),
        }
    }

    #[test]
    fn sampling_records_the_configured_share_evenly() {
        for (percent, expected) in [(100, 1000), (10, 100), (33, 330), (1, 10)] {
            let o = observer(percent);
            let taken = (0..1000).filter(|_| o.sampled()).count();
            assert_eq!(taken, expected, "{percent}%");
        }
        let o = observer(50);
        let first: Vec<bool> = (0..4).map(|_| o.sampled()).collect();
        assert_eq!(first, [true, false, true, false]);
    }

    #[test]
    fn tokens_in_headers_become_placeholders() {
        let tokens = UpstreamTokens {
            access_token: "at-123".into(),
            id_token: Some("id-456".into()),
            ..UpstreamTokens::default()
        };
        let decision = Decision::Allow {
            headers: vec![
                (
                    "authorization".parse().unwrap(),
                    "Bearer at-123".parse().unwrap(),
                ),
                ("x-id".parse().unwrap(), "id-456".parse().unwrap()),
                (
                    "x-user-email".parse().unwrap(),
                    "a@example.com".parse().unwrap(),
                ),
            ]
            .into(),
        };
        let outcome = Outcome::of(&decision, &tokens);
        assert_eq!(
            outcome.headers["authorization"],
            format!("Bearer {ACCESS_TOKEN_PLACEHOLDER}")
        );
        assert_eq!(outcome.headers["x-id"], ID_TOKEN_PLACEHOLDER);
        assert_eq!(outcome.headers["x-user-email"], "a@example.com");
    }

    #[test]
    fn request_headers_are_redacted_and_stay_read_only() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-api-key", "k-123".parse().unwrap());
        headers.insert("x-echo", "Bearer at-123".parse().unwrap());
        headers.insert("x-team", "blue".parse().unwrap());
        let view = RequestView::new("default", &axum::http::Method::POST, "/mcp", &headers);
        let tokens = UpstreamTokens {
            access_token: "at-123".into(),
            ..UpstreamTokens::default()
        };
        let redact = HashSet::from(["x-api-key".to_string()]);
        let request = redacted_request(view.for_call(None), &redact, &tokens);
        let json: serde_json::Value = rhai::serde::from_dynamic(&request).unwrap();
        assert_eq!(json["headers"]["x-api-key"], REDACTED);
        assert_eq!(
            json["headers"]["x-echo"],
            format!("Bearer {ACCESS_TOKEN_PLACEHOLDER}")
        );
        assert_eq!(json["headers"]["x-team"], "blue");
        assert_eq!(json["path"], "/mcp");
        let map = request.try_cast::<Map>().unwrap();
        assert!(map["headers"].is_read_only());
    }
}
