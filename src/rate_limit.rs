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
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use tower::util::MapErr;
use tower::{Layer, Service};

use crate::checkpoint::{gate_layer, Gate, GateService};
use crate::config::{LimitGroup, LimitsConfig, Rate};
use crate::error::{OAuthError, PageError, ProxyError, RateLimited};
use crate::metrics::audit::AuditSlot;
use crate::metrics::Metrics;
use crate::session::Session;

/// How often keys whose budget is full again are dropped.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

/// What a limit counts by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// A client address; IPv6 by its /64, which one host usually owns whole.
    Address(IpAddr),
    /// A user (`sub`) or an OAuth client id, shared with the session that
    /// named it: keying a request costs a reference count, not a copy.
    Name(Arc<str>),
    /// Requests without the fact the limit counts by share one budget.
    Unknown,
}

impl RateKey {
    /// The key of a client address.
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
/// limit asks. The client behind trusted load balancers
/// (`server.trusted_proxies`), as resolved once per request in
/// `server::stack`; else the TCP peer.
pub fn client_address<B>(request: &Request<B>) -> Option<IpAddr> {
    crate::client_address::ClientAddress::of(request)
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

/// The limits' clock: the request path's time (`clock::now`), read once
/// per poll of the connection's task rather than once by each of the three
/// limits a request passes; the system's clock outside a connection's
/// task.
#[derive(Clone, Copy, Debug, Default)]
pub struct PollClock;

impl Clock for PollClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        crate::clock::now().into_std()
    }
}

/// The keys' hasher: foldhash, seeded at random per limiter, rather than
/// the `DashMap` default's SipHash. Three limits hash a key each on every
/// MCP request, and SipHash was ~900 of the ~1,900 instructions the limits
/// cost a request in callgrind. A random seed still keeps a caller from
/// choosing keys (addresses, client ids) that collide.
type KeyHasher = foldhash::fast::RandomState;

type Keyed<K, C> =
    RateLimiter<K, DashMapStateStore<K, KeyHasher>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One limit: a rate per key, and the metric it counts refusals in.
/// The clock is the request path's ([`PollClock`]); tests give it a fake
/// one, so that nothing they assert depends on how fast the machine runs.
pub struct Limiter<K: Hash + Eq + Clone = RateKey, C: Clock = PollClock> {
    group: LimitGroup,
    keyed: Keyed<K, C>,
    clock: C,
    metrics: Arc<Metrics>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Limiter<K> {
    /// A limiter for `rate`; keys whose budget is full again are dropped
    /// every `HOUSEKEEPING_INTERVAL` while it lives (when a runtime runs).
    pub fn new(group: LimitGroup, rate: Rate, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_housekeeping(group, rate, metrics, HOUSEKEEPING_INTERVAL)
    }

    fn with_housekeeping(
        group: LimitGroup,
        rate: Rate,
        metrics: Arc<Metrics>,
        every: Duration,
    ) -> Arc<Self> {
        let limiter = Arc::new(Self::unattended(group, rate, metrics));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(housekeeping(Arc::downgrade(&limiter), every));
        }
        limiter
    }

