//! The running server: shared state, listeners and graceful shutdown.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use axum::extract::FromRef;

use crate::assertion::IdentityAssertions;
use crate::auth::TokenCache;
use crate::config::Settings;
use crate::crypto::Keys;
use crate::grants::{Grants, Lifetimes};
use crate::metrics::Metrics;
use crate::oauth::{OAuthInner, OAuthSettings, OAuthState, ProtectedRoute};
use crate::store::{InstrumentedStore, Records, SharedStore};
use crate::upstream::Upstream;
use routes::ServedRoute;

pub(crate) mod admin;
pub(crate) mod body_deadline;
pub(crate) mod connection;
pub(crate) mod cors;
pub(crate) mod framing;
pub(crate) mod hooks;
pub(crate) mod http1;
pub(crate) mod request_id;
pub(crate) mod rescue;
pub(crate) mod routes;
pub(crate) mod shared;
mod sniff;
pub(crate) mod stack;
#[cfg(test)]
pub(crate) mod test_logs;
pub(crate) mod trace;
mod woken;
mod workers;

/// Everything a handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

/// The parts `AppState` shares.
pub struct AppInner {
    /// The validated configuration.
    pub(crate) settings: Settings,
    /// The store, typed.
    pub(crate) records: Records,
    /// Codes, tokens and their grants.
    pub grants: Grants,
    /// The OpenID provider.
    pub(crate) upstream: Arc<Upstream>,
    /// Every MCP route: its settings, policy and forwarder.
    pub routes: Vec<ServedRoute>,
    /// Bearer tokens already validated.
    pub token_cache: Arc<TokenCache>,
    /// The Prometheus registry.
    pub metrics: Arc<Metrics>,
    /// What the OAuth routes get (see `FromRef` below).
    pub(crate) oauth: OAuthState,
    /// The identity assertions' signer and its published keys.
    pub assertions: Arc<IdentityAssertions>,
}

