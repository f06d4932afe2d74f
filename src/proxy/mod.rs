//! Forwarder: the last service of the MCP stack. It streams the request to
//! the downstream MCP server over a pooled hyper client and streams the
//! answer back, event by event.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Method, Request, Response, Uri};
use futures_util::StreamExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::Service;
use url::Url;

use crate::client_address::TrustedProxies;
use crate::error::error_chain;
use crate::error::ProxyError;
use crate::metrics::{status_class, Metrics};
use crate::session::{PolicyOutcome, Session, SessionWatch};

pub mod headers;
pub mod origin;
pub mod sessions;
pub mod sse;
pub mod unambiguous;

use sessions::{Binding, SessionBindings, MCP_SESSION_ID};
const SESSION_KIND: &str = "mcp";
const LEGACY_KIND: &str = "sse";
/// The proxy's message endpoint for legacy SSE clients.
pub const LEGACY_MESSAGE_PATH: &str = "/sse/message";

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// A pooled client for http and https downstreams.
pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(https)
}

/// Which MCP route a forwarder serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Streamable HTTP: POST, GET and DELETE /mcp.
    Mcp,
    /// Legacy HTTP+SSE: GET /sse.
    SseStream,
    /// Legacy HTTP+SSE: POST to the message endpoint announced on /sse.
    SseMessage,
}

/// A downstream endpoint, parsed once.
pub struct DownstreamTarget {
    url: Url,
    uri: Uri,
}

impl DownstreamTarget {
    pub fn new(url: &Url) -> Result<Self, String> {
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

/// Everything forwarders share.
pub struct ForwardContext {
    pub client: HttpClient,
    pub sessions: Arc<SessionBindings>,
    pub public_host: String,
    pub public_proto: String,
    pub downstream: DownstreamTarget,
    pub downstream_sse: Option<DownstreamTarget>,
    pub response_timeout: Duration,
    pub sse_idle_timeout: Duration,
    /// `downstream.pass_cookies`: the only cookies that cross, both ways.
    pub pass_cookies: Vec<String>,
    /// `server.trusted_proxies`: peers whose X-Forwarded-For is kept.
    pub trusted_proxies: TrustedProxies,
    pub metrics: Option<Arc<Metrics>>,
}

#[derive(Clone)]
pub struct Forwarder {
    context: Arc<ForwardContext>,
    route: Route,
}

impl Route {
    /// The route as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Route::Mcp => "/mcp",
            Route::SseStream => "/sse",
            Route::SseMessage => LEGACY_MESSAGE_PATH,
        }
    }
}

impl Forwarder {
    pub fn new(context: Arc<ForwardContext>, route: Route) -> Self {
        Forwarder { context, route }
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
        let context = self.context.clone();
        let route = self.route;
        Box::pin(async move { forward(&context, route, request).await })
    }
}