    fn unattended(group: LimitGroup, rate: Rate, metrics: Arc<Metrics>) -> Self {
        Limiter::with_clock(group, rate, metrics, PollClock)
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> Limiter<K, C> {
    /// A limiter on `clock`, without housekeeping.
    fn with_clock(group: LimitGroup, rate: Rate, metrics: Arc<Metrics>, clock: C) -> Self {
        Limiter {
            group,
            keyed: RateLimiter::dashmap_with_clock_and_hasher(
                quota(rate),
                clock.clone(),
                KeyHasher::default(),
            ),
            clock,
            metrics,
        }
    }

    /// Takes one request from `key`'s budget, or says how long to wait.
    pub fn check(&self, key: &K) -> Result<(), RateLimited> {
        self.keyed.check_key(key).map_err(|not_until| {
            self.metrics.rate_limited(self.group.name());
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

async fn housekeeping<K: Hash + Eq + Clone + Send + Sync + 'static>(
    limiter: Weak<Limiter<K>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
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
    /// A limiter for each group `[limits]` switches on.
    pub fn new(config: &LimitsConfig, metrics: Arc<Metrics>) -> Self {
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
            limit: RateLimit {
                limiter: self
                    .limiters
                    .iter()
                    .find(|(g, _)| *g == group)
                    .map(|(_, limiter)| limiter.clone()),
                key_of,
            },
            _error: PhantomData,
        }
    }
}

/// Adds `RateLimit` to a service whose errors become `E`, the error type
/// of the routes behind it, so the refusal and the service's own errors
/// are rendered alike.
pub struct RateLimitLayer<E> {
    limit: RateLimit,
    _error: PhantomData<fn() -> E>,
}

impl<E> Clone for RateLimitLayer<E> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limit: self.limit.clone(),
            _error: PhantomData,
        }
    }
}

/// The inner service, its errors widened into `E`.
type Absorbed<S, E> = MapErr<S, fn(<S as Service<Request<Body>>>::Error) -> E>;

impl<S, E> Layer<S> for RateLimitLayer<E>
where
    S: Service<Request<Body>>,
    E: Absorbs<S::Error>,
{
    type Service = GateService<RateLimit, Absorbed<S, E>>;

    fn layer(&self, inner: S) -> Self::Service {
        let absorb: fn(S::Error) -> E = E::absorb;
        gate_layer(self.limit.clone()).layer(MapErr::new(inner, absorb))
    }
}

/// Refuses a request past its key's rate with `RateLimited`; otherwise
/// calls the inner service.
#[derive(Clone)]
pub struct RateLimit {
    /// `None` when the group is switched off.
    limiter: Option<Arc<Limiter>>,
    key_of: KeyOf,
}

impl RateLimit {
    /// Takes one request from its key's budget.
    fn take_one(&self, request: &Request<Body>) -> Result<(), RateLimited> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check(&(self.key_of)(request)).inspect_err(|limited| {
            tracing::debug!(limit = limited.limit, retry_after = ?limited.retry_after, "rate limited");
            if let Some(slot) = request.extensions().get::<AuditSlot>() {
                slot.update(|facts| facts.decision = Some("rate_limited"));
            }
        })
    }
}

impl Gate<Request<Body>> for RateLimit {
    type Refusal = RateLimited;

    fn admit(&self, request: &mut Request<Body>) -> Result<(), RateLimited> {
        self.take_one(request)
    }
}

/// The errors of the service behind a limit, in the limit's error type:
/// none from an OAuth handler, the MCP stack's own from the MCP layers.
pub trait Absorbs<Inner> {
    /// The inner service's error as this one.
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ConnectInfo;
    use axum::http::{Response, StatusCode};
    use governor::clock::FakeRelativeClock;
    use proptest::prelude::*;
    use std::net::SocketAddr;
    use tower::ServiceExt;