/// The OAuth routes take their own state: the server knows the OAuth
/// handlers, never the reverse.
impl FromRef<AppState> for OAuthState {
    fn from_ref(app: &AppState) -> OAuthState {
        app.oauth.clone()
    }
}

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// Why the server could not start; each names the setting to look at.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration could not be loaded or is not valid (only from
    /// `embed::Proxy::from_config_file`; the binary reports these itself).
    #[error("{}", config_error(.0))]
    Config(#[from] crate::config::ConfigError),
    /// A layer was registered for a route the configuration does not have.
    #[error("Proxy::route_layer: there is no route named \"{route}\" (the routes are: {known})")]
    UnknownRoute {
        /// The name given.
        route: String,
        /// The configured routes' names, comma-separated.
        known: String,
    },
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The provider's settings are unusable.
    #[error("upstream: {0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    /// A downstream URL is unusable.
    #[error("{key}: {message}")]
    Downstream {
        /// The key at fault (`downstream.url`, `routes[github].downstream.url`).
        key: String,
        /// Why.
        message: String,
    },
    /// A policy did not compile.
    #[error("{key}: {source}")]
    Policy {
        /// The key at fault (`policy.path`, `routes[github].policy.path`).
        key: String,
        /// Why.
        source: crate::policy::PolicyError,
    },
    /// A route's decision log or shadow policy could not start.
    #[error("{key}: {source}")]
    Observer {
        /// The key at fault (`policy.shadow_path`, `routes[github].policy.decision_log`).
        key: String,
        /// Why.
        source: crate::policy::observer::ObserverError,
    },
    /// The worker threads could not be started.
    #[error("server.workers: cannot start {count} worker threads: {source}")]
    Workers {
        /// How many were asked for.
        count: usize,
        /// Why a thread could not start.
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("server.listen: cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: String,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// A configuration error as the binary prints it: loading errors say
/// "config error" on each line already.
fn config_error(error: &crate::config::ConfigError) -> String {
    match error {
        crate::config::ConfigError::Load(lines) => lines.clone(),
        invalid => format!("config error: {invalid}"),
    }
}

impl AppState {
    /// Builds every shared part from the validated settings, on `store`
    /// (timed into the metrics; they record nothing when `metrics.enabled`
    /// is off).
    pub fn new(settings: Settings, store: SharedStore) -> Result<Self, StartError> {
        let keys = Keys::new(settings.encryption_key);
        let metrics = Metrics::from_config(
            &settings.config.metrics,
            settings.routes.iter().map(|r| r.name.as_str()),
        );
        let store = InstrumentedStore::wrap(store, metrics.clone());
        let records = Records::new(store);
        let grants = Grants::new(
            records.clone(),
            keys.clone(),
            Lifetimes::from_settings(&settings),
        );
        let upstream = Arc::new(Upstream::new(&settings, metrics.clone())?);
        let token_cache = token_cache(&settings, &grants, &metrics)?;
        let assertions = Arc::new(IdentityAssertions::new(
            records.store.clone(),
            keys.clone(),
            &settings.public_url,
            &settings.config.identity_assertion,
        ));
        let routes = settings
            .routes
            .iter()
            .map(|route| {
                ServedRoute::new(
                    &settings,
                    route,
                    &records,
                    &metrics,
                    &assertions,
                    token_cache.session_watch(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let oauth = OAuthState::new(OAuthInner {
            settings: OAuthSettings::from_settings(&settings),
            keys,
            records: records.clone(),
            grants: grants.clone(),
            upstream: upstream.clone(),
            routes: routes
                .iter()
                .map(|r| ProtectedRoute {
                    name: r.settings.name.clone(),
                    resources: r
                        .settings
                        .resource_paths()
                        .iter()
                        .map(|p| format!("{}{p}", settings.public_url))
                        .collect(),
                    policy: r.policy.clone(),
                })
                .collect(),
            metrics: metrics.clone(),
            id_jag: Arc::new(crate::oauth::id_jag::IdJag::from_settings(&settings)?),
        });
        Ok(AppState(Arc::new(AppInner {
            settings,
            records,
            grants,
            upstream,
            routes,
            token_cache,
            metrics,
            oauth,
            assertions,
        })))
    }
}

/// The bearer token cache; with Redis, it also hears the other replicas'
/// revocations.
fn token_cache(
    settings: &Settings,
    grants: &Grants,
    metrics: &Arc<Metrics>,
) -> Result<Arc<TokenCache>, StartError> {
    let config = &settings.config;
    let token_cache = TokenCache::new(
        grants.clone(),
        config.auth.cache_capacity,
        config.auth.cache_ttl.0,
        config.auth.negative_cache_ttl.0,
        config.auth.stream_recheck_interval.0,
        metrics.clone(),
    );
    if let Some(url) = &config.store.redis_url {
        // Several replicas: hear each other's revocations.
        crate::auth::revocations::spawn(
            crate::store::redis::client(url.expose())?,
            &config.store.redis_prefix,
            grants,
            token_cache.clone(),
        );
    }
    Ok(token_cache)
}

/// `/.well-known/jwks.json`: the identity assertions' public keys.
pub(crate) async fn jwks(
    axum::extract::State(app): axum::extract::State<AppState>,
) -> axum::response::Response {
    app.assertions.jwks_response().await
}

/// A server started in the background (the CLI and the tests use it).
pub struct Running {
    /// The public listener's address.
    pub addr: SocketAddr,
    /// The admin listener, when `server.admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    /// The state the server runs with.
    pub app: AppState,
    shutdown: watch::Sender<bool>,
    serving: workers::Serving,
}

impl Running {
    /// Stops accepting, lets open requests finish within the grace period.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        self.serving.wait(&self.shutdown).await
    }

    /// Waits until the public listener stops: after a `true` on
    /// `shutdown_handle` (the binary sends one on SIGINT or SIGTERM) and the
    /// grace period, or when it fails. With several workers it waits for
    /// all of them; one that fails (or panics) stops the others, and its
    /// error is the answer.
    pub async fn wait(self) -> std::io::Result<()> {
        self.serving.wait(&self.shutdown).await
    }

    /// A handle that stops the server from another task: sending `true` on
    /// it does what `shutdown` does, without waiting.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Binds `server.listen` (and `server.admin_listen`, when set), starts the
/// background work (purging expired records, watching the policy file,
/// discovering the provider) and serves in the background until shutdown:
/// on `server.workers` threads of their own, or, with one worker, on the
/// caller's runtime.
pub async fn start(app: AppState) -> Result<Running, StartError> {
    start_with_hooks(app, &hooks::Hooks::default()).await
}

/// `start`, with an embedding program's layers in the MCP routes' stacks.
pub(crate) async fn start_with_hooks(
    app: AppState,
    hooks: &hooks::Hooks,
) -> Result<Running, StartError> {
    let server = &app.settings.config.server;
    let listen = server.listen.clone();
    let count = server.workers();
    let cannot_listen = |source| StartError::Listen {
        addr: listen.clone(),
        source,
    };
    let listeners = if count == 1 {
        Listeners::One(TcpListener::bind(&listen).await.map_err(cannot_listen)?)
    } else {
        Listeners::Group(workers::bind(&listen, count).await.map_err(cannot_listen)?)
    };
    let addr = listeners.local_addr().map_err(cannot_listen)?;
    spawn_background(&app);
    let (shutdown, signal) = watch::channel(false);
    let admin_addr = start_admin(&app, &signal).await?;
    let limits = connection::Limits::from_config(server);
    let work = workers::Work {
        router: stack::router(app.clone(), hooks),
        signal,
        budget: limits.budget(),
        limits,
    };
    let serving = match listeners {
        Listeners::One(listener) => workers::Serving::Here(tokio::spawn(connection::serve(
            listener,
            work.router,
            work.signal,
            work.limits,
            work.budget,
            "public",
        ))),
        Listeners::Group(listeners) => workers::spawn(listeners, &work)
            .map_err(|source| StartError::Workers { count, source })?,
    };
    tracing::info!(%addr, workers = count, public_url = %app.settings.public_url, "listening");
    Ok(Running {
        addr,
        admin_addr,
        app,
        shutdown,
        serving,
    })
}

/// The public listener: one socket served on the caller's runtime, or one
/// per worker thread.
enum Listeners {
    One(TcpListener),
    Group(Vec<std::net::TcpListener>),
}

impl Listeners {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Listeners::One(listener) => listener.local_addr(),
            Listeners::Group(listeners) => match listeners.first() {
                Some(first) => first.local_addr(),
                None => Err(std::io::Error::other("no listener was bound")),
            },
        }
    }
}

/// Binds and serves `server.admin_listen`, when set, on the caller's
/// runtime (never on a worker: metrics and health must answer however busy
/// the workers are).
async fn start_admin(
    app: &AppState,
    signal: &watch::Receiver<bool>,
) -> Result<Option<SocketAddr>, StartError> {
    let Some(admin) = &app.settings.config.server.admin_listen else {
        return Ok(None);
    };
    let cannot_listen = |source| StartError::Listen {
        addr: admin.clone(),
        source,
    };
    let admin_listener = TcpListener::bind(admin).await.map_err(cannot_listen)?;
    let admin_addr = admin_listener.local_addr().map_err(cannot_listen)?;
    let admin_router = stack::Routes::axum(admin::router(app.clone()));
    let limits = connection::Limits::from_config(&app.settings.config.server);
    let budget = limits.budget();
    let admin_signal = signal.clone();
    tokio::spawn(async move {
        let served = connection::serve(
            admin_listener,
            admin_router,
            admin_signal,
            limits,
            budget,
            "admin",
        )
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the admin listener failed");
        }
    });
    tracing::info!(%admin_addr, "admin listener (metrics, health)");
    Ok(Some(admin_addr))
}

/// The background work of a running server: purging expired records,
/// watching the policy files, SIGHUP, the signing keys, discovering the
/// provider.
fn spawn_background(app: &AppState) {
    crate::store::spawn_purge(
        app.records.store.clone(),
        app.settings.config.store.purge_interval.0,
    );
    for route in &app.routes {
        route
            .policy
            .spawn_watcher(route.settings.policy.watch_interval.0);
    }
    reload_policies_on_hangup(app);
    // The signing keys: created by the first replica to start, rotated on
    // schedule.
    app.assertions.spawn_rotation();
    // Discover the provider now so the first login does not wait for it; a
    // failure is retried on first use.
    let early = app.clone();
    tokio::spawn(async move {
        if let Err(e) = early.upstream.client().await {
            tracing::warn!(error = %e, "OpenID provider discovery failed; it is retried at the first login");
        }
    });
}

/// SIGHUP reloads every route's policy file. The handler is installed
/// whether or not any route has a file: without one, SIGHUP's default
/// action would end the process (`systemctl reload` must never do that).
fn reload_policies_on_hangup(app: &AppState) {
    #[cfg(unix)]
    {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(hangup) => hangup,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; policies reload only when their files change");
                return;
            }
        };
        let engines: Vec<_> = app.routes.iter().map(|r| r.policy.clone()).collect();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let reloaded = engines.iter().filter(|e| e.reload_now()).count();
                if reloaded == 0 {
                    tracing::info!(target: "policy", "SIGHUP: no route has a policy file; nothing to reload");
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = app;
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
    tracing::info!("shutdown signal received");
}
