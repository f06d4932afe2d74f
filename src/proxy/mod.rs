//! Forwarder: the last service of the MCP stack. It streams the request to
//! the downstream MCP server over a pooled hyper client and streams the
//! answer back, event by event. Around it: `headers` (what crosses, both
//! ways), `sessions` (who owns a session; the layer right above the
//! forwarder), `sse` (what an event-stream answer gets), `origin` and
//! `unambiguous` (checks higher up the stack).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::response::Parts;
use axum::http::{Method, Request, Response, StatusCode, Uri};
use tower::Service;
use url::Url;

use crate::assertion::RouteAssertions;
use crate::client_address::TrustedProxies;
use crate::clock;
use crate::error::error_chain;
use crate::error::ProxyError;
use crate::metrics::labels::McpEndpoint;
use crate::metrics::{EndpointMetrics, Metrics};
use crate::session::{PolicyOutcome, Session, SessionWatch};

pub(crate) mod downstream;
pub(crate) mod headers;
pub(crate) mod methods;
pub(crate) mod origin;
pub(crate) mod sessions;
pub(crate) mod sse;
pub(crate) mod unambiguous;

use downstream::{DownstreamClient, DownstreamError, DrivenBody, Outgoing};
use sessions::{Binding, OwnedSession, SessionBindings, MCP_SESSION_ID, SESSION_KIND};

/// Which MCP route a forwarder serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// Streamable HTTP: POST, GET and DELETE /mcp.
    Mcp,
    /// Legacy HTTP+SSE: GET /sse.
    SseStream,
    /// Legacy HTTP+SSE: POST to the message endpoint announced on /sse.
    SseMessage,
}

/// A downstream endpoint, parsed once.
pub(crate) struct DownstreamTarget {
    url: Url,
    uri: Uri,
}

impl DownstreamTarget {
    /// The endpoint at `url`; an error says why it cannot be a request URI.
    pub(crate) fn new(url: &Url) -> Result<Self, String> {
        let uri = url
            .as_str()
            .parse::<Uri>()
            .map_err(|e| format!("{url} is not a request URI: {e}"))?;
        Ok(DownstreamTarget {
            url: url.clone(),
            uri,
        })
    }

    /// The target of one request: the client's query string, if any, joins
    /// the configured one.
    fn for_request(&self, client: &Uri) -> Uri {
        let Some(query) = client.query() else {
            return self.uri.clone();
        };
        let mut url = self.url.clone();
        let merged = match self.url.query() {
            Some(existing) => format!("{existing}&{query}"),
            None => query.to_string(),
        };
        url.set_query(Some(&merged));
        url.as_str().parse().unwrap_or_else(|_| self.uri.clone())
    }
}

/// Everything one route's forwarders share.
pub(crate) struct ForwardContext {
    /// The route's name.
    pub route: Arc<str>,
    /// The route's downstream connections.
    pub client: DownstreamClient,
    /// Which user each MCP session belongs to.
    pub sessions: Arc<SessionBindings>,
    /// The proxy's public host, sent as `X-Forwarded-Host`.
    pub public_host: axum::http::HeaderValue,
    /// The proxy's public scheme, sent as `X-Forwarded-Proto`.
    pub public_proto: axum::http::HeaderValue,
    /// `downstream.url`: where `/mcp` goes.
    pub downstream: DownstreamTarget,
    /// `downstream.sse_url`: where `/sse` goes, when legacy SSE is on.
    pub downstream_sse: Option<DownstreamTarget>,
    /// The route's legacy message endpoint (`<sse_path>/message`).
    pub message_path: Arc<str>,
    /// `downstream.response_timeout`: until the downstream's answer starts.
    pub response_timeout: Duration,
    /// `downstream.sse_idle_timeout`: the longest silence on an event stream.
    pub sse_idle_timeout: Duration,
    /// `downstream.pass_cookies`: the only cookies that cross, both ways.
    pub pass_cookies: Vec<String>,
    /// `server.trusted_proxies`: peers whose X-Forwarded-For is kept.
    pub trusted_proxies: TrustedProxies,
    /// The registry; each forwarder resolves its route's and endpoint's
    /// series from it once (`Forwarder::new`).
    pub metrics: Arc<Metrics>,
    /// Signs the identity assertions the route's policy asks for.
    pub assertions: RouteAssertions,
    /// When a caller's session ends (revoked, expired): their open event
    /// streams end with it. The token cache's, the same for every request.
    pub session_watch: SessionWatch,
}

/// The last service of an MCP route: sends the request downstream and
/// streams the answer back. The layers above have authenticated the caller,
/// applied the policy, checked the methods and the session's owner.
#[derive(Clone)]
pub(crate) struct Forwarder {
    context: Arc<ForwardContext>,
    route: Endpoint,
    metrics: EndpointMetrics,
}

