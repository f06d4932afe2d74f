//! The tower stack, composed in this one place, outermost layer last in each
//! `.layer` chain (axum applies them bottom-up). See DESIGN.md "The request
//! path".

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, Method, Request, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::future::Either;
use tower::util::{BoxCloneSyncService, Oneshot};
use tower::{Layer, Service, ServiceExt};

use crate::auth::Authenticate;
use crate::checkpoint::AroundLayer;
use crate::client_address;
use crate::config::LimitGroup;
use crate::error::{OAuthError, PageError, ProxyError};
use crate::metrics::audit::Audit;
use crate::metrics::layer::{RecordHttp, RouteTemplate};
use crate::oauth::{authorize, metadata, register, token};
use crate::policy::filter::FilterLists;
use crate::policy::layer::EnforcePolicy;
use crate::proxy::methods::AllowMethods;
use crate::proxy::origin::CheckOrigin;
use crate::proxy::sessions::CheckSessionOwnership;
use crate::proxy::unambiguous::UnambiguousHeaders;
use crate::proxy::{Endpoint, Forwarder};
use crate::rate_limit::{by_address, by_client, by_user, RateLimits};
use crate::server::cors::{Cors, CorsRules};
use crate::server::hooks::{Hook, Hooks, RouteHooks, RouteInfo};
use crate::server::request_id::RequestIds;
use crate::server::rescue::RescueLayer;
use crate::server::routes::ServedRoute;
use crate::server::shared::SharedEndpoint;
use crate::server::trace::TraceRequestsLayer;
use crate::server::{jwks, AppState};

/// The authorization server's routes: client-facing JSON endpoints (with
/// CORS) and browser-facing pages (without). Their handlers take
/// `OAuthState`, drawn from `AppState` (see `server::AppState`).
fn oauth_routes(app: &AppState, limits: &RateLimits) -> Router<AppState> {
    // Per client address, first on each OAuth route: refused before a
    // body is read or the store is asked. Rescue renders the refusal in
    // the route's own form (OAuth JSON for clients, a page for people).
    let oauth_limit = |group| {
        tower::ServiceBuilder::new()
            .layer(RescueLayer)
            .layer(limits.layer::<OAuthError>(group, by_address))
    };
    let page_limit = |group| {
        tower::ServiceBuilder::new()
            .layer(RescueLayer)
            .layer(limits.layer::<PageError>(group, by_address))
    };
    // Browser-based MCP clients call these from other origins; they carry
    // no cookies, so a wildcard origin exposes nothing.
    let cors = CorsLists::oauth().any_origin().layer();
    let client_facing = Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata::authorization_server),
        )
        .route(
            "/.well-known/oauth-protected-resource",
            get(metadata::protected_resource_root),
        )
        .route("/.well-known/jwks.json", get(jwks))
        .route(
            "/register",
            post(register::register)
                .layer(DefaultBodyLimit::max(register::MAX_REGISTRATION_BYTES))
                .layer(oauth_limit(LimitGroup::Register)),
        )
        .route(
            "/token",
            post(token::token)
                .layer(DefaultBodyLimit::max(token::MAX_FORM_BYTES))
                .layer(oauth_limit(LimitGroup::Token)),
        )
        .route(
            "/revoke",
            post(token::revoke)
                .layer(DefaultBodyLimit::max(token::MAX_FORM_BYTES))
                .layer(oauth_limit(LimitGroup::Token)),
        )
        .merge(protected_resources(app))
        .layer(cors);
    // Pages for a person: no CORS, ever.
    let browser_facing = Router::new()
        .route(
            "/authorize",
            get(authorize::authorize).layer(page_limit(LimitGroup::Browser)),
        )
        .route(
            "/consent",
            post(authorize::consent)
                .layer(DefaultBodyLimit::max(token::MAX_FORM_BYTES))
                .layer(page_limit(LimitGroup::Browser)),
        )
        .route(
            "/callback",
            get(authorize::callback).layer(page_limit(LimitGroup::Browser)),
        );

    client_facing.merge(browser_facing)
}

