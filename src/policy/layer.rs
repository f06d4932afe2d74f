//! EnforcePolicy: runs the operator's `authorize(user, request)` for each MCP
//! request and hands the headers it chose to the forwarder.
//!
//! It reads the JSON-RPC body (bounded: the only body the proxy buffers) to
//! learn the MCP method and the tool, resource or prompt it names. Where a
//! client also sent `Mcp-Method` / `Mcp-Name` headers, they must agree.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use rhai::{Dynamic, Map};
use serde::Deserialize;
use serde_json::Value;
use tower::{Layer, Service};

use super::{CompiledPolicy, Decision, PolicyEngine};
use crate::error::{BodyTimeout, ProxyError};
use crate::metrics::audit::AuditSlot;
use crate::metrics::Metrics;
use crate::oauth::grants::Session;

/// The policy's verdict, for the forwarder.
#[derive(Clone)]
pub struct PolicyOutcome {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub policy: Arc<CompiledPolicy>,
}

/// What the proxy reads of one JSON-RPC message.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct McpCall {
    pub method: Option<String>,
    pub id: Option<Value>,
    /// tools/call and prompts/get: `params.name`; resources/read: `params.uri`.
    pub target: Option<String>,
}

#[derive(Deserialize)]
struct RawMessage {
    method: Option<String>,
    id: Option<Value>,
    params: Option<Value>,
}

