//! The records the authorization server keeps, and typed access to them.

use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Namespace, SharedStore, StoreError, StoreResult};
pub use crate::session::UpstreamTokens;

/// A registered MCP client (RFC 7591).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientRecord {
    pub client_id: String,
    /// SHA-256 of the secret, for confidential clients.
    pub client_secret_hash: Option<String>,
    pub redirect_uris: Vec<String>,
    pub token_endpoint_auth_method: String,
    pub grant_types: Vec<String>,
    pub response_types: Vec<String>,
    pub client_name: Option<String>,
    /// Other registered metadata, echoed back as registered.
    pub metadata: Map<String, Value>,
    pub client_id_issued_at: i64,
    pub last_used_at: i64,
}

impl ClientRecord {
    pub fn is_public(&self) -> bool {
        self.token_endpoint_auth_method == "none"
    }

    pub fn allows_grant(&self, grant_type: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant_type)
    }

    /// What people see on the consent page.
    pub fn display_name(&self) -> &str {
        self.client_name.as_deref().unwrap_or(&self.client_id)
    }
}

/// An authorization request between `/authorize` and `/callback`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingAuthorization {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub scope: Option<String>,
    pub resource: Option<String>,
    /// The browser that started the flow; consent and callback must come
    /// from the same one.
    pub browser_id: String,
    pub created_at: i64,
    /// Set once the user approved and the browser went to the provider.
    pub upstream: Option<UpstreamLeg>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpstreamLeg {
    pub pkce_verifier: String,
    pub nonce: String,
}

/// A user's (browser's) approval of a client and redirect URI.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConsentRecord {
    pub client_id: String,
    pub redirect_uri: String,
    pub approved_at: i64,
}

/// An authorization code, kept after use until it expires so that a replay
/// is recognised and revokes the grant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CodeRecord {
    pub grant_id: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub resource: Option<String>,
    pub scope: Option<String>,
    #[serde(with = "b64")]
    pub wrapped_key: Vec<u8>,
    pub used: bool,
    pub expires_at: i64,
}

/// What a user authorized a client to do, with the identity behind it.
/// `sealed` holds `GrantSecrets`, encrypted with the grant's own key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GrantRecord {
    pub grant_id: String,
    pub client_id: String,
    pub sub: String,
    pub email: Option<String>,
    pub scope: Option<String>,
    pub resource: Option<String>,
    pub created_at: i64,
    /// Hash of the newest refresh token.
    pub refresh_current: Option<String>,
    /// Hash of the one before it, usable until the newest is first used.
    pub refresh_previous: Option<String>,
    /// When the refresh token last rotated (Unix milliseconds).
    #[serde(default)]
    pub rotated_at: i64,
    /// When the provider last confirmed the person (Unix seconds): the
    /// login, or the last renewal of the provider's tokens. Records written
    /// before this field existed read 0, taken as `created_at`.
    #[serde(default)]
    pub validated_at: i64,
    #[serde(with = "b64")]
    pub sealed: Vec<u8>,
}

impl GrantRecord {
    /// When the provider last said yes to this person.
    pub fn confirmed_at(&self) -> i64 {
        if self.validated_at > 0 {
            self.validated_at
        } else {
            self.created_at
        }
    }
}

/// The confidential part of a grant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct GrantSecrets {
    /// Every claim of the id_token, merged with userinfo when configured.
    pub claims: Map<String, Value>,
    pub upstream: UpstreamTokens,
}

/// An access or refresh token, stored under its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    pub grant_id: String,
    pub client_id: String,
    pub resource: Option<String>,
    pub scope: Option<String>,
    pub expires_at: i64,
    #[serde(with = "b64")]
    pub wrapped_key: Vec<u8>,
}

/// Typed access to the store.
#[derive(Clone)]
pub struct Records {
    pub store: SharedStore,
}

pub fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Records {
    pub fn new(store: SharedStore) -> Self {
        Records { store }
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        ns: Namespace,
        key: &str,
    ) -> StoreResult<Option<T>> {
        self.store
            .get(ns, key)
            .await?
            .map(|b| decode(&b))
            .transpose()
    }

    /// The record together with its exact bytes, for a later compare-and-swap.
    pub async fn get_versioned<T: DeserializeOwned>(
        &self,
        ns: Namespace,
        key: &str,
    ) -> StoreResult<Option<(T, Vec<u8>)>> {
        match self.store.get(ns, key).await? {
            Some(bytes) => Ok(Some((decode(&bytes)?, bytes))),
            None => Ok(None),
        }
    }

    pub async fn put<T: Serialize>(
        &self,
        ns: Namespace,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.store.put(ns, key, &encode(value)?, ttl).await
    }

    pub async fn insert_new<T: Serialize>(
        &self,
        ns: Namespace,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> StoreResult<bool> {
        self.store.insert_new(ns, key, &encode(value)?, ttl).await
    }

    pub async fn take<T: DeserializeOwned>(
        &self,
        ns: Namespace,
        key: &str,
    ) -> StoreResult<Option<T>> {
        self.store
            .take(ns, key)
            .await?
            .map(|b| decode(&b))
            .transpose()
    }

    pub async fn swap<T: Serialize>(
        &self,
        ns: Namespace,
        key: &str,
        expected: &[u8],
        new: &T,
        ttl: Duration,
    ) -> StoreResult<bool> {
        self.store
            .compare_and_swap(ns, key, expected, Some(&encode(new)?), ttl)
            .await
    }

    pub async fn delete(&self, ns: Namespace, key: &str) -> StoreResult<bool> {
        self.store.delete(ns, key).await
    }
}

/// Seconds left until `expires_at`, at least one.
pub fn ttl_until(expires_at: i64) -> Duration {
    Duration::from_secs((expires_at - crate::now_unix()).max(1) as u64)
}

mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}
