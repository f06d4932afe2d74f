//! EnforcePolicy: runs the operator's `authorize(user, request)` for each MCP
//! request and hands the headers it chose to the forwarder.
//!
//! It reads the JSON-RPC body (bounded: the only body the proxy buffers) to
//! learn the MCP method and the tool, resource or prompt it names. Where a
//! client also sent `Mcp-Method` / `Mcp-Name` headers, they must agree.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use rhai::{Dynamic, Map};
use serde_json::Value;
use tower::{Layer, Service};

use super::{CompiledPolicy, Decision, PolicyEngine};
use crate::error::{BodyTimeout, ProxyError};
use crate::metrics::audit::AuditSlot;
use crate::metrics::Metrics;
use crate::session::{PolicyOutcome, Session};

/// What the policy keeps with a cached session: its view of the user,
/// built once, and for policies that decide on the user alone the last
/// (policy version, decision), so the script runs once per session and
/// version.
#[derive(Default)]
struct SessionMemo {
    user: OnceLock<Dynamic>,
    decision: Mutex<Option<(u64, Decision)>>,
}

fn memo(session: &Session) -> Option<&SessionMemo> {
    session.memo.get_or_init(SessionMemo::default)
}

/// What the proxy reads of one JSON-RPC message.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct McpCall {
    pub method: Option<String>,
    pub id: Option<Value>,
    /// tools/call and prompts/get: `params.name`; resources/read: `params.uri`.
    pub target: Option<String>,
}

impl McpCall {
    pub fn tool(&self) -> Option<&str> {
        (self.method.as_deref() == Some("tools/call"))
            .then_some(self.target.as_deref())
            .flatten()
    }
    pub fn resource(&self) -> Option<&str> {
        matches!(
            self.method.as_deref(),
            Some("resources/read" | "resources/subscribe" | "resources/unsubscribe")
        )
        .then_some(self.target.as_deref())
        .flatten()
    }
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
    let header = |name: &str| -> Result<Option<&[u8]>, ProxyError> {
        let mut values = headers.get_all(name).iter();
        let first = values.next().map(HeaderValue::as_bytes);
        if values.next().is_some() {
            return Err(ProxyError::BadRequest(format!(
                "more than one {name} header"
            )));
        }
        Ok(first)
    };
    let (method, name) = (header("mcp-method")?, header("mcp-name")?);
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

/// Runs `authorize` for a session: once per session and policy version when
/// the policy decides on the user alone, otherwise per request (the request
/// view is built only then).
pub fn decide(
    engine: &PolicyEngine,
    policy: &CompiledPolicy,
    session: &Session,
    user: &Dynamic,
    request: impl FnOnce() -> Dynamic,
) -> Decision {
    if !policy.per_user_only {
        return engine.authorize(policy, user.clone(), request(), &session.upstream);
    }
    let Some(memo) = memo(session) else {
        return engine.authorize(policy, user.clone(), request(), &session.upstream);
    };
    if let Ok(cached) = memo.decision.lock() {
        if let Some((version, decision)) = cached.as_ref() {
            if *version == policy.version {
                return decision.clone();
            }
        }
    }
    let decision = engine.authorize(policy, user.clone(), request(), &session.upstream);
    if let Ok(mut cached) = memo.decision.lock() {
        *cached = Some((policy.version, decision.clone()));
    }
    decision
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
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    call: Option<&McpCall>,
) -> Dynamic {
    RequestView::new(method, path, headers).into_call(call)
}

/// The script's `request`, built once per HTTP request: the headers are
/// read once, and each message of a batch adds only its own `mcp` part.
#[derive(Clone)]
pub struct RequestView {
    base: Map,
}

impl RequestView {
    pub fn new(method: &Method, path: &str, headers: &HeaderMap) -> Self {
        let mut header_map = Map::new();
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
                header_map.insert(name.as_str().into(), v.to_string().into());
            }
        }
        let mut base = Map::new();
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
        base.insert(
            "headers".into(),
            Dynamic::from_map(header_map).into_read_only(),
        );
        RequestView { base }
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
    user: Dynamic,
    view: RequestView,
    metrics: Option<Arc<Metrics>>,
    audit: Option<AuditSlot>,
}

