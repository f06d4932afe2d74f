//! The running server: shared state, listeners and graceful shutdown.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::TokenCache;
use crate::config::Settings;
use crate::crypto::Keys;
use crate::grants::{Grants, Lifetimes};
use crate::metrics::Metrics;
use crate::policy::PolicyEngine;
use crate::proxy::sessions::SessionBindings;
use crate::proxy::{DownstreamTarget, ForwardContext};
use crate::store::InstrumentedStore;
use crate::store::{redis::RedisStore, sqlite::SqliteStore, Records, SharedStore};
use crate::upstream::Upstream;

pub mod admin;
pub mod body_deadline;
pub mod connection;
pub mod framing;
pub mod rescue;
pub mod stack;

/// Everything a handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub settings: Settings,
    pub keys: Keys,
    pub records: Records,
    pub grants: Grants,
    pub upstream: Upstream,
    pub policy: Arc<PolicyEngine>,
    pub token_cache: Arc<TokenCache>,
    pub forward: Arc<ForwardContext>,
    pub metrics: Arc<Metrics>,
}

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("upstream: {0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("downstream: {0}")]
    Downstream(String),
    #[error("policy.path: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    #[error("server.listen: cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

impl AppState {
    pub fn new(settings: Settings, store: SharedStore) -> Result<Self, StartError> {
        let keys = Keys::new(settings.encryption_key);
        let metrics = Metrics::new(&settings.config.metrics.tools);
        let store = if settings.config.metrics.enabled {
            InstrumentedStore::wrap(store, metrics.clone())
        } else {
            store
        };
        let records = Records::new(store);
        let tokens = &settings.config.tokens;
        let grants = Grants::new(
            records.clone(),
            keys.clone(),
            Lifetimes {
                access: tokens.access_ttl.0,
                refresh: tokens.refresh_ttl.0,
                code: tokens.code_ttl.0,
                max_grant_age: tokens.max_grant_age.0,
                revalidate_after: settings
                    .config
                    .upstream
                    .revalidate_after
                    .unwrap_or(tokens.access_ttl)
                    .0,
            },
        );
        let upstream = Upstream::new(&settings, metrics.clone())?;
        let config = &settings.config;
        let policy = Arc::new(
            PolicyEngine::new(
                config.policy.path.as_deref(),
                &config.policy.identity_headers,
            )?
            .with_metrics(metrics.clone())
            .with_max_header_bytes(config.policy.max_header_bytes),
        );
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
                &grants,
                token_cache.clone(),
            );
        }
        let public = url::Url::parse(&settings.public_url).map_err(|e| StartError::Listen {
            addr: settings.public_url.clone(),
            source: std::io::Error::other(e),
        })?;
        let forward = Arc::new(ForwardContext {
            client: crate::proxy::http_client(config.downstream.connect_timeout.0),
            sessions: Arc::new(SessionBindings::new(records.clone())),
            public_host: match public.port() {
                Some(port) => format!("{}:{port}", public.host_str().unwrap_or_default()),
                None => public.host_str().unwrap_or_default().to_string(),
            },
            public_proto: public.scheme().to_string(),
            downstream: DownstreamTarget::new(&settings.downstream_url)
                .map_err(StartError::Downstream)?,
            downstream_sse: settings
                .downstream_sse_url
                .as_ref()
                .map(DownstreamTarget::new)
                .transpose()
                .map_err(StartError::Downstream)?,
            response_timeout: config.downstream.response_timeout.0,
            sse_idle_timeout: config.downstream.sse_idle_timeout.0,
            pass_cookies: config.downstream.pass_cookies.clone(),
            trusted_proxies: settings.trusted_proxies.clone(),
            metrics: config.metrics.enabled.then(|| metrics.clone()),
        });
        Ok(AppState(Arc::new(AppInner {
            settings,
            keys,
            records,
            grants,
            upstream,
            policy,
            token_cache,
            forward,
            metrics,
        })))
    }

    /// Opens the store the configuration names: Redis when
    /// `store.redis_url` is set, else the SQLite file.
    pub fn open_store(settings: &Settings) -> Result<SharedStore, StartError> {
        let store = &settings.config.store;
        Ok(match &store.redis_url {
            Some(url) => Arc::new(RedisStore::open(url.expose(), &store.redis_prefix)?),
            None => Arc::new(SqliteStore::open(&store.path)?),
        })
    }
}

/// A server started in the background (the CLI and the tests use it).
pub struct Running {
    pub addr: SocketAddr,
    /// The admin listener, when `server.admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub app: AppState,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, lets open requests finish within the grace period.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        self.task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Waits until the server stops by itself (a signal).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// A handle that triggers shutdown.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Binds `server.listen` and serves the app until shutdown.
pub async fn start(app: AppState) -> Result<Running, StartError> {
    let listen = app.settings.config.server.listen.clone();
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: listen,
        source,
    })?;
    crate::store::spawn_purge(
        app.records.store.clone(),
        app.settings.config.store.purge_interval.0,
    );
    app.policy
        .spawn_watcher(app.settings.config.policy.watch_interval.0);
    // Discover the provider now so the first login does not wait for it; a
    // failure is retried on first use.
    let early = app.clone();
    tokio::spawn(async move {
        if let Err(e) = early.upstream.client().await {
            tracing::warn!(error = %e, "OpenID provider discovery failed; it is retried at the first login");
        }
    });
    let (shutdown, signal) = watch::channel(false);
    let admin_addr = match &app.settings.config.server.admin_listen {
        Some(admin) => {
            let admin_listener =
                TcpListener::bind(admin)
                    .await
                    .map_err(|source| StartError::Listen {
                        addr: admin.clone(),
                        source,
                    })?;
            let admin_addr = admin_listener
                .local_addr()
                .map_err(|source| StartError::Listen {
                    addr: admin.clone(),
                    source,
                })?;
            let admin_router = admin::router(app.clone());
            let limits = connection::Limits::from_config(&app.settings.config.server);
            let admin_signal = signal.clone();
            tokio::spawn(async move {
                let served =
                    connection::serve(admin_listener, admin_router, admin_signal, limits, "admin")
                        .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the admin listener failed");
                }
            });
            tracing::info!(%admin_addr, "admin listener (metrics, health)");
            Some(admin_addr)
        }
        None => None,
    };
    let limits = connection::Limits::from_config(&app.settings.config.server);
    let router = stack::router(app.clone());
    let task = tokio::spawn(connection::serve(
        listener, router, signal, limits, "public",
    ));
    tracing::info!(%addr, public_url = %app.settings.public_url, "listening");
    Ok(Running {
        addr,
        admin_addr,
        app,
        shutdown,
        task,
    })
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