/// The public listener's service: the MCP endpoints, the OAuth routes
/// (axum's router), and the layers every request passes.
pub(crate) fn router(app: AppState, hooks: &Hooks) -> Routes {
    let limits = RateLimits::new(&app.settings.config.limits, app.metrics.clone());
    let endpoints = mcp_endpoints(&app, &limits, hooks);

    // Shared: the closure below is cloned with the stack for every request.
    let trusted_proxies = Arc::new(app.settings.trusted_proxies.clone());
    let app_metrics = app.metrics.clone();
    // The layers every request passes, outermost first, applied to the
    // router as one stack: axum boxes each route again for every
    // `Router::layer` call, and clones (allocates) every box per request,
    // so one call instead of five is four allocations less per clone.
    // `record` counts and times by route: an MCP endpoint's knows its
    // route, the router's reads the one axum matched.
    let every_request = |record| {
        let trusted_proxies = trusted_proxies.clone();
        tower::ServiceBuilder::new()
            // Every request gets an id before anything logs, and its answer
            // carries it back.
            .layer(RequestIds::layer())
            // One span per request, with method and path only: queries
            // carry codes and state, which must never reach a log. A 5xx is
            // logged as a failure at `warn` (its cause where it arose).
            .layer(TraceRequestsLayer)
            // Count and time every request by its route template; runs
            // after routing (a layer of the router, or of one endpoint),
            // so the raw path never becomes a label.
            .layer(record)
            // Who is calling, honouring `server.trusted_proxies`: resolved
            // once, before any rate limit or the audit asks. Filed only
            // when it is not the peer itself (a trusted proxy's client):
            // otherwise `ClientAddress::of` reads the peer, and a request
            // files one extension (an allocation) less.
            .layer(tower::util::MapRequestLayer::new(
                move |mut request: Request<axum::body::Body>| {
                    if let Some(resolved) =
                        client_address::behind_trusted_proxy(&request, &trusted_proxies)
                    {
                        request.extensions_mut().insert(resolved);
                    }
                    request
                },
            ))
    };
    let endpoints = endpoints
        .into_iter()
        .map(|(template, endpoint)| {
            // Axum's body type out (`TraceRequests` answers with it), as
            // axum's routes answer with.
            let endpoint =
                every_request(RecordHttp::for_route(app_metrics.clone(), template.clone()))
                    .service(endpoint);
            (template, BoxCloneSyncService::new(endpoint))
        })
        .collect();
    let others = Router::new()
        .merge(oauth_routes(&app, &limits))
        .with_state(app)
        .layer(every_request(RecordHttp::layer(app_metrics)));
    Routes::new(endpoints, others)
}

/// RFC 9728 metadata of each route's endpoints, at
/// `/.well-known/oauth-protected-resource<path>`; written once at start.
fn protected_resources(app: &AppState) -> Router<AppState> {
    let mut router = Router::new();
    for route in &app.routes {
        for path in route.settings.resource_paths() {
            let document = metadata::protected_resource_document(
                &app.settings.public_url,
                &path,
                &route.settings.name,
            );
            router = router.route(
                &format!("/.well-known/oauth-protected-resource{path}"),
                get(move || std::future::ready(metadata::cacheable_json(document.clone()))),
            );
        }
    }
    router
}

/// The MCP endpoints: each route's, each with its own stack, behind the
/// route's CORS for browser clients, by the exact path it answers on
/// (configuration allows only paths that have one spelling).
// The stack's type cannot be named (it holds closures), so it is spelled as
// what it implements, here only.
#[allow(clippy::type_complexity)]
fn mcp_endpoints(
    app: &AppState,
    limits: &RateLimits,
    hooks: &Hooks,
) -> Vec<(
    RouteTemplate,
    impl Service<
            Request<Body>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static,
)> {
    let mut endpoints = Vec::new();
    for route in &app.routes {
        let settings = &route.settings;
        // An embedding program's layers, built once for the route: its
        // endpoints share them (a quota counts on both transports).
        let route_hooks = hooks.for_route(&RouteInfo::new(
            &settings.name,
            &settings.path,
            settings.sse_path.as_deref(),
        ));
        // The route's CORS in front of each endpoint's stack, shared by the
        // per-request clones (`SharedEndpoint`).
        let cors = mcp_cors(app, route);
        let stack = |resource_path: &str, endpoint| {
            SharedEndpoint::new(cors.clone().layer(mcp_stack(
                app,
                limits,
                route,
                resource_path,
                endpoint,
                &route_hooks,
            )))
        };
        endpoints.push((
            RouteTemplate::new(&settings.path),
            stack(&settings.path, Endpoint::Mcp),
        ));
        if let (Some(sse), Some(message)) = (&settings.sse_path, settings.message_path()) {
            endpoints.push((RouteTemplate::new(sse), stack(sse, Endpoint::SseStream)));
            endpoints.push((
                RouteTemplate::new(&message),
                stack(sse, Endpoint::SseMessage),
            ));
        }
    }
    endpoints
}

