//! The token cache: validated access tokens by hash, bounded, each entry
//! living at most as long as its token; unknown tokens remembered briefly
//! (negative caching); revocations evict at once; without the revocation
//! feed, cached sessions are re-checked with the store every
//! `DEGRADED_TTL`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::future::Cache;
use moka::Expiry;

use crate::crypto;
use crate::error::ProxyError;
use crate::grants::{GrantError, Grants};
use crate::metrics::labels::{CacheResult, EvictionCause};
use crate::metrics::Metrics;
use crate::now_unix;
use crate::session::{Revocation, Session};

#[derive(Clone)]
enum Entry {
    /// A validated session (`Session::confirmed` says when the store last
    /// said it is live).
    Valid(Arc<Session>),
    Unknown,
}

struct EntryExpiry {
    max_ttl: Duration,
    negative_ttl: Duration,
}

impl Expiry<String, Entry> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Entry,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(match value {
            // Never outlive the token.
            Entry::Valid(session) => time_left(session).min(self.max_ttl),
            Entry::Unknown => self.negative_ttl,
        })
    }
}

/// How long a session's token has left, to the instant: the expiry is in
/// unix seconds, and counted from whole seconds now (`now_unix`) a token
/// looked at late in a second had up to a second more than it has (an
/// open stream outlived its token by that much).
pub(super) fn time_left(session: &Session) -> Duration {
    let expiry = UNIX_EPOCH + Duration::from_secs(session.expires_at.max(0).unsigned_abs());
    expiry
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// Validated tokens by hash, bounded, each entry living at most as long as
/// its token.
pub struct TokenCache {
    metrics: Arc<Metrics>,
    tokens: Cache<String, Entry, foldhash::fast::RandomState>,
    /// Grants and access tokens (by hash) revoked recently: a cached
    /// session of one of them is refused at once, without waiting for its
    /// entry to expire, even one a lookup in progress during the revocation
    /// put back after the eviction.
    revoked_grants: Cache<String, ()>,
    revoked_tokens: Cache<String, ()>,
    /// Until when (milliseconds after `started`) the two sets above may
    /// hold anything: an entry lives `max_ttl` after it is inserted. Past
    /// it, a lookup skips both sets (two hashed lookups a request).
    revocations_kept_until: AtomicU64,
    max_ttl: Duration,
    started: tokio::time::Instant,
    pub(super) grants: Grants,
    /// Set while revocations from other replicas cannot be heard.
    degraded: AtomicBool,
    /// Every revocation this process hears (its own and, with Redis, the
    /// other replicas'), for open event streams; `None` means "some may have
    /// been missed: check the store".
    pub(super) heard: tokio::sync::broadcast::Sender<Option<Revocation>>,
    /// How often an open event stream asks the store about its token.
    pub(super) stream_recheck: Duration,
    /// When the cache last forgot everything because revocations may have
    /// been missed: sessions confirmed before then are asked about again.
    forgotten_at: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// How long a cached session is trusted while the revocation feed is down.
pub(crate) const DEGRADED_TTL: Duration = Duration::from_secs(1);

impl TokenCache {
    /// A cache of at most `capacity` tokens, each kept at most `max_ttl`
    /// (and never past its token's expiry), unknown ones `negative_ttl`. It
    /// listens to `grants`' revocations for as long as it lives.
    pub fn new(
        grants: Grants,
        capacity: u64,
        max_ttl: Duration,
        negative_ttl: Duration,
        stream_recheck: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let cache = Arc::new(TokenCache {
            tokens: Cache::builder()
                .max_capacity(capacity)
                .expire_after(EntryExpiry {
                    max_ttl,
                    negative_ttl,
                })
                .eviction_listener(count_evictions(metrics.clone()))
                // Keys are SHA-256 digests: no client can choose where
                // they land, so SipHash's protection buys nothing here.
                .build_with_hasher(foldhash::fast::RandomState::default()),
            metrics,
            revoked_grants: recently_revoked(capacity, max_ttl),
            revoked_tokens: recently_revoked(capacity, max_ttl),
            revocations_kept_until: AtomicU64::new(0),
            max_ttl,
            started: tokio::time::Instant::now(),
            grants,
            degraded: AtomicBool::new(false),
            heard: tokio::sync::broadcast::channel(1024).0,
            stream_recheck,
            forgotten_at: std::sync::Mutex::new(None),
        });
        cache.clone().spawn_eviction();
        cache
    }

    fn spawn_eviction(self: Arc<Self>) {
        let mut revocations = self.grants.subscribe_revocations();
        let cache = Arc::downgrade(&self);
        tokio::spawn(async move {
            loop {
                let event = revocations.recv().await;
                let Some(cache) = cache.upgrade() else { return };
                match event {
                    Ok(revocation) => cache.evict(revocation).await,
                    // Missed some: forget everything rather than trust stale entries.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => cache.forget_all(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Drops what a revocation makes invalid.
    pub async fn evict(&self, revocation: Revocation) {
        // Recorded before it is announced: an event stream subscribing
        // in between finds it among the recently revoked
        // (`until_session_ends`).
        // The window opens before the insert, so a lookup that could see
        // the entry looks, and is extended after it, so it outlasts the
        // entry.
        self.keep_revocations();
        match &revocation {
            Revocation::Grant(grant_id) => self.revoked_grants.insert(grant_id.clone(), ()).await,
            Revocation::AccessToken(hash) => {
                self.revoked_tokens.insert(hash.clone(), ()).await;
                self.tokens.invalidate(hash).await
            }
        }
        self.keep_revocations();
        let _ = self.heard.send(Some(revocation));
    }

    fn millis_since_start(&self) -> u64 {
        let since = crate::clock::now().saturating_duration_since(self.started);
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    /// The revoked sets may hold an entry inserted now until `max_ttl`
    /// (and a millisecond of rounding) from now.
    fn keep_revocations(&self) {
        let ttl = u64::try_from(self.max_ttl.as_millis()).unwrap_or(u64::MAX);
        let until = self
            .millis_since_start()
            .saturating_add(ttl)
            .saturating_add(1);
        self.revocations_kept_until
            .fetch_max(until, Ordering::SeqCst);
    }

    /// Whether a revocation of the session's grant or token was heard
    /// within the cache's lifetime of a token.
    pub(super) fn recently_revoked(&self, session: &Session) -> bool {
        if self.millis_since_start() > self.revocations_kept_until.load(Ordering::SeqCst) {
            // Nothing revoked within `max_ttl`: both sets are empty.
            return false;
        }
        self.revoked_grants.contains_key(&session.grant_id)
            || self.revoked_tokens.contains_key(&session.token_hash)
    }

    /// Whether revocations from other replicas may be missed now.
    pub(super) fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Whether revocations may have been missed since the store confirmed
    /// `session` (the cache forgot everything after it).
    pub(super) fn forgot_since(&self, session: &Session) -> bool {
        let forgotten_at = *self
            .forgotten_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        forgotten_at.is_some_and(|at| at >= session.confirmed.at())
    }

    /// The live session for a token, if the token is ours and valid.
    pub async fn lookup(&self, token: &str) -> Result<Option<Arc<Session>>, ProxyError> {
        let hash = crypto::TokenHash::of(token);
        let hash = hash.as_str();
        // The rare paths (a miss, a recheck, a revoked token) are boxed
        // where they are awaited: moka's loading and writing futures are
        // large, and inline they would be part of — and copied with —
        // every request's future.
        let entry = match self.cached_or_stored(token, hash).await? {
            Entry::Valid(session) if self.needs_recheck(&session) => {
                Box::pin(self.recheck(token, hash, session)).await
            }
            entry => entry,
        };
        match entry {
            Entry::Valid(session) if session.expires_at > now_unix() => {
                if self.recently_revoked(&session) {
                    Box::pin(self.tokens.invalidate(hash)).await;
                    return Ok(None);
                }
                Ok(Some(session))
            }
            _ => Ok(None),
        }
    }

    /// The cache's entry for a token, asking the store on a miss. A store
    /// that cannot answer is an error, and is not remembered.
    async fn cached_or_stored(&self, token: &str, hash: &str) -> Result<Entry, ProxyError> {
        if let Some(entry) = self.tokens.get(hash).await {
            let result = if matches!(entry, Entry::Valid(..)) {
                CacheResult::Hit
            } else {
                CacheResult::NegativeHit
            };
            self.metrics.token_cache_request(result);
            return Ok(entry);
        }
        self.metrics.token_cache_request(CacheResult::Miss);
        // Single flight: concurrent misses for one token wait for one
        // store lookup instead of each running their own.
        Box::pin(self.tokens.try_get_with(hash.to_string(), async {
            match self.grants.validate_access_token(token).await {
                Ok(session) => Ok(Entry::Valid(Arc::new(session))),
                Err(GrantError::Store(e)) => Err(e.to_string()),
                Err(_) => Ok(Entry::Unknown),
            }
        }))
        .await
        .map_err(|e: Arc<String>| ProxyError::StoreUnavailable(e.to_string()))
    }

    /// Without the revocation feed, a cached session is trusted only
    /// briefly after the store last said it is live.
    fn needs_recheck(&self, session: &Session) -> bool {
        self.is_degraded() && session.confirmed.at().elapsed() > DEGRADED_TTL
    }

    /// Asks the store again about a cached session, but keeps serving it if
    /// the store is down too.
    async fn recheck(&self, token: &str, hash: &str, session: Arc<Session>) -> Entry {
        match self.grants.validate_access_token(token).await {
            Ok(fresh) => {
                let entry = Entry::Valid(Arc::new(fresh));
                self.tokens.insert(hash.to_string(), entry.clone()).await;
                entry
            }
            Err(GrantError::Store(e)) => {
                tracing::warn!(error = %e, "store unreachable; serving a cached session");
                Entry::Valid(session)
            }
            Err(_) => {
                self.tokens.insert(hash.to_string(), Entry::Unknown).await;
                Entry::Unknown
            }
        }
    }

    /// Holds `session` as the live session of `token`, as a lookup that
    /// read it from the store would (for the benchmarks: `bench_support`).
    pub(crate) async fn hold(&self, token: &str, session: Session) {
        self.tokens
            .insert(crypto::token_hash(token), Entry::Valid(Arc::new(session)))
            .await;
    }

    /// Drops every cached session; the next request asks the store.
    pub fn forget_all(&self) {
        *self
            .forgotten_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tokio::time::Instant::now());
        self.tokens.invalidate_all();
        let _ = self.heard.send(None);
    }

    /// Whether revocations from other replicas may be missed (the feed is
    /// down); cached sessions are then re-checked every `DEGRADED_TTL`.
    pub fn set_degraded(&self, degraded: bool) {
        if self.degraded.swap(degraded, Ordering::Relaxed) != degraded {
            if degraded {
                tracing::warn!("revocation feed down: cached sessions are re-checked every second");
            } else {
                tracing::info!("revocation feed up");
            }
        }
    }

    /// Refreshes the size gauge (called when metrics are scraped).
    pub async fn report_size(&self) {
        // moka counts lazily; settle pending work so the gauge is exact.
        self.tokens.run_pending_tasks().await;
        self.metrics.token_cache_size(self.tokens.entry_count());
    }
}

/// What was revoked within the longest time a cache entry lives.
fn recently_revoked(capacity: u64, max_ttl: Duration) -> Cache<String, ()> {
    Cache::builder()
        .max_capacity(capacity)
        .time_to_live(max_ttl)
        .build()
}

/// Counts the cache's evictions by cause.
fn count_evictions(
    metrics: Arc<Metrics>,
) -> impl Fn(Arc<String>, Entry, moka::notification::RemovalCause) + Send + Sync + 'static {
    move |_key, _value, cause| {
        use moka::notification::RemovalCause;
        let cause = match cause {
            RemovalCause::Expired => EvictionCause::Expired,
            RemovalCause::Explicit => EvictionCause::Explicit,
            RemovalCause::Replaced => EvictionCause::Replaced,
            RemovalCause::Size => EvictionCause::Size,
        };
        metrics.token_cache_eviction(cause);
    }
}

#[cfg(test)]
mod tests;
