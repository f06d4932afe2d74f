//! State: one key-value `Store` trait with expiry, atomic take and
//! compare-and-swap, so the embedded SQLite backend and a shared backend for
//! several replicas are interchangeable.
//!
//! Keys of token records are token hashes; the store never sees a token.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::StatusCode;

use crate::error::{OAuthError, PageError};

pub(crate) mod records;
pub(crate) mod redis;
pub mod sqlite;

pub use records::*;

/// The kinds of record, each in its own key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// Registered clients (`ClientRecord`), by client id.
    Client,
    /// Sign-ins between `/authorize` and `/callback`, sealed, by the hash of
    /// their id; also the locks that keep one renewal of a grant's provider
    /// tokens at a time.
    Pending,
    /// Remembered approvals (`ConsentRecord`), by a hash of browser, client
    /// and redirect URI.
    Consent,
    /// Authorization codes (`CodeRecord`), by hash.
    Code,
    /// Grants (`GrantRecord`), by grant id.
    Grant,
    /// Access tokens (`TokenRecord`), by hash.
    AccessToken,
    /// Refresh tokens (`TokenRecord`), by hash.
    RefreshToken,
    /// Which user a downstream MCP session belongs to.
    McpSession,
    /// Assertions already presented (ID-JAG `jti`s), by a hash of issuer
    /// and `jti`, kept until the assertion expires: each is used once.
    Assertion,
    /// The identity assertion's signing keys (`SigningKeyRecord`, private
    /// part sealed), by generation.
    SigningKey,
}

impl Namespace {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Namespace::Client => "client",
            Namespace::Pending => "pending",
            Namespace::Consent => "consent",
            Namespace::Code => "code",
            Namespace::Grant => "grant",
            Namespace::AccessToken => "access",
            Namespace::RefreshToken => "refresh",
            Namespace::McpSession => "mcp_session",
            Namespace::Assertion => "assertion",
            Namespace::SigningKey => "signing_key",
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend did not answer or refused (SQLite, Redis, a lock); usually
    /// temporary, so requests fail with "try again".
    #[error("store backend error: {0}")]
    Backend(String),
    /// A record would not encode or decode: the server's own failure.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// The result of every store operation.
pub type StoreResult<T> = Result<T, StoreError>;

// A store that does not answer is temporary: clients retry, people try again.
// A corrupt record is the server's own failure. Either way the cause is the
// administrator's to read, in the log the error is rendered with.

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Backend(_) => OAuthError::temporarily_unavailable(
                "the authorization store is unavailable; try again shortly",
            )
            .caused_by("the store is unavailable", &e),
            StoreError::Corrupt(_) => OAuthError::server_error("store operation failed", &e),
        }
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Backend(_) => PageError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in temporarily unavailable",
                "The sign-in service cannot reach its storage right now. Try again in a moment.",
            )
            .caused_by("the store is unavailable", &e),
            StoreError::Corrupt(_) => PageError::internal("store operation failed", &e),
        }
    }
}

/// A key-value store whose every record expires.
///
/// Implementations must make `take`, `insert_new` and `compare_and_swap`
/// atomic across every process sharing the store: two replicas racing for
/// one authorization code get exactly one winner.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts or replaces a record.
    async fn put(&self, ns: Namespace, key: &str, value: &[u8], ttl: Duration) -> StoreResult<()>;

    /// Inserts only when no live record has this key; true when inserted.
    async fn insert_new(
        &self,
        ns: Namespace,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> StoreResult<bool>;

    /// The live record, if any.
    async fn get(&self, ns: Namespace, key: &str) -> StoreResult<Option<Vec<u8>>>;

    /// Removes and returns the live record: single use.
    async fn take(&self, ns: Namespace, key: &str) -> StoreResult<Option<Vec<u8>>>;

    /// Replaces the live record only if it still equals `expected`; `None`
    /// as `new` deletes it. True when the swap happened.
    async fn compare_and_swap(
        &self,
        ns: Namespace,
        key: &str,
        expected: &[u8],
        new: Option<&[u8]>,
        ttl: Duration,
    ) -> StoreResult<bool>;

    /// Removes a record; true if a live one was there.
    async fn delete(&self, ns: Namespace, key: &str) -> StoreResult<bool>;

    /// Every live record of a namespace, for administration (never on a
    /// request path).
    async fn list(&self, ns: Namespace) -> StoreResult<Vec<(String, Vec<u8>)>>;

    /// Removes expired records; returns how many.
    async fn purge_expired(&self) -> StoreResult<u64>;

    /// Cheap check that the backend answers (readiness).
    async fn ping(&self) -> StoreResult<()>;
}

/// The store as the app holds it: one backend shared by every handler (and
/// with `InstrumentedStore` around it, timed).
pub type SharedStore = Arc<dyn Store>;

