//! Embedding the proxy in a program of your own, and extending it: build it
//! from a configuration, insert your own `tower` layers at named points
//! ([`Hook`]) of each MCP route's stack, start it.
//!
//! Everything the proxy does still happens: sign-in, tokens, the policy,
//! rate limits, header hygiene, the audit log. A layer sees a request only
//! after the proxy authenticated it, and can read who is calling
//! ([`session`]), which MCP calls the request carries ([`mcp_calls`]) and,
//! through [`Proxy::layer_with`], which route it is on. It may refuse
//! (answer without calling the service it wraps: [`json_rpc_error`] writes
//! the usual form), change the request (e.g. set a header for the
//! downstream), or look at the response.
//!
//! ```no_run
//! use mcp_oauth_proxy::embed::{session, Hook, Proxy};
//! use tower::util::MapRequestLayer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The downstream learns the caller's OAuth client (the default policy
//! // does not send it). `insert` replaces any copy the client sent.
//! let client_id = MapRequestLayer::new(|mut request: http::Request<axum::body::Body>| {
//!     let value = session(&request).and_then(|s| http::HeaderValue::from_str(s.client_id()).ok());
//!     match value {
//!         Some(value) => request.headers_mut().insert("x-mcp-client", value),
//!         None => request.headers_mut().remove("x-mcp-client"),
//!     };
//!     request
//! });
//! let running = Proxy::from_config_file("proxy.toml")?
//!     .layer(Hook::BeforeForwarding, client_id)
//!     .start()
//!     .await?;
//! println!("listening on {}", running.addr);
//! running.wait().await?;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/tool_quota` is a whole program: a per-user, per-tool call
//! quota after the policy, and a header computed from the session.

use std::path::Path;

use axum::body::Body;
use axum::http::{Request, Response};
use tower::{BoxError, Layer, Service};

use crate::config::Settings;
use crate::server::hooks::{self, Hooks};
use crate::server::AppState;

pub use crate::policy::layer::McpCall;
pub use crate::server::hooks::{json_rpc_error, mcp_calls, session, Hook, HookService, RouteInfo};
pub use crate::server::{Running, StartError};
pub use crate::session::Session;

/// The proxy, ready to start: its validated settings and the layers to
/// insert. Layers registered for the same hook run in registration order
/// (the first sees the request first).
///
/// ```no_run
/// use http::{header, HeaderValue, Response};
/// use mcp_oauth_proxy::embed::{Hook, Proxy};
/// use tower::util::MapResponseLayer;
///
/// # async fn run() -> Result<(), mcp_oauth_proxy::embed::StartError> {
/// // No cache keeps the wiki's answers; the other routes are untouched.
/// let no_store = MapResponseLayer::new(|mut response: Response<axum::body::Body>| {
///     let value = HeaderValue::from_static("no-store");
///     response.headers_mut().insert(header::CACHE_CONTROL, value);
///     response
/// });
/// let running = Proxy::from_config_file("proxy.toml")?
///     .route_layer("wiki", Hook::AfterAuthentication, no_store)
///     .start()
///     .await?;
/// # running.shutdown().await.ok();
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Proxy {
    settings: Settings,
    hooks: Hooks,
}

impl Proxy {
    /// Loads and validates the configuration as `mcp-oauth-proxy serve
    /// --config <path>` does: the file, then the environment variables
    /// that override it. Errors name the key at fault.
    pub fn from_config_file(path: impl AsRef<Path>) -> Result<Proxy, StartError> {
        let settings = crate::config::load(Some(path.as_ref()))?.validate()?;
        Ok(Proxy::new(settings))
    }

    /// A proxy from settings already validated (`config::load` then
    /// `Config::validate`).
    pub fn new(settings: Settings) -> Proxy {
        Proxy {
            settings,
            hooks: Hooks::default(),
        }
    }