impl McpCall {
    fn from_raw(raw: RawMessage) -> McpCall {
        let key = match raw.method.as_deref() {
            Some("tools/call" | "prompts/get") => Some("name"),
            Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => Some("uri"),
            _ => None,
        };
        let target = key.and_then(|k| raw.params.as_ref()?.get(k)?.as_str().map(str::to_string));
        McpCall {
            method: raw.method,
            id: raw.id,
            target,
        }
    }

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

/// The JSON-RPC messages of a POST body: one, or a batch.
pub fn parse_calls(body: &[u8]) -> Result<Vec<McpCall>, ProxyError> {
    let bad =
        |e: serde_json::Error| ProxyError::BadRequest(format!("the body is not JSON-RPC: {e}"));
    let trimmed = body.trim_ascii_start();
    if trimmed.first() == Some(&b'[') {
        let batch: Vec<RawMessage> = serde_json::from_slice(body).map_err(bad)?;
        if batch.is_empty() {
            return Err(ProxyError::BadRequest("an empty JSON-RPC batch".into()));
        }
        Ok(batch.into_iter().map(McpCall::from_raw).collect())
    } else {
        Ok(vec![McpCall::from_raw(
            serde_json::from_slice(body).map_err(bad)?,
        )])
    }
}

/// MCP 2026-07-28 routing headers must match the body they describe.
fn check_routing_headers(headers: &HeaderMap, calls: &[McpCall]) -> Result<(), ProxyError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let [call] = calls {
        if let Some(method) = header("mcp-method") {
            if call.method.as_deref() != Some(method) {
                return Err(ProxyError::BadRequest(format!(
                    "the Mcp-Method header ({method}) disagrees with the body's method"
                )));
            }
        }
        if let Some(name) = header("mcp-name") {
            if call.target.as_deref() != Some(name) {
                return Err(ProxyError::BadRequest(format!(
                    "the Mcp-Name header ({name}) disagrees with the body"
                )));
            }
        }
    } else if header("mcp-method").is_some() || header("mcp-name").is_some() {
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
    if let Ok(cached) = session.policy_decision.lock() {
        if let Some((version, decision)) = cached.as_ref() {
            if *version == policy.version {
                return decision.clone();
            }
        }
    }
    let decision = engine.authorize(policy, user.clone(), request(), &session.upstream);
    if let Ok(mut cached) = session.policy_decision.lock() {
        *cached = Some((policy.version, decision.clone()));
    }
    decision
}

/// The script's `user`: built once per session.
pub fn script_user(session: &Session, issuer: &str) -> Dynamic {
    session
        .script_user
        .get_or_init(|| {
            super::user_value(&super::UserFacts {
                sub: &session.sub,
                email: session.email.as_deref(),
                claims: &session.claims,
                issuer,
                client_id: &session.client_id,
                client_name: session.client_name.as_deref(),
            })
        })
        .clone()
}

pub fn script_request(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    call: Option<&McpCall>,
) -> Dynamic {
    let mut header_map = Map::new();
    for (name, value) in headers {
        // Credentials are not the policy's business, and what a client
        // claims about its connection (X-Forwarded-For, X-Real-IP, ...) is
        // not evidence: a policy must not allow on it.
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
    let opt = |v: Option<&str>| {
        v.map(|s| Dynamic::from(s.to_string()))
            .unwrap_or(Dynamic::UNIT)
    };
    let mut mcp = Map::new();
    mcp.insert("method".into(), opt(call.and_then(|c| c.method.as_deref())));
    mcp.insert("tool".into(), opt(call.and_then(McpCall::tool)));
    mcp.insert("resource".into(), opt(call.and_then(McpCall::resource)));
    mcp.insert("prompt".into(), opt(call.and_then(McpCall::prompt)));
    let mut request = Map::new();
    request.insert("method".into(), method.as_str().to_string().into());
    request.insert("path".into(), path.to_string().into());
    request.insert(
        "protocol_version".into(),
        opt(headers
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok())),
    );
    request.insert(
        "headers".into(),
        Dynamic::from_map(header_map).into_read_only(),
    );
    request.insert("mcp".into(), Dynamic::from_map(mcp));
    Dynamic::from_map(request)
}

#[derive(Clone)]
pub struct EnforcePolicyLayer {
    engine: Arc<PolicyEngine>,
    issuer: Arc<str>,
    max_body: usize,
    metrics: Option<Arc<Metrics>>,
}

impl EnforcePolicyLayer {
    pub fn new(
        engine: Arc<PolicyEngine>,
        issuer: &str,
        max_body: usize,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        EnforcePolicyLayer {
            engine,
            issuer: issuer.into(),
            max_body,
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
                let calls = parse_calls(&bytes)?;
                check_routing_headers(&parts.headers, &calls)?;
                (Body::from(bytes), calls)
            } else {
                (body, Vec::new())
            };
            let policy = layer.engine.current();
            let user = script_user(&session, &layer.issuer);
            let path = parts.uri.path().to_string();
            let mut headers = Vec::new();
            let evaluations: Vec<Option<&McpCall>> = if calls.is_empty() {
                vec![None]
            } else {
                calls.iter().map(Some).collect()
            };
            let audit = parts.extensions.get::<AuditSlot>().cloned();
            if let (Some(slot), Some(first)) = (&audit, calls.first()) {
                slot.update(|facts| {
                    facts.mcp_method = first.method.clone();
                    facts.tool = first.tool().map(str::to_string);
                });
            }
            for call in evaluations {
                let started = std::time::Instant::now();
                let decision = decide(&layer.engine, &policy, &session, &user, || {
                    script_request(&parts.method, &path, &parts.headers, call)
                });
                let label = if matches!(decision, Decision::Allow { .. }) {
                    "allow"
                } else {
                    "deny"
                };
                if let Some(metrics) = &layer.metrics {
                    metrics
                        .policy_duration
                        .observe(started.elapsed().as_secs_f64());
                    metrics.policy_decisions.with_label_values(&[label]).inc();
                }
                if let Some(slot) = &audit {
                    slot.update(|facts| facts.decision = Some(label));
                }
                match decision {
                    Decision::Allow { headers: h } => headers = h,
                    Decision::Deny { status, reason } => {
                        tracing::info!(
                            sub = %session.sub,
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
            parts.extensions.insert(PolicyOutcome { headers, policy });
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
        let calls = parse_calls(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#).unwrap();
        assert_eq!(calls[0].tool(), Some("whoami"));
        let calls = parse_calls(br#"[{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#).unwrap();
        assert_eq!(calls[0].resource(), Some("file:///a"));
        assert_eq!(
            calls[1].method.as_deref(),
            Some("notifications/initialized")
        );
        assert!(parse_calls(b"not json").is_err());
        assert!(parse_calls(b"[]").is_err());
    }

    #[test]
    fn routing_headers_must_agree_with_the_body() {
        let calls = parse_calls(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}}"#,
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
}