impl Evaluation {
    /// Runs the policy for the request (no calls: once, without an `mcp`
    /// part) or for each call; the first denial refuses the whole request.
    fn run(self, calls: &[McpCall]) -> Result<Vec<(HeaderName, HeaderValue)>, ProxyError> {
        let mut headers = Vec::new();
        let evaluations: Vec<Option<&McpCall>> = if calls.is_empty() {
            vec![None]
        } else {
            calls.iter().map(Some).collect()
        };
        let last = evaluations.len() - 1;
        let mut view = Some(self.view);
        for (i, call) in evaluations.into_iter().enumerate() {
            let started = std::time::Instant::now();
            let decision = decide(
                &self.engine,
                &self.policy,
                &self.session,
                &self.user,
                || {
                    let view = if i == last { view.take() } else { view.clone() };
                    view.map_or(Dynamic::UNIT, |v| v.into_call(call))
                },
            );
            let label = if matches!(decision, Decision::Allow { .. }) {
                "allow"
            } else {
                "deny"
            };
            if let Some(metrics) = &self.metrics {
                metrics
                    .policy_duration
                    .observe(started.elapsed().as_secs_f64());
                metrics.policy_decisions.with_label_values(&[label]).inc();
            }
            if let Some(slot) = &self.audit {
                slot.update(|facts| facts.decision = Some(label));
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

#[derive(Clone)]
pub struct EnforcePolicyLayer {
    engine: Arc<PolicyEngine>,
    issuer: Arc<str>,
    max_body: usize,
    max_batch_size: usize,
    metrics: Option<Arc<Metrics>>,
}

impl EnforcePolicyLayer {
    pub fn new(
        engine: Arc<PolicyEngine>,
        issuer: &str,
        max_body: usize,
        max_batch_size: usize,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        EnforcePolicyLayer {
            engine,
            issuer: issuer.into(),
            max_body,
            max_batch_size,
            metrics,
        }
    }
}

impl<S> Layer<S> for EnforcePolicyLayer {
    type Service = EnforcePolicy<S>;
    fn layer(&self, inner: S) -> EnforcePolicy<S> {
        EnforcePolicy {
            inner,
            layer: self.clone(),
        }
    }
}

/// Runs the policy; a denial never reaches the downstream.
#[derive(Clone)]
pub struct EnforcePolicy<S> {
    inner: S,
    layer: EnforcePolicyLayer,
}

impl<S> Service<Request<Body>> for EnforcePolicy<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let session = request
                .extensions()
                .get::<Arc<Session>>()
                .cloned()
                .ok_or(ProxyError::Forbidden("no authenticated session".into()))?;
            let (mut parts, body) = request.into_parts();
            let (body, calls) = if parts.method == Method::POST {
                let bytes: Bytes = Limited::new(body, layer.max_body)
                    .collect()
                    .await
                    .map_err(|e| {
                        if e.downcast_ref::<http_body_util::LengthLimitError>()
                            .is_some()
                        {
                            ProxyError::PayloadTooLarge(layer.max_body)
                        } else if let Some(timeout) = BodyTimeout::in_chain(e.as_ref()) {
                            ProxyError::BodyTimeout(timeout)
                        } else {
                            ProxyError::BadRequest(format!(
                                "the request body could not be read: {e}"
                            ))
                        }
                    })?
                    .to_bytes();
                let calls = parse_calls(&bytes, layer.max_batch_size)?;
                check_routing_headers(&parts.headers, &calls)?;
                (Body::from(bytes), calls)
            } else {
                (body, Vec::new())
            };
            let audit = parts.extensions.get::<AuditSlot>().cloned();
            if let (Some(slot), Some(first)) = (&audit, calls.first()) {
                slot.update(|facts| {
                    facts.mcp_method = first.method.clone();
                    facts.tool = first.tool().map(str::to_string);
                });
            }
            let policy = layer.engine.current();
            let evaluation = Evaluation {
                engine: layer.engine.clone(),
                policy: policy.clone(),
                user: script_user(&session, &layer.issuer),
                session,
                view: RequestView::new(&parts.method, parts.uri.path(), &parts.headers),
                metrics: layer.metrics.clone(),
                audit,
            };
            let (headers, calls) = if calls.len() <= 1 {
                // One call is a few microseconds of policy: a thread hop
                // would cost more than it saves.
                (evaluation.run(&calls)?, calls)
            } else {
                // A batch is up to max_batch_size policy runs: off the
                // runtime's workers, so other connections keep being served.
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
                (verdict?, calls)
            };
            let strip_engine = layer.engine.clone();
            let strip_policy = policy.clone();
            parts.extensions.insert(PolicyOutcome {
                headers,
                strip: Arc::new(move |name| strip_engine.is_identity_header(&strip_policy, name)),
            });
            // List filtering decides with the same version of the policy.
            parts.extensions.insert(policy);
            if let [call] = calls.as_slice() {
                parts.extensions.insert(call.clone());
            }
            inner.call(Request::from_parts(parts, body)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_name_their_target() {
        let calls = parse_calls(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#, 16).unwrap();
        assert_eq!(calls[0].tool(), Some("whoami"));
        let calls = parse_calls(br#"[{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#, 16).unwrap();
        assert_eq!(calls[0].resource(), Some("file:///a"));
        assert_eq!(
            calls[1].method.as_deref(),
            Some("notifications/initialized")
        );
        assert!(parse_calls(b"not json", 16).is_err());
        assert!(parse_calls(b"[]", 16).is_err());
    }

    #[test]
    fn routing_headers_must_agree_with_the_body() {
        let calls = parse_calls(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}}"#,
            16,
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("mcp-method", "tools/call".parse().unwrap());
        h.insert("mcp-name", "whoami".parse().unwrap());
        assert!(check_routing_headers(&h, &calls).is_ok());
        h.insert("mcp-name", "delete_everything".parse().unwrap());
        assert!(matches!(
            check_routing_headers(&h, &calls),
            Err(ProxyError::BadRequest(_))
        ));
        h.remove("mcp-name");
        h.insert("mcp-method", "tools/list".parse().unwrap());
        assert!(check_routing_headers(&h, &calls).is_err());
    }

    #[test]
    fn invariant_6_the_policy_never_sees_what_a_client_claims_about_its_connection() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-for", "10.0.0.1"),
            ("x_forwarded_for", "10.0.0.1"),
            ("x-real-ip", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
            ("true-client-ip", "10.0.0.1"),
            ("x-original-url", "/admin"),
            ("authorization", "Bearer t"),
            ("cookie", "a=1"),
            ("x-custom", "seen"),
        ] {
            h.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let view = script_request(&Method::POST, "/mcp", &h, None).cast::<Map>();
        let headers = view["headers"].clone().cast::<Map>();
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-custom"]);
    }

    #[test]
    fn invariant_10_routing_headers_are_read_one_way_only() {
        let calls = parse_calls(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}}"#,
            16,
        )
        .unwrap();
        // A second value, which a downstream may read instead of the first.
        let mut h = HeaderMap::new();
        h.append("mcp-name", "whoami".parse().unwrap());
        h.append("mcp-name", "deploy".parse().unwrap());
        assert!(check_routing_headers(&h, &calls).is_err());
        // A value that is not visible ASCII is still compared.
        let mut h = HeaderMap::new();
        h.insert("mcp-name", HeaderValue::from_bytes(b"d\xe9ploy").unwrap());
        assert!(check_routing_headers(&h, &calls).is_err());
        let batch = parse_calls(
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping"}]"#,
            16,
        )
        .unwrap();
        assert!(check_routing_headers(&h, &batch).is_err());
    }
}