    /// The settings it will run with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Inserts `layer` at `hook` on every route. The one layer value wraps
    /// each route's stack, so state it shares (an `Arc` inside) is shared
    /// by every route.
    ///
    /// The layer wraps a [`HookService`], which answers every request with
    /// a response (the proxy's own refusals and failures below the hook
    /// arrive as JSON-RPC errors). An error the layer's service returns is
    /// logged and answered with a 500 JSON-RPC error, so any tower
    /// middleware fits.
    pub fn layer<L>(mut self, hook: Hook, layer: L) -> Proxy
    where
        L: Layer<HookService> + Send + Sync + 'static,
        L::Service:
            Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request<Body>>>::Error: Into<BoxError>,
        <L::Service as Service<Request<Body>>>::Future: Send + 'static,
    {
        let wrap = hooks::wrap(layer);
        self.hooks.push(hook, None, Box::new(move |_| wrap.clone()));
        self
    }

    /// Inserts at `hook` on every route the layer `make` builds for it;
    /// `make` runs once per route, when the proxy starts.
    ///
    /// ```
    /// use mcp_oauth_proxy::embed::{Hook, Proxy};
    /// use tower::util::MapResponseLayer;
    ///
    /// # fn build(proxy: Proxy) -> Proxy {
    /// // Tell the client which route answered.
    /// proxy.layer_with(Hook::AfterAuthentication, |route| {
    ///     let name = http::HeaderValue::from_str(route.name()).ok();
    ///     MapResponseLayer::new(move |mut response: http::Response<axum::body::Body>| {
    ///         if let Some(name) = &name {
    ///             response.headers_mut().insert("x-route", name.clone());
    ///         }
    ///         response
    ///     })
    /// })
    /// # }
    /// ```
    pub fn layer_with<F, L>(mut self, hook: Hook, make: F) -> Proxy
    where
        F: Fn(&RouteInfo<'_>) -> L + Send + Sync + 'static,
        L: Layer<HookService> + Send + Sync + 'static,
        L::Service:
            Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request<Body>>>::Error: Into<BoxError>,
        <L::Service as Service<Request<Body>>>::Future: Send + 'static,
    {
        self.hooks
            .push(hook, None, Box::new(move |route| hooks::wrap(make(route))));
        self
    }

    /// Inserts `layer` at `hook` on the route named `route` only (`default`
    /// is the `[downstream]` route). A name the configuration does not have
    /// makes [`start`](Proxy::start) fail with
    /// [`StartError::UnknownRoute`], naming it.
    pub fn route_layer<L>(mut self, route: &str, hook: Hook, layer: L) -> Proxy
    where
        L: Layer<HookService> + Send + Sync + 'static,
        L::Service:
            Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request<Body>>>::Error: Into<BoxError>,
        <L::Service as Service<Request<Body>>>::Future: Send + 'static,
    {
        let wrap = hooks::wrap(layer);
        self.hooks.push(
            hook,
            Some(route.to_string()),
            Box::new(move |_| wrap.clone()),
        );
        self
    }

    /// Opens the store, compiles the policies, binds the listeners and
    /// serves in the background, as `serve` does; the returned [`Running`]
    /// waits for or stops it. Every route name given to `route_layer` is
    /// checked first. With `server.workers` above 1 the public listener is
    /// served on worker threads of the proxy's own, each with a
    /// current-thread runtime: a layer runs there, and what it spawns with
    /// `tokio::spawn` runs on that worker (`block_in_place` would panic);
    /// the background work and the admin listener stay on the caller's
    /// runtime.
    pub async fn start(self) -> Result<Running, StartError> {
        self.check_route_names()?;
        let store = crate::store::open(&self.settings.config.store)?;
        let app = AppState::new(self.settings, store)?;
        crate::server::start_with_hooks(app, &self.hooks).await
    }

    fn check_route_names(&self) -> Result<(), StartError> {
        let known = &self.settings.routes;
        match self
            .hooks
            .route_names()
            .find(|name| !known.iter().any(|r| r.name == *name))
        {
            Some(unknown) => Err(StartError::UnknownRoute {
                route: unknown.to_string(),
                known: known
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            None => Ok(()),
        }
    }
}
