//! EnforcePolicy: runs the operator's `authorize(user, request)` for each MCP
//! request and hands the headers it chose to the forwarder.
//!
//! It reads the JSON-RPC body (bounded: the only body the proxy buffers) to
//! learn the MCP method and the tool, resource or prompt it names. Where a
//! client also sent `Mcp-Method` / `Mcp-Name` headers, they must agree.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use rhai::{Dynamic, Map};
use serde_json::Value;
use tower::Service;

use super::source_scan::DecisionInputs;
use super::{CompiledPolicy, Decision, PolicyEngine};
use crate::checkpoint::{Checkpoint, CheckpointLayer};
use crate::error::ProxyError;
use crate::metrics::audit::AuditSlot;
use crate::metrics::labels::PolicyVerdict;
use crate::metrics::{Metrics, RouteMetrics};
use crate::session::{PolicyHeaders, PolicyOutcome, Session};
use remembered::{memo, CallKey, REMEMBERED_CALLS};

/// The route's `login()` for this session, once per session and policy
/// version. It ran at sign-in for the routes the token was issued for; it
/// runs here again because a token for the whole proxy (or one narrowed at
/// the token endpoint) reaches routes whose `login()` was not the one
/// that let the person in.
fn login_verdict(
    engine: &PolicyEngine,
    policy: &CompiledPolicy,
    session: &Session,
    user: impl FnOnce() -> Dynamic,
) -> Decision {
    let login = || engine.login(policy, user());
    match memo(session) {
        Some(memo) => memo.logins.get_or_insert(policy.version, login),
        None => login(),
    }
}

/// What the proxy reads of one JSON-RPC message.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct McpCall {
    /// The JSON-RPC method (`tools/call`, `notifications/initialized`, ...).
    pub method: Option<String>,
    /// The request id; notifications have none.
    pub id: Option<Value>,
    /// tools/call and prompts/get: `params.name`; resources/read: `params.uri`.
    pub target: Option<String>,
}

impl McpCall {
    /// The tool a `tools/call` calls.
    pub fn tool(&self) -> Option<&str> {
        (self.method.as_deref() == Some("tools/call"))
            .then_some(self.target.as_deref())
            .flatten()
    }

    /// The resource a `resources/read`, `subscribe` or `unsubscribe` names.
    pub fn resource(&self) -> Option<&str> {
        matches!(
            self.method.as_deref(),
            Some("resources/read" | "resources/subscribe" | "resources/unsubscribe")
        )
        .then_some(self.target.as_deref())
        .flatten()
    }

    /// The prompt a `prompts/get` asks for.
    pub fn prompt(&self) -> Option<&str> {
        (self.method.as_deref() == Some("prompts/get"))
            .then_some(self.target.as_deref())
            .flatten()
    }
}

/// The JSON-RPC messages of a POST body (one, or a batch of at most
/// `max_batch_size`), read by the strict reader: what the policy sees is what
/// the downstream will execute.
pub fn parse_calls(body: &[u8], max_batch_size: usize) -> Result<Vec<McpCall>, ProxyError> {
    Ok(super::jsonrpc::read_messages(body, max_batch_size)?)
}

/// MCP 2026-07-28 routing headers must match the body they describe.
fn check_routing_headers(headers: &HeaderMap, calls: &[McpCall]) -> Result<(), ProxyError> {
    // Compared as bytes, and only one of each: a value this check could not
    // read, or a second one, might be what the downstream routes on.
    let header = |name: HeaderName| -> Result<Option<&[u8]>, ProxyError> {
        let mut values = headers.get_all(&name).iter();
        let first = values.next().map(HeaderValue::as_bytes);
        if values.next().is_some() {
            return Err(ProxyError::BadRequest(format!(
                "more than one {name} header"
            )));
        }
        Ok(first)
    };
    // `from_static` is const: the names are not parsed per request.
    const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
    const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
    let (method, name) = (header(MCP_METHOD)?, header(MCP_NAME)?);
    let shown = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    if let [call] = calls {
        if let Some(method) = method {
            if call.method.as_deref().map(str::as_bytes) != Some(method) {
                return Err(ProxyError::BadRequest(format!(
                    "the Mcp-Method header ({}) disagrees with the body's method",
                    shown(method)
                )));
            }
        }
        if let Some(name) = name {
            if call.target.as_deref().map(str::as_bytes) != Some(name) {
                return Err(ProxyError::BadRequest(format!(
                    "the Mcp-Name header ({}) disagrees with the body",
                    shown(name)
                )));
            }
        }
    } else if method.is_some() || name.is_some() {
        return Err(ProxyError::BadRequest(
            "Mcp-Method / Mcp-Name cannot describe a batch".into(),
        ));
    }
    Ok(())
}