/// One endpoint of one route, outermost first: audit ← rescue ← address
/// limit ← origin ← authenticate ← user and client limits ← unambiguous
/// headers ← (after authentication) ← policy ← (after policy) ← list filter
/// ← methods ← session ownership ← (before forwarding) ← forwarder. The
/// route's `layers` switch the audit log, the rate limits and the list
/// filter; `hooks` holds an embedding program's layers at the three points
/// in brackets (none: nothing is inserted there).
// Long because it is the whole MCP stack as one chain, a comment per layer:
// the order is the design, and it reads in one place.
fn mcp_stack(
    app: &AppState,
    limits: &RateLimits,
    route: &ServedRoute,
    resource_path: &str,
    endpoint: Endpoint,
    hooks: &RouteHooks,
) -> impl tower::Service<
    axum::http::Request<axum::body::Body>,
    Response = axum::http::Response<axum::body::Body>,
    Error = std::convert::Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    let metrics = app.metrics.clone();
    let settings = &route.settings;
    let layers = settings.layers;
    let limit = |group, key| {
        layers
            .rate_limits
            .then(|| limits.layer::<ProxyError>(group, key))
    };
    tower::ServiceBuilder::new()
        // One audit event and the MCP counters per request, written when the
        // answer (errors included) is known.
        .layer(Audit::layer(
            metrics.route(&settings.name),
            app.settings.config.log.audit && layers.audit,
        ))
        // Typed errors from the layers below become JSON-RPC responses here,
        // and only here.
        .layer(RescueLayer)
        // Per client address, before the token is looked up: a flood of
        // made-up tokens costs a map lookup, not a store query each.
        .option_layer(limit(LimitGroup::McpAddress, by_address))
        // Foreign browser origins are refused before any work is done.
        .layer(CheckOrigin::layer(
            &app.settings.public_url,
            &settings.allowed_origins,
        ))
        // Who is calling: the bearer token, from the Authorization header
        // only, bound to this endpoint or to the whole proxy.
        .layer(Authenticate::layer(
            app.token_cache.clone(),
            &app.settings.public_url,
            resource_path,
        ))
        // Per user and per client: needs the session Authenticate found,
        // and spares the policy the requests that would be refused anyway.
        .option_layer(limit(LimitGroup::McpUser, by_user))
        .option_layer(limit(LimitGroup::McpClient, by_client))
        // Headers the layers below read must mean one thing, or the policy
        // could judge one value while the downstream acts on another.
        .layer(UnambiguousHeaders::layer())
        // Embedding: the caller is known, the policy has not run.
        .option_layer(hooks.at(Hook::AfterAuthentication))
        // May they, and with which identity headers: the route's policy.
        .layer(EnforcePolicy::layer(
            route.policy.clone(),
            app.upstream.issuer(),
            settings.downstream.max_request_bytes,
            settings.downstream.max_batch_size,
            metrics,
        ))
        // Embedding: the policy allowed it and chose the identity headers;
        // above the list filter, so a layer sees lists as the client will.
        .option_layer(hooks.at(Hook::AfterPolicy))
        // What they may see: list answers lose what the policy would deny.
        .option_layer(
            layers
                .filter_lists
                .then(|| FilterLists::layer(route.policy.clone(), app.upstream.issuer())),
        )
        // Which methods the endpoint serves; any other is 405 here.
        .layer(AllowMethods::layer(endpoint))
        // A presented `Mcp-Session-Id` must belong to the caller on the
        // Streamable HTTP endpoint, and the legacy `sid` must be the
        // caller's on the message endpoint; otherwise 404 and nothing is
        // forwarded. Sessions are the route's own.
        .layer(CheckSessionOwnership::layer(
            route.forward.sessions.clone(),
            endpoint,
        ))
        // Embedding: every check passed; next is the downstream.
        .option_layer(hooks.at(Hook::BeforeForwarding))
        .service(Forwarder::new(route.forward.clone(), endpoint))
}

/// Browser-based MCP clients on the route's allowed origins may call it.
fn mcp_cors(app: &AppState, route: &ServedRoute) -> AroundLayer<Cors> {
    let origins: Vec<axum::http::HeaderValue> = std::iter::once(app.settings.public_url.as_str())
        .chain(route.settings.allowed_origins.iter().map(String::as_str))
        .filter_map(|o| o.parse().ok())
        .collect();
    CorsLists::mcp().only(origins).layer()
}

/// What an endpoint allows browsers, its origins aside: one list per kind
/// of endpoint, for its layer and for the test and the benchmark that
/// compare that layer with tower-http's (`server/cors/tests.rs`,
/// `benches/request_path.rs`).
pub struct CorsLists {
    /// Methods a preflight allows.
    pub methods: Vec<Method>,
    /// Request headers a preflight allows.
    pub allowed_headers: Vec<HeaderName>,
    /// Response headers scripts may read.
    pub exposed_headers: Vec<HeaderName>,
    /// How long a browser may cache a preflight's answer.
    pub max_age: Duration,
}

