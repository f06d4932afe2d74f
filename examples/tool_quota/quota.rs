//! The layers the `tool_quota` example adds to the proxy, and the proxy
//! they make. `tests/embedding.rs` includes this file and drives the same
//! proxy against test doubles.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{header, HeaderValue, Request, Response, StatusCode};
use mcp_oauth_proxy::embed::{json_rpc_error, mcp_calls, session, Hook, Proxy, StartError};
use serde_json::Value;
use tower::util::MapRequestLayer;
use tower::{Layer, Service};

/// The JSON-RPC code of a quota refusal: the proxy's code for a refused
/// request, so clients treat it as they treat a policy denial.
pub const QUOTA_EXCEEDED: i64 = -32003;

/// The header the downstream reads the caller's organisation from.
pub const TENANT_HEADER: &str = "x-tenant";

/// The proxy `config` describes, with on every route a quota of `calls`
/// tool calls per `period` per user and tool (after the policy: calls it
/// refuses cost nothing), and the caller's tenant sent downstream.
pub fn proxy(config: &Path, calls: u32, period: Duration) -> Result<Proxy, StartError> {
    Ok(Proxy::from_config_file(config)?
        .layer_with(Hook::AfterPolicy, move |route| {
            ToolQuota::new(route.name(), calls, period)
        })
        .layer(Hook::BeforeForwarding, tenant_header()))
}

/// A user (`Session::sub`, shared rather than copied) and a tool.
type UserTool = (Arc<str>, String);

/// At most `calls` calls of each tool per user per `period` (a fixed
/// window per user and tool), on one route. The counts live in this
/// process: replicas would each count on their own (keep them in Redis
/// for that), and expired windows are swept only once there are many.
#[derive(Clone)]
pub struct ToolQuota {
    route: Arc<str>,
    calls: u32,
    period: Duration,
    windows: Arc<Mutex<HashMap<UserTool, Window>>>,
}

/// One user's use of one tool in the current window.
struct Window {
    started: Instant,
    used: u32,
}

/// Windows kept before the expired ones are swept.
const SWEEP_AT: usize = 10_000;

impl ToolQuota {
    /// The quota of the route named `route`.
    pub fn new(route: &str, calls: u32, period: Duration) -> ToolQuota {
        ToolQuota {
            route: route.into(),
            calls,
            period,
            windows: Default::default(),
        }
    }

    /// Counts the request's tool calls against the caller's quota; when
    /// one would exceed it, counts nothing and returns the refusal. A batch
    /// counts each of its calls.
    fn charge(&self, request: &Request<Body>) -> Option<Response<Body>> {
        // After the policy there is always a session; without one there
        // is no one to charge.
        let caller = session(request)?;
        let mut wanted: Vec<(&str, u32, Option<&Value>)> = Vec::new();
        for call in mcp_calls(request) {
            let Some(tool) = call.tool() else { continue };
            match wanted.iter_mut().find(|(t, _, _)| *t == tool) {
                Some((_, n, _)) => *n += 1,
                None => wanted.push((tool, 1, call.id.as_ref())),
            }
        }
        if wanted.is_empty() {
            return None;
        }
        let now = Instant::now();
        // A panic elsewhere while holding the lock leaves counts that are
        // still counts: carry on with them.
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= SWEEP_AT {
            windows.retain(|_, w| now.duration_since(w.started) < self.period);
        }
        for (tool, n, id) in &wanted {
            let key = (caller.sub.clone(), tool.to_string());
            let window = windows.entry(key).or_insert(Window {
                started: now,
                used: 0,
            });
            if now.duration_since(window.started) >= self.period {
                *window = Window {
                    started: now,
                    used: 0,
                };
            }
            if window.used + n > self.calls {
                let retry = self
                    .period
                    .saturating_sub(now.duration_since(window.started));
                return Some(self.refusal(tool, retry, *id));
            }
        }
        for (tool, n, _) in wanted {
            if let Some(window) = windows.get_mut(&(caller.sub.clone(), tool.to_string())) {
                window.used += n;
            }
        }
        None
    }

    /// 429 with `Retry-After`, as a JSON-RPC error answering the call.
    fn refusal(&self, tool: &str, retry: Duration, id: Option<&Value>) -> Response<Body> {
        // Whole seconds, rounded up: an early retry would be refused again.
        let seconds = (retry.as_secs() + u64::from(retry.subsec_nanos() > 0)).max(1);
        tracing::info!(route = %self.route, tool, "tool quota exceeded");
        let message = format!(
            "quota exceeded: at most {} calls of {tool} per {}; retry in {seconds} s",
            self.calls,
            humantime::format_duration(self.period)
        );
        let mut response =
            json_rpc_error(StatusCode::TOO_MANY_REQUESTS, QUOTA_EXCEEDED, &message, id);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        response
    }
}

impl<S> Layer<S> for ToolQuota {
    type Service = ToolQuotaService<S>;

    fn layer(&self, inner: S) -> ToolQuotaService<S> {
        ToolQuotaService {
            quota: self.clone(),
            inner,
        }
    }
}

/// [`ToolQuota`] in front of the rest of the route's stack.
#[derive(Clone)]
pub struct ToolQuotaService<S> {
    quota: ToolQuota,
    inner: S,
}

impl<S> Service<Request<Body>> for ToolQuotaService<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match self.quota.charge(&request) {
            None => Box::pin(self.inner.call(request)),
            Some(refusal) => Box::pin(std::future::ready(Ok(refusal))),
        }
    }
}

/// Sends the caller's tenant downstream as `X-Tenant`: the domain of their
/// verified email. `insert` replaces a copy the client sent; without a
/// tenant the header is removed, so a client's value never passes. (Names
/// starting with `X-User-` would not arrive: the proxy strips every client
/// header that could pass for its identity headers.)
pub fn tenant_header() -> MapRequestLayer<fn(Request<Body>) -> Request<Body>> {
    MapRequestLayer::new(set_tenant as fn(Request<Body>) -> Request<Body>)
}

fn set_tenant(mut request: Request<Body>) -> Request<Body> {
    let tenant = session(&request)
        .filter(|s| s.claims.get("email_verified") != Some(&Value::Bool(false)))
        .and_then(|s| s.email.as_deref())
        .and_then(|email| email.rsplit_once('@'))
        .and_then(|(_, domain)| HeaderValue::from_str(&domain.to_ascii_lowercase()).ok());
    match tenant {
        Some(tenant) => request.headers_mut().insert(TENANT_HEADER, tenant),
        None => request.headers_mut().remove(TENANT_HEADER),
    };
    request
}
