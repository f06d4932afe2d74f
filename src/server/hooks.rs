//! Hooks: the named points of each MCP route's stack where an embedding
//! program inserts its own `tower::Layer` (see `embed`), and what such a
//! layer may read of a request.
//!
//! A hook is present only when a layer was registered for it: otherwise
//! `stack.rs` inserts nothing there (no boxing, no extra call). Where one
//! is present, the errors of the layers below it are rendered first (the
//! same `Rescue` the stack ends with), so the user's layer wraps a service
//! that always answers with a response: it sees refusals and downstream
//! failures as the client will, and never has to name the proxy's errors.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use serde_json::{json, Value};
use tower::util::{BoxCloneSyncService, MapErr};
use tower::{BoxError, Layer, Service, ServiceExt};

use crate::error::ProxyError;
use crate::policy::layer::McpCall;
use crate::server::rescue::RescueLayer;
use crate::session::Session;

/// A named point in each MCP route's stack where [`Proxy::layer`] inserts a
/// layer. Outermost first, the stack runs: authentication and the rate
/// limits → **`AfterAuthentication`** → the policy → **`AfterPolicy`** →
/// list filtering, allowed methods, session ownership →
/// **`BeforeForwarding`** → the forwarder.
///
/// ```
/// use mcp_oauth_proxy::embed::{Hook, Proxy};
/// use tower::util::MapRequestLayer;
///
/// # fn build(proxy: Proxy) -> Proxy {
/// // Tell the downstream which route served the request, just before it is sent.
/// proxy.layer_with(Hook::BeforeForwarding, |route| {
///     let name = http::HeaderValue::from_str(route.name()).ok();
///     MapRequestLayer::new(move |mut request: http::Request<axum::body::Body>| {
///         if let Some(name) = &name {
///             request.headers_mut().insert("x-served-by", name.clone());
///         }
///         request
///     })
/// })
/// # }
/// ```
///
/// [`Proxy::layer`]: crate::embed::Proxy::layer
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// The caller is known ([`session`] answers) and its rate limits
    /// passed; the policy has not run and the body is unread, so
    /// [`mcp_calls`] is empty here.
    AfterAuthentication,
    /// The policy allowed every call of the request and chose the identity
    /// headers; [`mcp_calls`] holds what it read. A layer here sees list
    /// answers after the policy filtered them.
    AfterPolicy,
    /// The session-ownership checks passed; the next step is the forwarder,
    /// which sends the request to the route's downstream. It treats the
    /// request's headers as the client's, whoever set them: a header a
    /// layer sets arrives unless it is one the proxy strips from clients
    /// (`X-User-*` and any a policy may set, names with `_`,
    /// `Authorization`, cookies, forwarding headers). Set with `insert`
    /// (and `remove` when there is no value), so a client's copy never
    /// passes in its place.
    BeforeForwarding,
}

impl Hook {
    /// Every hook, outermost first.
    pub const ALL: [Hook; 3] = [
        Hook::AfterAuthentication,
        Hook::AfterPolicy,
        Hook::BeforeForwarding,
    ];
}

/// The route a layer is being built for: `Proxy::layer_with` calls its
/// factory once per route, and the layer it returns serves each of the
/// route's endpoints (`path`, and with legacy SSE the stream and its
/// message endpoint).
#[derive(Debug, Clone, Copy)]
pub struct RouteInfo<'a> {
    name: &'a str,
    path: &'a str,
    sse_path: Option<&'a str>,
}

impl<'a> RouteInfo<'a> {
    pub(crate) fn new(name: &'a str, path: &'a str, sse_path: Option<&'a str>) -> Self {
        RouteInfo {
            name,
            path,
            sse_path,
        }
    }

    /// The route's `name` (`default` for the `[downstream]` route).
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// Its Streamable HTTP endpoint on the proxy, e.g. `/wiki/mcp`.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// Its legacy SSE endpoint, when it has one (messages go to
    /// `<sse_path>/message`).
    pub fn sse_path(&self) -> Option<&'a str> {
        self.sse_path
    }
}

/// What a hook layer wraps: the rest of the route's stack, boxed. It never
/// fails: the proxy's own refusals and failures below the hook arrive as
/// responses (JSON-RPC errors with their HTTP status).
pub type HookService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Who is calling: the session the bearer token stands for. Present at
/// every hook.
pub fn session<B>(request: &Request<B>) -> Option<&Session> {
    request.extensions().get::<Arc<Session>>().map(Arc::as_ref)
}

/// The JSON-RPC messages of the request as the policy read them: one for a
/// single message, each of a batch, none for a GET or DELETE — and none
/// before the policy ran (at [`Hook::AfterAuthentication`]).
pub fn mcp_calls<B>(request: &Request<B>) -> &[McpCall] {
    let extensions = request.extensions();
    if let Some(call) = extensions.get::<McpCall>() {
        return std::slice::from_ref(call);
    }
    extensions
        .get::<Arc<[McpCall]>>()
        .map_or(&[], |calls| &calls[..])
}