/// Runs `authorize` for a session and one call (`None`: a request without
/// one): once per session and policy version when the policy decides on
/// the user alone, once per session, version and call when it reads only
/// the call, otherwise each time. The user and request views are built
/// only when the script runs.
pub fn decide(
    engine: &PolicyEngine,
    policy: &CompiledPolicy,
    session: &Session,
    call: Option<&McpCall>,
    user: impl FnOnce() -> Dynamic,
    request: impl FnOnce() -> Dynamic,
) -> Decision {
    let run = || engine.authorize(policy, user(), request(), &session.upstream);
    // A policy that decides per request never touches the session's memo.
    if policy.inputs == DecisionInputs::Request {
        return run();
    }
    let Some(memo) = memo(session) else {
        return run();
    };
    let version = policy.version;
    if policy.inputs == DecisionInputs::User {
        return memo.decisions.get_or_insert(version, run);
    }
    memo.call_decisions.get_or_insert_with(
        REMEMBERED_CALLS,
        |(v, key)| *v == version && key.is(call),
        || (version, CallKey::of(call)),
        run,
    )
}

/// The script's `user`: built once per session.
pub fn script_user(session: &Session, issuer: &str) -> Dynamic {
    let build = || {
        super::user_value(&super::UserFacts {
            sub: &session.sub,
            email: session.email.as_deref(),
            claims: &session.claims,
            issuer,
            client_id: &session.client_id,
            client_name: session.client_name.as_deref(),
        })
    };
    match memo(session) {
        Some(memo) => memo.user.get_or_init(build).clone(),
        None => build(),
    }
}

/// The script's `request` for one call (tests, benchmarks, `policy test`).
pub fn script_request(
    route: &str,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    call: Option<&McpCall>,
) -> Dynamic {
    RequestView::new(route, method, path, headers).into_call(call)
}

/// The script's `request`, built once per HTTP request: the headers are
/// read once, and each message of a batch adds only its own `mcp` part.
#[derive(Clone, Default)]
pub struct RequestView {
    base: Map,
}

impl RequestView {
    /// The view of a request on `route` — its method, path and headers
    /// (without the credentials and the client's claims about its
    /// connection).
    pub fn new(route: &str, method: &Method, path: &str, headers: &HeaderMap) -> Self {
        let mut view = Self::without_headers(route, method, path, headers);
        view.base.insert(
            "headers".into(),
            Dynamic::from_map(script_headers(headers)).into_read_only(),
        );
        view
    }

    /// The view without `headers`, for a policy that cannot read them
    /// (`CompiledPolicy::reads_headers`): their map is most of its cost.
    fn without_headers(route: &str, method: &Method, path: &str, headers: &HeaderMap) -> Self {
        let mut base = Map::new();
        base.insert("route".into(), route.to_string().into());
        base.insert("method".into(), method.as_str().to_string().into());
        base.insert("path".into(), path.to_string().into());
        base.insert(
            "protocol_version".into(),
            optional_text(
                headers
                    .get("mcp-protocol-version")
                    .and_then(|v| v.to_str().ok()),
            ),
        );
        RequestView { base }
    }

