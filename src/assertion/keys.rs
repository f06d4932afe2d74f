//! The identity assertion's signing keys: one Ed25519 key per generation
//! (`floor(now / rotation_interval)`), kept in the store with its private
//! part sealed, agreed on by every replica.
//!
//! The first replica to need a generation's key creates it with an atomic
//! insert-if-absent; a replica that loses the race reads the winner's. The
//! published set (JWKS) is the current key, the next one (so verifiers that
//! cache the set know it before it signs) and, until the last assertion
//! it signed has expired, the previous one.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::SigningKey;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse,
};
use serde::{Deserialize, Serialize};

use crate::crypto::{self, Keys};
use crate::store::{Namespace, SharedStore, StoreError, StoreResult};

/// A generation's key as the store keeps it: public half in the clear,
/// private seed sealed with a key derived from `secrets.encryption_key`.
#[derive(Serialize, Deserialize)]
pub(crate) struct SigningKeyRecord {
    /// The key's id (`kid`), random.
    pub(crate) kid: String,
    /// Which interval of `rotation_interval` it signs in.
    pub(crate) generation: i64,
    /// The Ed25519 public key, base64url.
    pub(crate) public: String,
    /// The 32-byte seed, sealed (label: generation and kid), base64url.
    pub(crate) sealed: String,
}

/// One key, parsed once: what signing needs.
pub(crate) struct ActiveKey {
    /// The key's id.
    pub(crate) kid: String,
    /// Its generation.
    pub(crate) generation: i64,
    /// The private key, expanded once.
    pub(crate) signing: SigningKey,
    /// `base64url({"alg":"EdDSA","typ":"JWT","kid":…})`, written once.
    pub(crate) header: String,
}

impl ActiveKey {
    fn new(kid: String, generation: i64, signing: SigningKey) -> Self {
        let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
        ActiveKey {
            header: URL_SAFE_NO_PAD.encode(header.to_string()),
            kid,
            generation,
            signing,
        }
    }

    fn jwk(&self) -> Jwk {
        Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::EdDSA),
                key_id: Some(self.kid.clone()),
                ..Default::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: URL_SAFE_NO_PAD.encode(self.signing.verifying_key().to_bytes()),
            }),
        }
    }
}

/// What one replica holds between two looks at the store.
pub(crate) struct KeySet {
    /// The key that signs now.
    pub(crate) active: Arc<ActiveKey>,
    /// The JWKS document, serialised once.
    pub(crate) jwks: Bytes,
    /// The published key ids, previous (if still published), current, next.
    pub(crate) kids: Vec<String>,
    /// Unix seconds from which this set is out of date (the next
    /// generation starts, or the previous key stops being published).
    pub(crate) fresh_until: i64,
}