impl Endpoint {
    /// The endpoint as a metric label.
    pub(crate) fn metric(self) -> McpEndpoint {
        match self {
            Endpoint::Mcp => McpEndpoint::Mcp,
            Endpoint::SseStream => McpEndpoint::Sse,
            Endpoint::SseMessage => McpEndpoint::SseMessage,
        }
    }
}

impl Forwarder {
    /// The forwarder of one endpoint of the route `context` serves.
    pub(crate) fn new(context: Arc<ForwardContext>, route: Endpoint) -> Self {
        let metrics = context
            .metrics
            .route(&context.route)
            .endpoint(route.metric());
        Forwarder {
            context,
            route,
            metrics,
        }
    }
}

impl Service<Request<Body>> for Forwarder {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        Box::pin(forward(
            self.context.clone(),
            self.route,
            self.metrics.clone(),
            request,
        ))
    }
}

/// What the layers above established about the caller, taken from the
/// request's extensions (the forwarder is the last to read them: taken,
/// the policy's header list is not copied). Each is required: a stack
/// missing one of those layers fails closed.
struct Caller {
    session: Arc<Session>,
    outcome: PolicyOutcome,
    owned: OwnedSession,
}

impl Caller {
    fn of(request: &mut Request<Body>) -> Result<Caller, ProxyError> {
        let session = crate::session::authenticated(request).ok_or_else(ProxyError::no_session)?;
        let extensions = request.extensions_mut();
        let outcome = extensions
            .remove::<PolicyOutcome>()
            .ok_or_else(|| ProxyError::Forbidden("no policy decision".into()))?;
        let owned = extensions
            .remove::<OwnedSession>()
            .ok_or_else(|| ProxyError::Forbidden("no session ownership check".into()))?;
        Ok(Caller {
            session,
            outcome,
            owned,
        })
    }
}

/// One request, downstream and back.
///
/// Its future is boxed for every request (`Forwarder::call`), so it is
/// kept small: an `async` block rather than an `async fn`, whose arguments
/// its future would hold twice (rust-lang/rust#62958), and the waits only
/// some requests have (an identity assertion signed, a session bound or
/// ended) boxed where they happen. Measured with `-Zprint-type-sizes`:
/// 2,688 bytes before, copied into a new allocation each request.
fn forward(
    context: Arc<ForwardContext>,
    route: Endpoint,
    metrics: EndpointMetrics,
    mut request: Request<Body>,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send {
    async move {
        let mut caller = Caller::of(&mut request)?;
        context
            .assertions
            .fill_in(&mut caller.outcome, &caller.session, || {
                crate::session::request_id(&request)
            })
            .await?;
        let target = choose_target(&context, route, &caller.owned, request.uri())?;
        let is_delete = request.method() == Method::DELETE;
        let outgoing =
            downstream_request(&context, route, &caller.outcome, target.clone(), request);
        let response = send(&context, &metrics, outgoing).await?;
        let (mut parts, body) = response.into_parts();
        parts.headers = headers::client_response_headers(
            std::mem::take(&mut parts.headers),
            &context.pass_cookies,
        );
        if let OwnedSession::Mcp(presented) = &caller.owned {
            let change = SessionChange::of(&parts, presented.as_deref(), is_delete)?;
            if change.is_some() {
                let sub = &caller.session.sub;
                Box::pin(follow_sessions(&context, change, sub)).await?;
            }
        }
        let body = if sse::is_event_stream(&parts.headers) {
            let decoration =
                stream_decoration(&context, route, &metrics, parts.status, target, &caller);
            sse::decorate(&mut parts.headers, Body::new(body), decoration)
        } else {
            Body::new(body)
        };
        Ok(Response::from_parts(parts, body))
    }
}

/// Where this request goes: the configured endpoint of its route, or for a
/// legacy message the endpoint the downstream announced for its session.
fn choose_target(
    context: &ForwardContext,
    route: Endpoint,
    owned: &OwnedSession,
    client: &Uri,
) -> Result<Uri, ProxyError> {
    match (route, owned) {
        (Endpoint::Mcp, OwnedSession::Mcp(_)) => Ok(context.downstream.for_request(client)),
        (Endpoint::SseStream, OwnedSession::NewLegacyStream) => {
            let sse = context
                .downstream_sse
                .as_ref()
                .ok_or(ProxyError::NotConfigured(
                    "legacy SSE is not enabled here (downstream.sse_url is not set)",
                ))?;
            Ok(sse.for_request(client))
        }
        (Endpoint::SseMessage, OwnedSession::LegacyMessage(endpoint)) => Ok(endpoint.clone()),
        // The ownership check ran for another route: a wiring mistake.
        _ => Err(ProxyError::Forbidden("no session ownership check".into())),
    }
}

/// The request the downstream receives: the client's method and body, the
/// headers `headers.rs` lets through plus the policy's, HTTP/1.1.
fn downstream_request(
    context: &ForwardContext,
    route: Endpoint,
    outcome: &PolicyOutcome,
    target: Uri,
    request: Request<Body>,
) -> Outgoing {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (parts, body) = request.into_parts();
    let mut headers = headers::downstream_request_headers(
        parts.headers,
        |name| (outcome.strip)(name),
        &outcome.headers,
        &headers::Forwarding {
            peer,
            trusted_proxies: &context.trusted_proxies,
            public_host: &context.public_host,
            public_proto: &context.public_proto,
        },
        &context.pass_cookies,
    );
    if route != Endpoint::Mcp {
        // Ownership is checked on /mcp only; elsewhere a session id would
        // reach a downstream that serves both transports unchecked.
        headers.retain(|(name, _)| name != MCP_SESSION_ID);
    }
    Outgoing {
        method: parts.method,
        target,
        headers,
        body,
    }
}

/// Sends the request, waiting `downstream.response_timeout` at most for the
/// answer to start, and counts the outcome.
fn send<'a>(
    context: &'a ForwardContext,
    metrics: &'a EndpointMetrics,
    outgoing: Outgoing,
) -> impl Future<Output = Result<Response<DrivenBody>, ProxyError>> + Send + 'a {
    async move {
        let started = clock::now();
        let deadline = started + context.response_timeout;
        let response = match context.client.send(outgoing, deadline).await {
            Ok(response) => response,
            Err(DownstreamError::TimedOut) => {
                metrics.downstream_timeout();
                return Err(ProxyError::DownstreamTimeout(context.response_timeout));
            }
            Err(e) => {
                metrics.downstream_connect_error();
                return Err(ProxyError::DownstreamUnreachable(format!(
                    "route {}: {}",
                    context.route,
                    error_chain(&e)
                )));
            }
        };
        metrics.downstream_response(
            response.status().as_u16(),
            clock::now().saturating_duration_since(started),
        );
        Ok(response)
    }
}