    /// The view of a request, built only when something reads more of it
    /// than its calls: a policy that reads more than `request.mcp`, or the
    /// decision log and shadow policy when the route has them.
    pub fn when_read(
        engine: &PolicyEngine,
        policy: &CompiledPolicy,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Self> {
        // The decision log and the shadow policy see every header.
        let observed = engine.observes();
        if !observed && policy.inputs != DecisionInputs::Request {
            return None;
        }
        Some(if observed || policy.reads_headers {
            RequestView::new(engine.route(), method, path, headers)
        } else {
            RequestView::without_headers(engine.route(), method, path, headers)
        })
    }

    /// The view for one call of several (the base is copied).
    pub fn for_call(&self, call: Option<&McpCall>) -> Dynamic {
        self.clone().into_call(call)
    }

    /// The view for the last (or only) call: nothing is copied.
    pub fn into_call(self, call: Option<&McpCall>) -> Dynamic {
        let mut mcp = Map::new();
        mcp.insert(
            "method".into(),
            optional_text(call.and_then(|c| c.method.as_deref())),
        );
        mcp.insert("tool".into(), optional_text(call.and_then(McpCall::tool)));
        mcp.insert(
            "resource".into(),
            optional_text(call.and_then(McpCall::resource)),
        );
        mcp.insert(
            "prompt".into(),
            optional_text(call.and_then(McpCall::prompt)),
        );
        let mut request = self.base;
        request.insert("mcp".into(), Dynamic::from_map(mcp));
        Dynamic::from_map(request)
    }
}

/// The request's headers as a script reads them: without the credentials
/// and the client's claims about its connection.
fn script_headers(headers: &HeaderMap) -> Map {
    let mut map = Map::new();
    for (name, value) in headers {
        // Credentials are not the policy's business, and what a client
        // claims about its connection (X-Forwarded-For, X-Real-IP, ...)
        // is not evidence: a policy must not allow on it.
        if name == axum::http::header::AUTHORIZATION
            || name == axum::http::header::COOKIE
            || crate::client_address::is_forwarding_header(name.as_str())
        {
            continue;
        }
        if let Ok(v) = value.to_str() {
            map.insert(name.as_str().into(), v.to_string().into());
        }
    }
    map
}

fn optional_text(v: Option<&str>) -> Dynamic {
    v.map(|s| Dynamic::from(s.to_string()))
        .unwrap_or(Dynamic::UNIT)
}

/// Everything one HTTP request's policy runs need, owned, so that a batch
/// can be evaluated on a blocking thread.
struct Evaluation {
    engine: Arc<PolicyEngine>,
    policy: Arc<CompiledPolicy>,
    session: Arc<Session>,
    /// The user's claims as this issuer states them (`script_user`, built
    /// when a script runs).
    issuer: Arc<str>,
    /// `None` when nothing reads more than the calls
    /// (`RequestView::when_read`): the script is then given a view of the
    /// call alone, which it cannot tell apart.
    view: Option<RequestView>,
    metrics: RouteMetrics,
    audit: Option<AuditSlot>,
    /// The decision log and shadow policy, when configured.
    observe: Option<super::observer::Observation>,
}

/// Counts a decision with how long its script ran (`None`: it did not run,
/// the decision was remembered, and took no time worth reading the clock
/// for: under a microsecond, inside the histogram's first bucket). A run is
/// timed by the clock, not the poll's time (`clock::read`), and what
/// follows in the poll goes on from this reading.
fn count(metrics: &RouteMetrics, verdict: PolicyVerdict, ran_from: Option<tokio::time::Instant>) {
    let took = ran_from.map_or(std::time::Duration::ZERO, |started| {
        crate::clock::read().saturating_duration_since(started)
    });
    metrics.policy_decision(verdict, took);
}

/// The script's `user`, asked for as a run of `login()` or `authorize()`
/// starts: the run is timed from then (`ran_from`, for `count`), and a
/// verdict the session remembers, which runs nothing, reads no clock.
fn user_timing_the_run<'a>(
    session: &'a Session,
    issuer: &'a str,
    ran_from: &'a std::cell::Cell<Option<tokio::time::Instant>>,
) -> impl FnOnce() -> Dynamic + 'a {
    move || {
        ran_from.set(Some(crate::clock::read()));
        script_user(session, issuer)
    }
}

