//! Request rates (DESIGN invariant 9): per client address on the OAuth
//! routes and in front of the MCP routes, per user and per client on the
//! MCP routes. Counted in memory, so per replica.
//!
//! ```text
//! RateLimitLayer<E> ─ key of the request ─► Limiter (governor GCRA, keyed)
//!                                             └─ over ─► E::from(RateLimited)
//! ```
//! `E` is the error type of the routes behind it (OAuth JSON, an HTML page,
//! or JSON-RPC), so the rescue layer renders a 429 in each route's own form.
//!
//! governor, rather than our own token bucket: its GCRA keeps one atomic
//! word per key, updated without locks, in a sharded `DashMap`; it answers
//! how long to wait (our `Retry-After`), and it can drop keys whose state is
//! back to "fresh" (`retain_recent`), which bounds memory below.

use std::convert::Infallible;
use std::hash::Hash;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use futures_util::future::{Either, MapErr, Ready, TryFutureExt};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use tower::{Layer, Service};

use crate::config::{LimitGroup, LimitsConfig, Rate};
use crate::error::{OAuthError, PageError, ProxyError, RateLimited};
use crate::metrics::audit::AuditSlot;
use crate::metrics::Metrics;
use crate::oauth::grants::Session;

/// How often keys whose budget is full again are dropped.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

/// What a limit counts by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// A client address; IPv6 by its /64, which one host usually owns whole.
    Address(IpAddr),
    /// A user (`sub`) or an OAuth client id.
    Name(String),
    /// Requests without the fact the limit counts by share one budget.
    Unknown,
}

impl RateKey {
    pub fn address(address: IpAddr) -> RateKey {
        RateKey::Address(match address {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let [a, b, c, d, ..] = v6.segments();
                    IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
                }
            },
        })
    }
}

/// The address a request came from: the one function every per-address
/// limit asks. Today the TCP peer (`ConnectInfo`, set for each connection
/// in `server::serve_connections`); behind a reverse proxy that is the
/// proxy's address, until this asks the trusted `X-Forwarded-For` instead.
pub fn client_address<B>(request: &Request<B>) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
}

/// How a layer finds the key of a request.
pub type KeyOf = fn(&Request<Body>) -> RateKey;

/// Per client address.
pub fn by_address(request: &Request<Body>) -> RateKey {
    client_address(request)
        .map(RateKey::address)
        .unwrap_or(RateKey::Unknown)
}

/// Per user: the `sub` of the session Authenticate found.
pub fn by_user(request: &Request<Body>) -> RateKey {
    request
        .extensions()
        .get::<Arc<Session>>()
        .map(|session| RateKey::Name(session.sub.clone()))
        .unwrap_or(RateKey::Unknown)
}

/// Per OAuth client: the client id of the session's grant.
pub fn by_client(request: &Request<Body>) -> RateKey {
    request
        .extensions()
        .get::<Arc<Session>>()
        .map(|session| RateKey::Name(session.client_id.clone()))
        .unwrap_or(RateKey::Unknown)
}

type Keyed<K> = RateLimiter<K, DashMapStateStore<K>, DefaultClock>;

/// One limit: a rate per key, and the metric it counts refusals in.
pub struct Limiter<K: Hash + Eq + Clone = RateKey> {
    group: LimitGroup,
    keyed: Keyed<K>,
    clock: DefaultClock,
    metrics: Option<Arc<Metrics>>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Limiter<K> {
    /// A limiter for `rate`; keys whose budget is full again are dropped
    /// every `HOUSEKEEPING_INTERVAL` while it lives (when a runtime runs).
    pub fn new(group: LimitGroup, rate: Rate, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        let limiter = Arc::new(Self::unattended(group, rate, metrics));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(housekeeping(Arc::downgrade(&limiter)));
        }
        limiter
    }

    fn unattended(group: LimitGroup, rate: Rate, metrics: Option<Arc<Metrics>>) -> Self {
        let clock = DefaultClock::default();
        Limiter {
            group,
            keyed: RateLimiter::dashmap_with_clock(quota(rate), clock.clone()),
            clock,
            metrics,
        }
    }

    /// Takes one request from `key`'s budget, or says how long to wait.
    pub fn check(&self, key: &K) -> Result<(), RateLimited> {
        self.keyed.check_key(key).map_err(|not_until| {
            if let Some(metrics) = &self.metrics {
                metrics
                    .rate_limited
                    .with_label_values(&[self.group.name()])
                    .inc();
            }
            RateLimited {
                limit: self.group.name(),
                retry_after: not_until.wait_time_from(self.clock.now()),
            }
        })
    }

    /// Forgets keys that could send a full burst again: forgetting them
    /// changes no answer, and keeps the map as small as the set of callers
    /// active within one refill.
    pub fn forget_idle(&self) {
        self.keyed.retain_recent();
        self.keyed.shrink_to_fit();
    }