/// What an answer on /mcp changes in the route's session bindings: the
/// session id it creates becomes the caller's, a successful DELETE ends
/// the presented one. Decided without waiting, so that the wait (the
/// store) is part of a request's future only when there is one.
#[derive(Debug, Default, PartialEq)]
struct SessionChange<'a> {
    bind: Option<&'a str>,
    unbind: Option<&'a str>,
}

impl<'a> SessionChange<'a> {
    fn of(
        answer: &'a Parts,
        presented: Option<&'a str>,
        is_delete: bool,
    ) -> Result<Self, ProxyError> {
        // A session id the client could not send back unambiguously is the
        // downstream's fault; nothing of it reaches the client.
        let created = sessions::created_session_id(&answer.headers)?;
        if !answer.status.is_success() {
            return Ok(SessionChange::default());
        }
        Ok(SessionChange {
            bind: created.filter(|created| presented != Some(*created)),
            unbind: presented.filter(|_| is_delete),
        })
    }

    fn is_some(&self) -> bool {
        self.bind.is_some() || self.unbind.is_some()
    }
}

/// Applies `change` for the caller `sub`.
async fn follow_sessions(
    context: &ForwardContext,
    change: SessionChange<'_>,
    sub: &str,
) -> Result<(), ProxyError> {
    if let Some(created) = change.bind {
        let binding = Binding {
            sub: sub.to_string(),
            endpoint: None,
        };
        context
            .sessions
            .bind(SESSION_KIND, created, binding)
            .await?;
    }
    if let Some(id) = change.unbind {
        context.sessions.unbind(SESSION_KIND, id).await;
    }
    Ok(())
}

/// What an event-stream answer on this route gets (see `sse`).
fn stream_decoration(
    context: &ForwardContext,
    route: Endpoint,
    metrics: &EndpointMetrics,
    status: StatusCode,
    target: Uri,
    caller: &Caller,
) -> sse::Decoration {
    let legacy = (route == Endpoint::SseStream && status.is_success()).then(|| sse::LegacyStream {
        bindings: context.sessions.clone(),
        stream_url: target,
        sub: caller.session.sub.to_string(),
        message_path: context.message_path.clone(),
    });
    sse::Decoration {
        idle_timeout: context.sse_idle_timeout,
        metrics: metrics.clone(),
        legacy,
        session_end: Some(context.session_watch.until_end(caller.session.clone())),
    }
}