/// A JSON-RPC error response, as the proxy writes its own refusals:
/// `{"jsonrpc":"2.0","error":{"code":…,"message":…},"id":…}` with `status`
/// (the id is `null` when `id` is `None`). Codes from -32000 to -32099 are
/// the server's to define; the proxy uses -32001 (authentication), -32002
/// (session), -32003 (denied) and -32000 (its own failures).
pub fn json_rpc_error(
    status: StatusCode,
    code: i64,
    message: &str,
    id: Option<&Value>,
) -> Response<Body> {
    let body = json!({
        "jsonrpc": "2.0",
        "error": { "code": code, "message": message },
        "id": id.cloned().unwrap_or(Value::Null),
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A registered layer, type-erased: wraps the service below it.
pub(crate) type Wrap = Arc<dyn Fn(HookService) -> HookService + Send + Sync>;

/// Builds a route's `Wrap` for one hook.
pub(crate) type Factory = Box<dyn Fn(&RouteInfo<'_>) -> Wrap + Send + Sync>;

/// Type-erases a user's layer: its service is boxed, and an error it
/// returns becomes a 500 JSON-RPC error (logged), so any tower middleware
/// fits.
pub(crate) fn wrap<L>(layer: L) -> Wrap
where
    L: Layer<HookService> + Send + Sync + 'static,
    L::Service: Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request<Body>>>::Error: Into<BoxError>,
    <L::Service as Service<Request<Body>>>::Future: Send + 'static,
{
    Arc::new(move |inner: HookService| {
        BoxCloneSyncService::new(Answered {
            inner: layer.layer(inner),
            failed: None,
        })
    })
}

/// A user's service whose errors, from `poll_ready` or `call`, become
/// responses.
struct Answered<S> {
    inner: S,
    /// Why `poll_ready` failed: the next call is answered with it.
    failed: Option<String>,
}

impl<S: Clone> Clone for Answered<S> {
    fn clone(&self) -> Self {
        // A clone has not been polled: it asks its inner service afresh.
        Answered {
            inner: self.inner.clone(),
            failed: None,
        }
    }
}

type AnsweredFuture<F, E> = futures_util::future::Either<
    std::future::Ready<Result<Response<Body>, Infallible>>,
    futures_util::future::Map<
        F,
        fn(Result<Response<Body>, E>) -> Result<Response<Body>, Infallible>,
    >,
>;

impl<S> Service<Request<Body>> for Answered<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = AnsweredFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                self.failed = Some(e.into().to_string());
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        use futures_util::FutureExt;
        match self.failed.take() {
            Some(error) => futures_util::future::Either::Left(std::future::ready(Ok(
                extension_failed(error.into()),
            ))),
            None => futures_util::future::Either::Right(
                self.inner
                    .call(request)
                    .map(answer::<S::Error> as fn(_) -> _),
            ),
        }
    }
}

fn answer<E: Into<BoxError>>(
    result: Result<Response<Body>, E>,
) -> Result<Response<Body>, Infallible> {
    Ok(result.unwrap_or_else(|e| extension_failed(e.into())))
}

/// An error from an embedding program's layer: the client learns only that
/// the request failed; the cause goes to the log, as the proxy's own
/// failures do.
fn extension_failed(error: BoxError) -> Response<Body> {
    tracing::warn!(error = %error, "an embedded layer failed the request");
    json_rpc_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        -32000,
        "the proxy could not complete the request; see its log",
        None,
    )
}

/// One registration: a hook, the route it is limited to (`None`: every
/// route) and the factory.
struct Registered {
    hook: Hook,
    route: Option<String>,
    factory: Factory,
}

/// Every layer the embedding program registered, in registration order.
#[derive(Default)]
pub(crate) struct Hooks(Vec<Registered>);

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|r| (r.hook, r.route.as_deref())))
            .finish()
    }
}

impl Hooks {
    /// Adds a registration; the first one registered for a hook runs first.
    pub(crate) fn push(&mut self, hook: Hook, route: Option<String>, factory: Factory) {
        self.0.push(Registered {
            hook,
            route,
            factory,
        });
    }

    /// The route names registrations are limited to.
    pub(crate) fn route_names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|r| r.route.as_deref())
    }

    /// The layers of one route, each hook's built once (the route's
    /// endpoints share them).
    pub(crate) fn for_route(&self, route: &RouteInfo<'_>) -> RouteHooks {
        RouteHooks(Hook::ALL.map(|hook| {
            let wraps: Vec<Wrap> = self
                .0
                .iter()
                .filter(|r| r.hook == hook && r.route.as_deref().is_none_or(|n| n == route.name()))
                .map(|r| (r.factory)(route))
                .collect();
            (!wraps.is_empty()).then(|| HookLayer {
                wraps: wraps.into(),
            })
        }))
    }
}

/// One route's layers at each hook, in `Hook::ALL` order; `None` where no
/// registration applies (then the stack has nothing at that point).
pub(crate) struct RouteHooks([Option<HookLayer>; 3]);

impl RouteHooks {
    pub(crate) fn at(&self, hook: Hook) -> Option<HookLayer> {
        let index = Hook::ALL.iter().position(|h| *h == hook)?;
        self.0[index].clone()
    }
}

/// The service a hook puts in the stack: the user's layers around the
/// rescued rest of the stack, back in the stack's error type.
pub(crate) type Hooked = MapErr<HookService, fn(Infallible) -> ProxyError>;

/// The registered layers of one hook on one endpoint.
#[derive(Clone)]
pub(crate) struct HookLayer {
    wraps: Arc<[Wrap]>,
}

fn never(e: Infallible) -> ProxyError {
    match e {}
}

impl<S> Layer<S> for HookLayer
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Service = Hooked;

    fn layer(&self, inner: S) -> Hooked {
        let below = BoxCloneSyncService::new(RescueLayer.layer(inner));
        // The first registered is the outermost: it sees the request first.
        let wrapped = self
            .wraps
            .iter()
            .rev()
            .fold(below, |service, wrap| wrap(service));
        wrapped.map_err(never as fn(Infallible) -> ProxyError)
    }
}

#[cfg(test)]
mod tests;