    fn rate(requests: u32, period: Duration, burst: u32) -> Rate {
        Rate {
            requests: NonZeroU32::new(requests).unwrap(),
            period,
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[test]
    fn invariant_9_rate_limit_state_forgets_idle_keys_so_random_callers_cannot_grow_it() {
        let period = Duration::from_millis(200);
        let clock = FakeRelativeClock::default();
        let limiter: Limiter<u64, _> = Limiter::with_clock(
            LimitGroup::McpUser,
            rate(2, period, 2),
            Metrics::disabled(),
            clock.clone(),
        );
        // A caller per request, as from random addresses or users.
        for key in 0..20_000u64 {
            assert!(limiter.check(&key).is_ok());
        }
        assert_eq!(limiter.tracked_keys(), 20_000);
        // A key that is still spending its budget is kept...
        assert!(limiter.check(&7).is_ok());
        assert!(limiter.check(&7).is_err());
        limiter.forget_idle();
        assert_eq!(limiter.tracked_keys(), 20_000);
        // ...and once every budget is full again, nothing is. governor keeps
        // a key one emission interval (period / requests) past that point,
        // until its state cannot be told from a fresh one: wait two periods.
        clock.advance(2 * period);
        limiter.forget_idle();
        assert_eq!(limiter.tracked_keys(), 0);
        // Forgetting changed no answer: a forgotten key has its full burst.
        assert!(limiter.check(&7).is_ok());
        assert!(limiter.check(&7).is_ok());
        assert!(limiter.check(&7).is_err());
    }

    #[tokio::test]
    async fn idle_keys_are_forgotten_in_the_background_and_the_task_ends_with_the_limiter() {
        let every = Duration::from_millis(50);
        let period = Duration::from_millis(100);
        let limiter: Arc<Limiter<u64>> = Limiter::with_housekeeping(
            LimitGroup::McpUser,
            rate(1, period, 1),
            Metrics::disabled(),
            every,
        );
        for key in 0..100u64 {
            limiter.check(&key).unwrap();
        }
        assert_eq!(limiter.tracked_keys(), 100);
        tokio::time::sleep(period + every * 3).await;
        assert_eq!(limiter.tracked_keys(), 0);
        let weak = Arc::downgrade(&limiter);
        drop(limiter);
        tokio::time::sleep(every * 3).await;
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn invariant_9_rate_limit_counts_an_ipv6_host_by_its_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(RateKey::address(a), RateKey::address(b));
        assert_ne!(RateKey::address(a), RateKey::address(elsewhere));
        // An IPv4 client seen through a dual-stack socket is that IPv4 client.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(RateKey::address(mapped), RateKey::address(v4));
        assert_ne!(
            RateKey::address("192.0.2.8".parse().unwrap()),
            RateKey::address(v4)
        );
    }

    #[test]
    fn the_client_address_is_the_connection_peer() {
        let mut request = Request::new(Body::empty());
        assert_eq!(client_address(&request), None);
        assert_eq!(by_address(&request), RateKey::Unknown);
        let peer: SocketAddr = "198.51.100.4:51234".parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        assert_eq!(client_address(&request), Some(peer.ip()));
        assert_eq!(by_address(&request), RateKey::Address(peer.ip()));
    }

    fn limits_with(group: LimitGroup, requests: u32) -> RateLimits {
        let mut config = LimitsConfig::default();
        let table = crate::config::RateLimitConfig {
            requests: Some(requests),
            period: Some(crate::config::DurationStr(Duration::from_secs(3600))),
            ..Default::default()
        };
        match group {
            LimitGroup::Register => config.register = table,
            _ => config.mcp_user = table,
        }
        RateLimits::new(&config, Metrics::new(&[]))
    }

    #[tokio::test]
    async fn a_refusal_is_the_routes_typed_error_and_never_reaches_the_service() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let stub = tower::service_fn(move |_req: Request<Body>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Body::empty())) }
        });
        let limits = limits_with(LimitGroup::Register, 1);
        let service = limits
            .layer::<OAuthError>(LimitGroup::Register, by_address)
            .layer(stub);
        let response = service
            .clone()
            .oneshot(Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let refused = service
            .oneshot(Request::new(Body::empty()))
            .await
            .unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.code, "temporarily_unavailable");
        assert_eq!(refused.retry_after, Some(3600));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refused_mcp_request_is_audited_as_rate_limited() {
        let stub = tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, ProxyError>(Response::new(Body::empty()))
        });
        let limits = limits_with(LimitGroup::McpUser, 1);
        let service = limits
            .layer::<ProxyError>(LimitGroup::McpUser, by_user)
            .layer(stub);
        let _ = service.clone().oneshot(Request::new(Body::empty())).await;
        let slot = AuditSlot::default();
        let mut request = Request::new(Body::empty());
        request.extensions_mut().insert(slot.clone());
        let refused = service.oneshot(request).await.unwrap_err();
        assert!(matches!(refused, ProxyError::RateLimited(_)), "{refused}");
        let mut decision = None;
        slot.update(|facts| decision = facts.decision);
        assert_eq!(decision, Some("rate_limited"));
    }

    #[tokio::test]
    async fn a_switched_off_group_passes_everything() {
        let mut config = LimitsConfig::default();
        config.register.enabled = Some(false);
        config.register.requests = Some(1);
        let limits = RateLimits::new(&config, Metrics::disabled());
        let stub = tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        let service = limits
            .layer::<OAuthError>(LimitGroup::Register, by_address)
            .layer(stub);
        for _ in 0..100 {
            let response = service
                .clone()
                .oneshot(Request::new(Body::empty()))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
    }

    proptest! {
        /// `Retry-After` never invites a retry before the budget is back,
        /// nor asks for a second more than needed, nor says 0.
        #[test]
        fn retry_after_is_the_wait_rounded_up_to_a_whole_second(nanos in 0u64..10_000_000_000_000) {
            let wait = Duration::from_nanos(nanos);
            let seconds = RateLimited { limit: "token", retry_after: wait }.retry_after_secs();
            prop_assert!(seconds >= 1);
            prop_assert!(Duration::from_secs(seconds) >= wait);
            prop_assert!(Duration::from_secs(seconds) < wait + Duration::from_secs(1) || seconds == 1);
        }

        /// Any accepted rate lets exactly `burst` requests through at once.
        #[test]
        fn a_fresh_key_gets_exactly_its_burst(requests in 1u32..100_000, burst in 1u32..200, period_ms in 1u64..86_400_000) {
            // Time stands still: no refill while the loop runs.
            let limiter: Limiter<u8, _> = Limiter::with_clock(
                LimitGroup::Token,
                rate(requests, Duration::from_millis(period_ms), burst),
                Metrics::disabled(),
                FakeRelativeClock::default(),
            );
            let allowed = (0..burst + 1).filter(|_| limiter.check(&1).is_ok()).count() as u32;
            prop_assert_eq!(allowed, burst);
        }
    }
}