/// Opens the store `[store]` names: Redis when `store.redis_url` is set,
/// else the SQLite file at `store.path` (created when missing). The proxy
/// and the administration commands both open it here, so they always agree
/// on which store that is.
pub fn open(config: &crate::config::StoreConfig) -> StoreResult<SharedStore> {
    Ok(match &config.redis_url {
        Some(url) => Arc::new(redis::RedisStore::open(url.expose(), &config.redis_prefix)?),
        None => Arc::new(sqlite::SqliteStore::open(&config.path)?),
    })
}

/// Removes expired records every `interval` until the process ends.
pub(crate) fn spawn_purge(store: SharedStore, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match store.purge_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(removed = n, "purged expired records"),
                Err(e) => tracing::warn!(error = %e, "purging expired records failed"),
            }
        }
    })
}

use crate::metrics::labels::StoreOperation;

/// A store that times every operation into the metrics.
pub(crate) struct InstrumentedStore {
    inner: SharedStore,
    metrics: Arc<crate::metrics::Metrics>,
}

impl InstrumentedStore {
    pub(crate) fn wrap(inner: SharedStore, metrics: Arc<crate::metrics::Metrics>) -> SharedStore {
        Arc::new(InstrumentedStore { inner, metrics })
    }

    async fn timed<T>(
        &self,
        operation: StoreOperation,
        f: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        if !self.metrics.enabled() {
            return f.await;
        }
        let started = std::time::Instant::now();
        let result = f.await;
        self.metrics
            .observe_store(operation, started.elapsed(), result.is_ok());
        result
    }
}

#[async_trait]
impl Store for InstrumentedStore {
    async fn put(&self, ns: Namespace, key: &str, value: &[u8], ttl: Duration) -> StoreResult<()> {
        self.timed(StoreOperation::Put, self.inner.put(ns, key, value, ttl))
            .await
    }
    async fn insert_new(
        &self,
        ns: Namespace,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> StoreResult<bool> {
        self.timed(
            StoreOperation::InsertNew,
            self.inner.insert_new(ns, key, value, ttl),
        )
        .await
    }
    async fn get(&self, ns: Namespace, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.timed(StoreOperation::Get, self.inner.get(ns, key))
            .await
    }
    async fn take(&self, ns: Namespace, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.timed(StoreOperation::Take, self.inner.take(ns, key))
            .await
    }
    async fn compare_and_swap(
        &self,
        ns: Namespace,
        key: &str,
        expected: &[u8],
        new: Option<&[u8]>,
        ttl: Duration,
    ) -> StoreResult<bool> {
        self.timed(
            StoreOperation::CompareAndSwap,
            self.inner.compare_and_swap(ns, key, expected, new, ttl),
        )
        .await
    }
    async fn delete(&self, ns: Namespace, key: &str) -> StoreResult<bool> {
        self.timed(StoreOperation::Delete, self.inner.delete(ns, key))
            .await
    }
    async fn list(&self, ns: Namespace) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.timed(StoreOperation::List, self.inner.list(ns)).await
    }
    async fn purge_expired(&self) -> StoreResult<u64> {
        self.timed(StoreOperation::PurgeExpired, self.inner.purge_expired())
            .await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.timed(StoreOperation::Ping, self.inner.ping()).await
    }
}

#[cfg(test)]
pub(crate) mod conformance {
    //! The behaviour every backend must show; each backend's tests call these.
    use super::*;

    const T: Duration = Duration::from_secs(60);

    pub(crate) async fn put_get_delete(store: &dyn Store) {
        assert_eq!(store.get(Namespace::Client, "a").await.unwrap(), None);
        store.put(Namespace::Client, "a", b"1", T).await.unwrap();
        assert_eq!(
            store.get(Namespace::Client, "a").await.unwrap().as_deref(),
            Some(&b"1"[..])
        );
        // Namespaces are separate key spaces.
        assert_eq!(store.get(Namespace::Grant, "a").await.unwrap(), None);
        store.put(Namespace::Client, "a", b"2", T).await.unwrap();
        assert_eq!(
            store.get(Namespace::Client, "a").await.unwrap().as_deref(),
            Some(&b"2"[..])
        );
        assert!(store.delete(Namespace::Client, "a").await.unwrap());
        assert!(!store.delete(Namespace::Client, "a").await.unwrap());
        assert_eq!(store.get(Namespace::Client, "a").await.unwrap(), None);
    }

