//! Test doubles for the token cache and Authenticate: a SQLite store in a
//! temporary directory that counts token reads, can fail on demand, and can
//! hold a lookup halfway; and tokens issued straight into it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::Notify;

use super::TokenCache;
use crate::crypto::{self, Keys};
use crate::grants::{Grants, Lifetimes};
use crate::metrics::Metrics;
use crate::now_unix;
use crate::session::UpstreamTokens;
use crate::store::sqlite::SqliteStore;
use crate::store::{
    encode, ttl_until, GrantRecord, GrantSecrets, Namespace, Records, SharedStore, Store,
    StoreError, StoreResult, TokenRecord,
};

const SECRET: [u8; 32] = [42; 32];
const DAY: Duration = Duration::from_secs(86_400);
pub(super) const CLIENT_ID: &str = "client-1";

/// Where a lookup in progress waits, after it read the access token and its
/// grant, before it reads the client (its last read).
#[derive(Default)]
pub(super) struct Gate {
    /// Notified when a lookup reaches the gate.
    pub(super) reached: Notify,
    /// Notify to let it go on.
    pub(super) release: Notify,
}

/// A real SQLite store with a few switches.
pub(super) struct TestStore {
    inner: SqliteStore,
    _dir: tempfile::TempDir,
    /// Every operation fails while set.
    pub(super) failing: AtomicBool,
    /// Reads of access token records: how often the store was asked.
    pub(super) token_reads: AtomicUsize,
    /// The next client read waits here.
    pub(super) hold_next_client_read: Mutex<Option<Arc<Gate>>>,
}

impl TestStore {
    fn check(&self) -> StoreResult<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("the test store is down".into()));
        }
        Ok(())
    }

    pub(super) fn reads(&self) -> usize {
        self.token_reads.load(Ordering::SeqCst)
    }

    pub(super) fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

#[async_trait]
impl Store for TestStore {
    async fn put(&self, ns: Namespace, key: &str, value: &[u8], ttl: Duration) -> StoreResult<()> {
        self.check()?;
        self.inner.put(ns, key, value, ttl).await
    }
    async fn insert_new(
        &self,
        ns: Namespace,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner.insert_new(ns, key, value, ttl).await
    }
    async fn get(&self, ns: Namespace, key: &str) -> StoreResult<Option<Vec<u8>>> {
        if ns == Namespace::AccessToken {
            self.token_reads.fetch_add(1, Ordering::SeqCst);
        }
        self.check()?;
        let gate = match ns {
            Namespace::Client => self
                .hold_next_client_read
                .lock()
                .ok()
                .and_then(|mut g| g.take()),
            _ => None,
        };
        if let Some(gate) = gate {
            gate.reached.notify_one();
            gate.release.notified().await;
        }
        self.inner.get(ns, key).await
    }
    async fn take(&self, ns: Namespace, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.check()?;
        self.inner.take(ns, key).await
    }
    async fn compare_and_swap(
        &self,
        ns: Namespace,
        key: &str,
        expected: &[u8],
        new: Option<&[u8]>,
        ttl: Duration,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner
            .compare_and_swap(ns, key, expected, new, ttl)
            .await
    }
    async fn delete(&self, ns: Namespace, key: &str) -> StoreResult<bool> {
        self.check()?;
        self.inner.delete(ns, key).await
    }
    async fn list(&self, ns: Namespace) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.check()?;
        self.inner.list(ns).await
    }
    async fn purge_expired(&self) -> StoreResult<u64> {
        self.check()?;
        self.inner.purge_expired().await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.check()?;
        self.inner.ping().await
    }
}

/// A token issued into the test store.
pub(super) struct Issued {
    pub(super) token: String,
    pub(super) grant_id: String,
}

/// A store, the grants over it, and a way to issue tokens.
pub(super) struct Fixture {
    pub(super) store: Arc<TestStore>,
    pub(super) grants: Grants,
    records: Records,
    keys: Keys,
}

impl Fixture {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = SqliteStore::open(&dir.path().join("proxy.db")).expect("sqlite store");
        let store = Arc::new(TestStore {
            inner,
            _dir: dir,
            failing: AtomicBool::new(false),
            token_reads: AtomicUsize::new(0),
            hold_next_client_read: Mutex::new(None),
        });
        let shared: SharedStore = store.clone();
        let records = Records::new(shared);
        let lifetimes = Lifetimes {
            access: DAY,
            refresh: DAY,
            code: DAY,
            max_grant_age: DAY,
            revalidate_after: DAY,
        };
        Fixture {
            grants: Grants::new(records.clone(), Keys::new(SECRET), lifetimes),
            store,
            records,
            keys: Keys::new(SECRET),
        }
    }

    /// A token cache over this store (1,000 entries, stream re-checks every
    /// minute).
    pub(super) fn cache(&self, max_ttl: Duration, negative_ttl: Duration) -> Arc<TokenCache> {
        self.cache_rechecking_streams_every(max_ttl, negative_ttl, Duration::from_secs(60))
    }

    /// A token cache whose open streams ask the store every `stream_recheck`.
    pub(super) fn cache_rechecking_streams_every(
        &self,
        max_ttl: Duration,
        negative_ttl: Duration,
        stream_recheck: Duration,
    ) -> Arc<TokenCache> {
        TokenCache::new(
            self.grants.clone(),
            1_000,
            max_ttl,
            negative_ttl,
            stream_recheck,
            Metrics::new(&[]),
        )
    }

    /// Stores a grant for `alice` and an access token on it that expires in
    /// `expires_in` seconds, bound to `resource` if given.
    pub(super) async fn issue(&self, expires_in: i64, resource: Option<&str>) -> Issued {
        let (token, grant_id, grant_key) = (
            crypto::random_token(),
            crypto::random_id(),
            crypto::random_key(),
        );
        let secrets = GrantSecrets {
            claims: json!({"sub": "alice", "email": "alice@example.com"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            upstream: UpstreamTokens {
                access_token: "provider-access".into(),
                refresh_token: Some("provider-refresh".into()),
                ..Default::default()
            },
        };
        let grant = GrantRecord {
            grant_id: grant_id.clone(),
            client_id: CLIENT_ID.into(),
            sub: "alice".into(),
            email: Some("alice@example.com".into()),
            scope: None,
            resource: resource.map(str::to_string),
            created_at: now_unix(),
            refresh_current: None,
            refresh_previous: None,
            rotated_at: 0,
            validated_at: now_unix(),
            sealed: crypto::seal(
                &grant_key,
                grant_id.as_bytes(),
                &encode(&secrets).expect("encode"),
            ),
        };
        let expires_at = now_unix() + expires_in;
        let record = TokenRecord {
            grant_id: grant_id.clone(),
            client_id: CLIENT_ID.into(),
            resource: resource.map(str::to_string),
            scope: None,
            expires_at,
            wrapped_key: self.keys.wrap_grant_key(&token, &grant_key),
        };
        self.records
            .put(Namespace::Grant, &grant_id, &grant, DAY)
            .await
            .expect("store the grant");
        self.records
            .put(
                Namespace::AccessToken,
                &crypto::token_hash(&token),
                &record,
                ttl_until(expires_at),
            )
            .await
            .expect("store the token");
        Issued { token, grant_id }
    }
}