impl Evaluation {
    /// The route's `login()` for this session, when the policy has one: a
    /// refusal refuses the request whatever its calls.
    fn login(&self, calls: &[McpCall]) -> Result<(), ProxyError> {
        if !self.policy.has_login {
            return Ok(());
        }
        let ran_from = std::cell::Cell::new(None);
        let login = login_verdict(
            &self.engine,
            &self.policy,
            &self.session,
            user_timing_the_run(&self.session, &self.issuer, &ran_from),
        );
        let Decision::Deny { status, reason } = login else {
            return Ok(());
        };
        count(&self.metrics, PolicyVerdict::Deny, ran_from.get());
        if let Some(slot) = &self.audit {
            slot.update(|facts| facts.decision = Some(PolicyVerdict::Deny.as_str()));
        }
        tracing::info!(sub = %self.session.sub, route = self.engine.route(), %reason, "the route's login() refuses this person");
        Err(ProxyError::PolicyDenied {
            status,
            reason,
            id: calls.first().and_then(|c| c.id.clone()),
        })
    }

    /// Runs the policy for the request (no calls: once, without an `mcp`
    /// part) or for each call; the first denial refuses the whole request.
    fn run(self, calls: &[McpCall]) -> Result<PolicyHeaders, ProxyError> {
        let mut headers = PolicyHeaders::default();
        // Each call, or once without one: iterated, not listed (a `Vec`
        // was an allocation a request).
        let evaluations = calls
            .iter()
            .map(Some)
            .chain(calls.is_empty().then_some(None));
        let last = calls.len().max(1) - 1;
        self.login(calls)?;
        let mut view = self.view;
        for (i, call) in evaluations.into_iter().enumerate() {
            let ran_from = std::cell::Cell::new(None);
            let decision = decide(
                &self.engine,
                &self.policy,
                &self.session,
                call,
                user_timing_the_run(&self.session, &self.issuer, &ran_from),
                || {
                    let view = if i == last { view.take() } else { view.clone() };
                    // No view: the policy reads only the call (`when_read`).
                    view.unwrap_or_default().into_call(call)
                },
            );
            let verdict = if matches!(decision, Decision::Allow { .. }) {
                PolicyVerdict::Allow
            } else {
                PolicyVerdict::Deny
            };
            count(&self.metrics, verdict, ran_from.get());
            if let Some(observe) = &self.observe {
                observe.decided(
                    &self.session.upstream,
                    || script_user(&self.session, &self.issuer),
                    call,
                    &self.policy,
                    &decision,
                );
            }
            if let Some(slot) = &self.audit {
                slot.update(|facts| facts.decision = Some(verdict.as_str()));
            }
            match decision {
                Decision::Allow { headers: h } => headers = h,
                Decision::Deny { status, reason } => {
                    tracing::info!(
                        sub = %self.session.sub,
                        method = call.and_then(|c| c.method.as_deref()).unwrap_or_default(),
                        item = call.and_then(|c| c.target.as_deref()).unwrap_or_default(),
                        %reason,
                        "policy denied the request"
                    );
                    return Err(ProxyError::PolicyDenied {
                        status,
                        reason,
                        id: call.and_then(|c| c.id.clone()),
                    });
                }
            }
        }
        Ok(headers)
    }
}

/// Adds `EnforcePolicy` to a service.
pub type EnforcePolicyLayer = CheckpointLayer<EnforcePolicy>;

/// Runs the policy; a denial never reaches the downstream. What it decided
/// for a request that goes on travels with it: the `PolicyOutcome`, the
/// policy version (for list filtering) and, for a single call, the
/// `McpCall` (for a batch, every one as `Arc<[McpCall]>`).
#[derive(Clone)]
pub struct EnforcePolicy {
    engine: Arc<PolicyEngine>,
    issuer: Arc<str>,
    max_body: usize,
    max_batch_size: usize,
    metrics: RouteMetrics,
}

impl EnforcePolicy {
    /// The layer: bodies up to `max_body` bytes, batches up to
    /// `max_batch_size` calls, the user's claims as `issuer` states them,
    /// decisions counted under the engine's route (resolved once, here).
    pub fn layer(
        engine: Arc<PolicyEngine>,
        issuer: &str,
        max_body: usize,
        max_batch_size: usize,
        metrics: Arc<Metrics>,
    ) -> EnforcePolicyLayer {
        let metrics = metrics.route(engine.route());
        CheckpointLayer::new(EnforcePolicy {
            engine,
            issuer: issuer.into(),
            max_body,
            max_batch_size,
            metrics,
        })
    }