    pub(crate) async fn take_is_single_use(store: &dyn Store) {
        store.put(Namespace::Code, "c", b"v", T).await.unwrap();
        assert_eq!(
            store.take(Namespace::Code, "c").await.unwrap().as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(store.take(Namespace::Code, "c").await.unwrap(), None);
    }

    pub(crate) async fn expired_records_are_invisible(store: &dyn Store) {
        store
            .put(Namespace::Pending, "p", b"v", Duration::from_secs(1))
            .await
            .unwrap();
        assert!(store.get(Namespace::Pending, "p").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(store.get(Namespace::Pending, "p").await.unwrap(), None);
        assert_eq!(store.take(Namespace::Pending, "p").await.unwrap(), None);
        // An expired key may be inserted anew.
        assert!(store
            .insert_new(Namespace::Pending, "p", b"w", T)
            .await
            .unwrap());
        store.purge_expired().await.unwrap();
        assert!(store.get(Namespace::Pending, "p").await.unwrap().is_some());
    }

    pub(crate) async fn insert_new_and_cas(store: &dyn Store) {
        assert!(store
            .insert_new(Namespace::Grant, "g", b"1", T)
            .await
            .unwrap());
        assert!(!store
            .insert_new(Namespace::Grant, "g", b"x", T)
            .await
            .unwrap());
        assert!(!store
            .compare_and_swap(Namespace::Grant, "g", b"0", Some(b"2"), T)
            .await
            .unwrap());
        assert!(store
            .compare_and_swap(Namespace::Grant, "g", b"1", Some(b"2"), T)
            .await
            .unwrap());
        assert_eq!(
            store.get(Namespace::Grant, "g").await.unwrap().as_deref(),
            Some(&b"2"[..])
        );
        assert!(store
            .compare_and_swap(Namespace::Grant, "g", b"2", None, T)
            .await
            .unwrap());
        assert_eq!(store.get(Namespace::Grant, "g").await.unwrap(), None);
        assert!(!store
            .compare_and_swap(Namespace::Grant, "missing", b"2", Some(b"3"), T)
            .await
            .unwrap());
    }

    pub(crate) async fn racing_takes_have_one_winner(store: SharedStore) {
        store.put(Namespace::Code, "race", b"v", T).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.take(Namespace::Code, "race").await.unwrap().is_some()
            }));
        }
        let mut winners = 0;
        for t in tasks {
            winners += t.await.unwrap() as usize;
        }
        assert_eq!(winners, 1);
    }

    pub(crate) async fn racing_swaps_have_one_winner(store: SharedStore) {
        store.put(Namespace::Grant, "cas", b"0", T).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..10u8 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.compare_and_swap(Namespace::Grant, "cas", b"0", Some(&[b'a' + i]), T)
                    .await
                    .unwrap()
            }));
        }
        let mut winners = 0;
        for t in tasks {
            winners += t.await.unwrap() as usize;
        }
        assert_eq!(winners, 1);
    }

    pub(crate) async fn assertions_are_single_use(store: SharedStore) {
        let records = Records::new(store);
        let ttl = Duration::from_secs(60);
        assert!(records
            .first_use_of_assertion("https://idp", "j1", ttl)
            .await
            .unwrap());
        assert!(!records
            .first_use_of_assertion("https://idp", "j1", ttl)
            .await
            .unwrap());
        // The same jti from another issuer is another assertion.
        assert!(records
            .first_use_of_assertion("https://other", "j1", ttl)
            .await
            .unwrap());
        // Racing presentations of one assertion: one wins.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let r = records.clone();
            tasks.push(tokio::spawn(async move {
                r.first_use_of_assertion("https://idp", "race", ttl)
                    .await
                    .unwrap()
            }));
        }
        let mut wins = 0;
        for t in tasks {
            wins += usize::from(t.await.unwrap());
        }
        assert_eq!(wins, 1);
    }

    pub(crate) async fn list_returns_live_records(store: &dyn Store) {
        store.put(Namespace::Consent, "k1", b"a", T).await.unwrap();
        store.put(Namespace::Consent, "k2", b"b", T).await.unwrap();
        let mut all = store.list(Namespace::Consent).await.unwrap();
        all.sort();
        assert_eq!(
            all,
            vec![("k1".into(), b"a".to_vec()), ("k2".into(), b"b".to_vec())]
        );
        store.ping().await.unwrap();
    }
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn an_unreachable_store_is_temporary_and_its_cause_kept_for_the_log() {
        let oauth = OAuthError::from(StoreError::Backend("connection refused".into()));
        assert_eq!(oauth.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(oauth.code, "temporarily_unavailable");
        let cause = oauth.internal_cause().unwrap();
        assert_eq!(cause.context, "the store is unavailable");
        assert_eq!(cause.error, "store backend error: connection refused");
        assert!(!oauth.description.contains("connection refused"));

        let page = PageError::from(StoreError::Backend("connection refused".into()));
        assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(page.title, "Sign-in temporarily unavailable");
        assert_eq!(
            page.internal_cause().unwrap().context,
            "the store is unavailable"
        );
    }

    #[test]
    fn a_corrupt_record_is_the_servers_failure() {
        let oauth = OAuthError::from(StoreError::Corrupt("bad json".into()));
        assert_eq!(oauth.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(oauth.code, "server_error");
        assert_eq!(
            oauth.internal_cause().unwrap().error,
            "stored record is corrupt: bad json"
        );
        let page = PageError::from(StoreError::Corrupt("bad json".into()));
        assert_eq!(page.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            page.internal_cause().unwrap().context,
            "store operation failed"
        );
    }
}