async fn forward(
    context: &ForwardContext,
    route: Route,
    request: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let allowed = match route {
        Route::Mcp => matches!(
            request.method(),
            &Method::POST | &Method::GET | &Method::DELETE
        ),
        Route::SseStream => request.method() == Method::GET,
        Route::SseMessage => request.method() == Method::POST,
    };
    if !allowed {
        return Err(ProxyError::MethodNotAllowed);
    }
    let session = request
        .extensions()
        .get::<Arc<Session>>()
        .cloned()
        .ok_or(ProxyError::Forbidden("no authenticated session".into()))?;
    let outcome = request
        .extensions()
        .get::<PolicyOutcome>()
        .cloned()
        .ok_or(ProxyError::Forbidden("no policy decision".into()))?;

    let presented_session = sessions::presented_session_id(request.headers())?.map(str::to_string);
    let target = match route {
        Route::Mcp => {
            if let Some(id) = &presented_session {
                let owner = context.sessions.get(SESSION_KIND, id).await?;
                if owner.is_none_or(|b| b.sub != session.sub) {
                    return Err(ProxyError::SessionNotFound);
                }
            }
            context.downstream.for_request(request.uri())
        }
        Route::SseStream => {
            let sse = context
                .downstream_sse
                .as_ref()
                .ok_or(ProxyError::NotConfigured(
                    "legacy SSE is not enabled here (downstream.sse_url is not set)",
                ))?;
            sse.for_request(request.uri())
        }
        Route::SseMessage => {
            let sids: Vec<String> = request
                .uri()
                .query()
                .map(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .filter(|(k, _)| k == "sid")
                        .map(|(_, v)| v.into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let sid = match <[String; 1]>::try_from(sids) {
                Ok([sid]) => sid,
                Err(sids) if sids.is_empty() => {
                    return Err(ProxyError::BadRequest(
                        "the message endpoint needs its sid".into(),
                    ))
                }
                Err(_) => {
                    return Err(ProxyError::BadRequest(
                        "the message endpoint takes one sid".into(),
                    ))
                }
            };
            let binding = context.sessions.get(LEGACY_KIND, &sid).await?;
            match binding {
                Some(Binding {
                    sub,
                    endpoint: Some(endpoint),
                }) if sub == session.sub => endpoint
                    .parse::<Uri>()
                    .map_err(|_| ProxyError::SessionNotFound)?,
                _ => return Err(ProxyError::SessionNotFound),
            }
        }
    };

    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let is_delete = request.method() == Method::DELETE;
    let session_watch = request.extensions().get::<SessionWatch>().cloned();
    let (parts, body) = request.into_parts();
    let mut headers = headers::downstream_request_headers(
        &parts.headers,
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
    if route != Route::Mcp {
        // Ownership is checked on /mcp only; elsewhere a session id would
        // reach a downstream that serves both transports unchecked.
        headers.remove(MCP_SESSION_ID);
    }
    let mut outgoing = Request::builder()
        .method(parts.method.clone())
        .uri(target.clone())
        .version(axum::http::Version::HTTP_11)
        .body(body)
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    *outgoing.headers_mut() = headers;

    let started = std::time::Instant::now();
    let response = match tokio::time::timeout(
        context.response_timeout,
        context.client.request(outgoing),
    )
    .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            if let Some(m) = &context.metrics {
                m.downstream_connect_errors.inc();
            }
            return Err(ProxyError::DownstreamUnreachable(error_chain(&e)));
        }
        Err(_) => {
            if let Some(m) = &context.metrics {
                m.downstream_timeouts.inc();
            }
            return Err(ProxyError::DownstreamTimeout(context.response_timeout));
        }
    };
    let route_label = route.label();
    if let Some(m) = &context.metrics {
        m.downstream_requests
            .with_label_values(&[route_label, status_class(response.status().as_u16())])
            .inc();
        m.downstream_duration
            .with_label_values(&[route_label])
            .observe(started.elapsed().as_secs_f64());
    }

    let (mut parts, body) = response.into_parts();
    parts.headers = headers::client_response_headers(&parts.headers, &context.pass_cookies);
    if route == Route::Mcp {
        // A session id the client could not send back unambiguously is the
        // downstream's fault; nothing of it reaches the client.
        sessions::created_session_id(&parts.headers)?;
    }
    if route == Route::Mcp && parts.status.is_success() {
        if let Some(created) = sessions::created_session_id(&parts.headers)? {
            if presented_session.as_deref() != Some(created) {
                context
                    .sessions
                    .bind(
                        SESSION_KIND,
                        created,
                        Binding {
                            sub: session.sub.clone(),
                            endpoint: None,
                        },
                    )
                    .await?;
            }
        }
        if is_delete {
            if let Some(id) = &presented_session {
                context.sessions.unbind(SESSION_KIND, id).await;
            }
        }
    }
    let is_event_stream = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let body = Body::new(body);
    let body = if is_event_stream {
        // Proxies and browsers must not buffer or transform the stream.
        parts.headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-transform"),
        );
        parts
            .headers
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
        let timed = Body::new(sse::IdleTimeout::new(body, context.sse_idle_timeout));
        let timed = match &context.metrics {
            Some(m) => Body::new(sse::Counted::new(timed, m.clone(), route_label)),
            None => timed,
        };
        let stream = if route == Route::SseStream && parts.status.is_success() {
            rewrite_endpoint(
                context.sessions.clone(),
                timed,
                &target,
                session.sub.clone(),
            )
        } else {
            timed
        };
        // A stream never outlives its token (invariant 11).
        match session_watch {
            Some(watch) => Body::new(sse::EndsWithSession::new(
                stream,
                watch.until_end(session.clone()),
            )),
            None => stream,
        }
    } else {
        body
    };
    Ok(Response::from_parts(parts, body))
}

/// Rewrites the legacy `endpoint` event to the proxy's message endpoint and
/// remembers where (and for whom) the downstream wants the messages.
fn rewrite_endpoint(
    bindings: Arc<SessionBindings>,
    body: Body,
    stream_url: &Uri,
    sub: String,
) -> Body {
    let base = Url::parse(&stream_url.to_string()).ok();
    let mut rewriter = sse::EndpointRewriter::default();
    let stream = body.into_data_stream().then(move |chunk| {
        let bindings = bindings.clone();
        let base = base.clone();
        let sub = sub.clone();
        let step = chunk.and_then(|bytes| rewriter.feed(&bytes).map_err(axum::Error::new));
        async move {
            let step = step?;
            let mut out = step.before;
            if let Some(data) = step.endpoint {
                let endpoint = base
                    .as_ref()
                    .and_then(|b| b.join(&data).ok())
                    .map(|u| u.to_string())
                    .unwrap_or(data);
                let sid = crate::crypto::random_token();
                bindings
                    .bind(
                        LEGACY_KIND,
                        &sid,
                        Binding {
                            sub,
                            endpoint: Some(endpoint),
                        },
                    )
                    .await
                    .map_err(axum::Error::new)?;
                out.extend(sse::endpoint_event(&format!(
                    "{LEGACY_MESSAGE_PATH}?sid={sid}"
                )));
                out.extend(step.after);
            }
            Ok::<Bytes, axum::Error>(Bytes::from(out))
        }
    });
    Body::from_stream(stream)
}