/// The keys of one deployment, shared through the store.
pub(crate) struct KeyRing {
    store: SharedStore,
    keys: Keys,
    rotation: i64,
    lifetime: i64,
    current: RwLock<Option<Arc<KeySet>>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl KeyRing {
    pub(crate) fn new(
        store: SharedStore,
        keys: Keys,
        rotation_secs: u64,
        lifetime_secs: u64,
    ) -> Self {
        KeyRing {
            store,
            keys,
            rotation: i64::try_from(rotation_secs.max(1)).unwrap_or(i64::MAX),
            lifetime: i64::try_from(lifetime_secs).unwrap_or(i64::MAX),
            current: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The set for `now`: the one in memory while it is fresh (no store
    /// call), otherwise read (and, where missing, created) in the store.
    pub(crate) async fn at(&self, now: i64) -> StoreResult<Arc<KeySet>> {
        if let Some(set) = self.fresh(now) {
            return Ok(set);
        }
        let _one_at_a_time = self.refreshing.lock().await;
        if let Some(set) = self.fresh(now) {
            return Ok(set);
        }
        let set = Arc::new(self.load(now).await?);
        if let Ok(mut current) = self.current.write() {
            // A caller whose `now` was taken just before a rotation must not
            // put the older generation's set back over the newer one.
            let newer_held = current
                .as_ref()
                .is_some_and(|held| held.active.generation > set.active.generation);
            if !newer_held {
                *current = Some(set.clone());
            }
        }
        Ok(set)
    }

    fn fresh(&self, now: i64) -> Option<Arc<KeySet>> {
        let current = self.current.read().ok()?;
        current
            .as_ref()
            .filter(|s| now < s.fresh_until && now.div_euclid(self.rotation) == s.active.generation)
            .cloned()
    }

    async fn load(&self, now: i64) -> StoreResult<KeySet> {
        let generation = now.div_euclid(self.rotation);
        let starts = generation * self.rotation;
        let active = Arc::new(self.ensure(generation, now).await?);
        let next = self.ensure(generation + 1, now).await?;
        // The previous key's last assertion expires `lifetime` after this
        // generation started; until then verifiers still need it.
        let previous_needed_until = starts + self.lifetime;
        let previous = if now < previous_needed_until {
            self.read(generation - 1).await?
        } else {
            None
        };
        let fresh_until = if previous.is_some() {
            previous_needed_until
        } else {
            starts + self.rotation
        };
        let published: Vec<&ActiveKey> = previous.iter().chain([&*active, &next]).collect();
        let set = JwkSet {
            keys: published.iter().map(|k| k.jwk()).collect(),
        };
        let jwks = serde_json::to_vec(&set).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(KeySet {
            kids: published.iter().map(|k| k.kid.clone()).collect(),
            active,
            jwks: Bytes::from(jwks),
            fresh_until,
        })
    }

    /// The generation's key; created (insert-if-absent) when no replica
    /// has yet, and then the winner's.
    async fn ensure(&self, generation: i64, now: i64) -> StoreResult<ActiveKey> {
        if let Some(key) = self.read(generation).await? {
            return Ok(key);
        }
        let seed = crypto::random_key();
        let signing = SigningKey::from_bytes(&seed);
        let kid = crypto::random_id();
        let record = SigningKeyRecord {
            sealed: URL_SAFE_NO_PAD
                .encode(self.keys.seal_signing_key(&label(generation, &kid), &seed)),
            public: URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes()),
            kid: kid.clone(),
            generation,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // Kept while any assertion it signed can still be verified, and a
        // generation more.
        let until = (generation + 2) * self.rotation + self.lifetime;
        let ttl = Duration::from_secs(u64::try_from(until - now).unwrap_or(0)) + self.interval();
        if self
            .store
            .insert_new(Namespace::SigningKey, &generation.to_string(), &bytes, ttl)
            .await?
        {
            tracing::info!(kid = %kid, generation, "created an identity assertion signing key");
            return Ok(ActiveKey::new(kid, generation, signing));
        }
        self.read(generation).await?.ok_or_else(|| {
            StoreError::Backend(format!(
                "the signing key of generation {generation} was neither inserted nor found"
            ))
        })
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.rotation).unwrap_or(u64::MAX))
    }

    async fn read(&self, generation: i64) -> StoreResult<Option<ActiveKey>> {
        let Some(bytes) = self
            .store
            .get(Namespace::SigningKey, &generation.to_string())
            .await?
        else {
            return Ok(None);
        };
        let record: SigningKeyRecord =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.open(record).map(Some)
    }

    fn open(&self, record: SigningKeyRecord) -> StoreResult<ActiveKey> {
        let unreadable = |why: &str| {
            StoreError::Corrupt(format!(
                "identity assertion key {} (generation {}) {why}; was secrets.encryption_key changed?",
                record.kid, record.generation
            ))
        };
        let sealed = URL_SAFE_NO_PAD
            .decode(&record.sealed)
            .map_err(|_| unreadable("is not base64url"))?;
        let seed = self
            .keys
            .open_signing_key(&label(record.generation, &record.kid), &sealed)
            .map_err(|_| unreadable("does not open"))?;
        let seed: [u8; 32] = seed.try_into().map_err(|_| unreadable("is not 32 bytes"))?;
        let signing = SigningKey::from_bytes(&seed);
        if URL_SAFE_NO_PAD.encode(signing.verifying_key().to_bytes()) != record.public {
            return Err(unreadable("does not match its public key"));
        }
        Ok(ActiveKey::new(record.kid, record.generation, signing))
    }
}

/// What a sealed key is bound to.
fn label(generation: i64, kid: &str) -> String {
    format!("identity-assertion-key\0{generation}\0{kid}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    fn ring(store: SharedStore) -> KeyRing {
        KeyRing::new(store, Keys::new([3; 32]), 100, 10)
    }

    fn memory() -> SharedStore {
        {
            let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
            Arc::new(SqliteStore::open(&dir.path().join("keys.db")).unwrap())
        }
    }

    #[tokio::test]
    async fn a_generation_publishes_current_and_next_and_the_previous_until_its_assertions_expire()
    {
        let ring = ring(memory());
        let early = ring.at(1_005).await.unwrap();
        // Generation 10 began at 1000; generation 9's assertions live to 1010.
        // Generation 9 never existed here, so only current and next.
        assert_eq!(early.kids.len(), 2);
        assert_eq!(early.fresh_until, 1_100);
        let next = ring.at(1_100).await.unwrap();
        assert_eq!(next.active.kid, early.kids[1], "the next key signs next");
        assert_eq!(
            next.kids[0], early.active.kid,
            "the previous key is still published"
        );
        assert_eq!(next.fresh_until, 1_110);
        let later = ring.at(1_110).await.unwrap();
        assert!(!later.kids.contains(&early.active.kid));
        assert_eq!(later.active.kid, next.active.kid);
    }

    #[tokio::test]
    async fn a_late_caller_does_not_put_an_older_generation_back() {
        let ring = ring(memory());
        let newer = ring.at(1_105).await.unwrap();
        // A caller that read the clock just before the rotation.
        let older = ring.at(1_099).await.unwrap();
        assert_eq!(older.active.generation, newer.active.generation - 1);
        let held = ring.current.read().unwrap().clone().unwrap();
        assert_eq!(held.active.kid, newer.active.kid);
    }

    #[tokio::test]
    async fn a_fresh_set_is_served_from_memory() {
        let ring = ring(memory());
        let a = ring.at(1_050).await.unwrap();
        let b = ring.at(1_060).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[tokio::test]
    async fn another_secret_cannot_open_the_keys() {
        let store = memory();
        ring(store.clone()).at(1_050).await.unwrap();
        let other = KeyRing::new(store, Keys::new([4; 32]), 100, 10);
        let error = match other.at(1_050).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("opened with another secret"),
        };
        assert!(error.contains("secrets.encryption_key"), "{error}");
    }
}