impl CorsLists {
    /// An MCP endpoint's: its methods, the MCP headers both ways.
    pub fn mcp() -> Self {
        CorsLists {
            methods: vec![Method::GET, Method::POST, Method::DELETE, Method::OPTIONS],
            allowed_headers: vec![
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::ACCEPT,
                HeaderName::from_static("mcp-protocol-version"),
                HeaderName::from_static("mcp-session-id"),
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("mcp-method"),
                HeaderName::from_static("mcp-name"),
            ],
            exposed_headers: vec![
                HeaderName::from_static("mcp-session-id"),
                HeaderName::from_static("mcp-protocol-version"),
                header::WWW_AUTHENTICATE,
            ],
            max_age: Duration::from_secs(86400),
        }
    }

    /// The authorization server's client-facing JSON endpoints'.
    pub fn oauth() -> Self {
        CorsLists {
            methods: vec![Method::GET, Method::POST, Method::OPTIONS],
            allowed_headers: vec![
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                HeaderName::from_static("mcp-protocol-version"),
            ],
            exposed_headers: Vec::new(),
            max_age: Duration::from_secs(86400),
        }
    }

    /// The rules for browsers from any origin.
    pub(crate) fn any_origin(&self) -> CorsRules {
        CorsRules::any_origin(&self.methods, &self.allowed_headers, self.max_age)
            .exposing(&self.exposed_headers)
    }

    /// The rules for browsers from `origins` only.
    pub(crate) fn only(&self, origins: Vec<axum::http::HeaderValue>) -> CorsRules {
        self.any_origin().only_origins(origins)
    }
}

/// One MCP endpoint's stack, the layers every request passes included.
type EndpointService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// The public listener's service. A request for an MCP endpoint goes
/// straight to that endpoint's stack, its path compared whole (the same
/// match as axum's for a route without parameters: no decoding, no
/// trailing slash); any other goes through axum's router. On the path of
/// every MCP call, axum's route lookup, its `MatchedPath`, its response
/// mapping and its route future cost ~4,300 instructions a request in
/// callgrind (`tests/bench/README.md`). hyper writes what axum's route
/// future would have added on the way out (`Content-Length` of a body of
/// known size, no body for `HEAD`).
pub(crate) struct Routes {
    endpoints: Arc<[(RouteTemplate, EndpointService)]>,
    /// This connection's copy of the endpoint it called last, and that
    /// endpoint's index in `endpoints` (a connection nearly always calls
    /// one): a request is called on it once it is ready, rather than on a
    /// clone made for it (a box, the reference counts of the layers every
    /// request passes, and their drop: ~350 instructions and ~10 locked
    /// ones a request in callgrind). Not a list of every endpoint's copy:
    /// HTTP/2 clones the connection's service for each request, and the
    /// list would be an allocation a request there.
    own: Option<(usize, EndpointService)>,
    others: Router,
}

/// A listener's routes for one more connection: the endpoints shared, its
/// own copies made as it calls them.
impl Clone for Routes {
    fn clone(&self) -> Self {
        Routes {
            endpoints: self.endpoints.clone(),
            own: None,
            others: self.others.clone(),
        }
    }
}

impl Routes {
    /// A listener's routes that are all axum's (the admin listener's).
    pub(crate) fn axum(router: Router) -> Self {
        Routes::new(Vec::new(), router)
    }

    fn new(endpoints: Vec<(RouteTemplate, EndpointService)>, others: Router) -> Self {
        Routes {
            endpoints: endpoints.into(),
            own: None,
            others,
        }
    }
}

impl<B> Service<Request<B>> for Routes
where
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<
        Either<
            <EndpointService as Service<Request<Body>>>::Future,
            Oneshot<EndpointService, Request<Body>>,
        >,
        <Router as Service<Request<B>>>::Future,
    >;

    /// Always ready: an endpoint's readiness is asked in `call` (awaited,
    /// as axum's routes do, when it is not ready at once), and the router
    /// is always ready.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        let Some((index, (_, shared))) = self
            .endpoints
            .iter()
            .enumerate()
            .find(|(_, (template, _))| template.as_str() == path)
        else {
            return Either::Right(self.others.call(request));
        };
        let request = request.map(Body::new);
        let endpoint = match &mut self.own {
            Some((called, endpoint)) if *called == index => endpoint,
            own => &mut own.insert((index, shared.clone())).1,
        };
        let mut cx = Context::from_waker(Waker::noop());
        match endpoint.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Either::Left(Either::Left(endpoint.call(request))),
            // A stack that is not ready at once (an embedding program's
            // layer with backpressure): this request waits for a copy of its
            // own to be ready, woken as that stack says.
            Poll::Pending => Either::Left(Either::Right(shared.clone().oneshot(request))),
        }
    }
}

#[cfg(test)]
mod tests;