    /// The calls of a POST body, read whole (the only body the proxy
    /// buffers) and handed on as read; other methods carry none.
    async fn read_calls(
        &self,
        method: &Method,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Body, Vec<McpCall>), ProxyError> {
        if method != Method::POST {
            return Ok((body, Vec::new()));
        }
        let bytes = whole_body::read_whole(body, self.max_body).await?;
        let calls = parse_calls(&bytes, self.max_batch_size)?;
        check_routing_headers(headers, &calls)?;
        Ok((Body::from(bytes), calls))
    }
}

/// Runs the policy for the calls and hands them back.
async fn evaluate(
    evaluation: Evaluation,
    calls: Vec<McpCall>,
) -> Result<(PolicyHeaders, Vec<McpCall>), ProxyError> {
    if calls.len() <= 1 {
        // One call is a few microseconds of policy: a thread hop would cost
        // more than it saves.
        return Ok((evaluation.run(&calls)?, calls));
    }
    // A batch is up to max_batch_size policy runs: off the runtime's
    // workers, so other connections keep being served.
    let span = tracing::Span::current();
    let (verdict, calls) = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        (evaluation.run(&calls), calls)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "the policy evaluation of a batch failed");
        ProxyError::Forbidden("access denied by policy (policy error)".into())
    })?;
    Ok((verdict?, calls))
}

impl<S> Checkpoint<S, Request<Body>> for EnforcePolicy
where
    S: Service<Request<Body>, Error: From<ProxyError>, Future: Send> + Send + 'static,
{
    fn run(
        self,
        mut inner: S,
        request: Request<Body>,
    ) -> impl Future<Output = Result<S::Response, S::Error>> + Send + 'static {
        async move {
            let session =
                crate::session::authenticated(&request).ok_or_else(ProxyError::no_session)?;
            let (mut parts, body) = request.into_parts();
            let (body, calls) = self.read_calls(&parts.method, &parts.headers, body).await?;
            let audit = parts.extensions.get::<AuditSlot>().cloned();
            if let (Some(slot), Some(first)) = (&audit, calls.first()) {
                let labels = self
                    .metrics
                    .mcp_labels(first.method.as_deref(), first.tool());
                // The names are copied only for the audit line.
                let named = slot.logged().then(|| (first.method.clone(), first.tool()));
                slot.update(|facts| {
                    facts.mcp_labels = labels;
                    if let Some((method, tool)) = named {
                        facts.mcp_method = method;
                        facts.tool = tool.map(str::to_string);
                    }
                });
            }
            let policy = self.engine.current();
            let view = RequestView::when_read(
                &self.engine,
                &policy,
                &parts.method,
                parts.uri.path(),
                &parts.headers,
            );
            let observe = view.as_ref().and_then(|view| self.engine.observe(view));
            let strip = self.engine.strip_rule(&policy);
            // This request's copy of the layer is its own: its shared parts are
            // moved on, not counted again.
            let evaluation = Evaluation {
                engine: self.engine,
                policy: policy.clone(),
                issuer: self.issuer,
                session,
                observe,
                view,
                metrics: self.metrics,
                audit,
            };
            let (headers, calls) = evaluate(evaluation, calls).await?;
            parts.extensions.insert(PolicyOutcome { headers, strip });
            // List filtering decides with the same version of the policy.
            parts.extensions.insert(policy);
            if calls.len() > 1 {
                // Each call of a batch, for embedding layers (`embed::mcp_calls`).
                parts.extensions.insert(Arc::<[McpCall]>::from(calls));
            } else if let Some(call) = calls.into_iter().next() {
                parts.extensions.insert(call);
            }
            inner.call(Request::from_parts(parts, body)).await
        }
    }
}

mod remembered;
#[cfg(test)]
pub(super) mod test_support;
#[cfg(test)]
mod tests;
mod whole_body;