    /// Keys remembered now.
    pub fn tracked_keys(&self) -> usize {
        self.keyed.len()
    }
}

async fn housekeeping<K: Hash + Eq + Clone + Send + Sync + 'static>(limiter: Weak<Limiter<K>>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        limiter.forget_idle();
    }
}

/// `requests` per `period` means one more request every `period/requests`,
/// and at most `burst` at once.
fn quota(rate: Rate) -> Quota {
    let interval = (rate.period / rate.requests.get()).max(Duration::from_nanos(1));
    Quota::with_period(interval)
        .unwrap_or_else(|| Quota::per_second(rate.requests))
        .allow_burst(rate.burst)
}

/// Every configured limit, built once per server.
pub struct RateLimits {
    limiters: Vec<(LimitGroup, Arc<Limiter>)>,
}

impl RateLimits {
    pub fn new(config: &LimitsConfig, metrics: Option<Arc<Metrics>>) -> Self {
        let mut limiters = Vec::new();
        for group in LimitGroup::ALL {
            // `Config::validate` refused a bad table already; should one
            // slip through, the group keeps its default rather than no limit.
            let rate = config.rate(group).unwrap_or_else(|e| {
                tracing::error!(error = %e, "invalid rate limit; using its default");
                let (requests, period, burst) = group.default_rate();
                Some(Rate {
                    requests: NonZeroU32::new(requests).unwrap_or(NonZeroU32::MIN),
                    period,
                    burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
                })
            });
            if let Some(rate) = rate {
                limiters.push((group, Limiter::new(group, rate, metrics.clone())));
            }
        }
        RateLimits { limiters }
    }

    /// The layer for `group`, counting by `key_of`, answering in `E`; it
    /// passes everything when the group is switched off.
    pub fn layer<E>(&self, group: LimitGroup, key_of: KeyOf) -> RateLimitLayer<E> {
        RateLimitLayer {
            limiter: self
                .limiters
                .iter()
                .find(|(g, _)| *g == group)
                .map(|(_, limiter)| limiter.clone()),
            key_of,
            _error: PhantomData,
        }
    }
}

/// Adds `RateLimit` to a service.
pub struct RateLimitLayer<E> {
    limiter: Option<Arc<Limiter>>,
    key_of: KeyOf,
    _error: PhantomData<fn() -> E>,
}

impl<E> Clone for RateLimitLayer<E> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limiter: self.limiter.clone(),
            key_of: self.key_of,
            _error: PhantomData,
        }
    }
}

impl<S, E> Layer<S> for RateLimitLayer<E> {
    type Service = RateLimit<S, E>;
    fn layer(&self, inner: S) -> RateLimit<S, E> {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// Refuses a request past its key's rate with `E::from(RateLimited)`;
/// otherwise calls the inner service.
pub struct RateLimit<S, E> {
    inner: S,
    layer: RateLimitLayer<E>,
}

impl<S: Clone, E> Clone for RateLimit<S, E> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

type Passed<S, E> =
    MapErr<<S as Service<Request<Body>>>::Future, fn(<S as Service<Request<Body>>>::Error) -> E>;

impl<S, E> Service<Request<Body>> for RateLimit<S, E>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    E: From<RateLimited> + Absorbs<S::Error>,
{
    type Response = Response<Body>;
    type Error = E;
    type Future = Either<Passed<S, E>, Ready<Result<Response<Body>, E>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx).map_err(E::absorb)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if let Some(limiter) = &self.layer.limiter {
            if let Err(limited) = limiter.check(&(self.layer.key_of)(&request)) {
                tracing::debug!(limit = limited.limit, retry_after = ?limited.retry_after, "rate limited");
                if let Some(slot) = request.extensions().get::<AuditSlot>() {
                    slot.update(|facts| facts.decision = Some("rate_limited"));
                }
                return Either::Right(futures_util::future::ready(Err(E::from(limited))));
            }
        }
        let absorb: fn(S::Error) -> E = E::absorb;
        Either::Left(self.inner.call(request).map_err(absorb))
    }
}

/// The errors of the service behind a limit, in the limit's error type:
/// none from an OAuth handler, the MCP stack's own from the MCP layers.
pub trait Absorbs<Inner> {
    fn absorb(inner: Inner) -> Self;
}

impl Absorbs<Infallible> for OAuthError {
    fn absorb(never: Infallible) -> Self {
        match never {}
    }
}

impl Absorbs<Infallible> for PageError {
    fn absorb(never: Infallible) -> Self {
        match never {}
    }
}

impl Absorbs<ProxyError> for ProxyError {
    fn absorb(error: ProxyError) -> Self {
        error
    }
}
