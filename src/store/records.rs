//! The records the authorization server keeps, and typed access to them.

use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Namespace, SharedStore, StoreError, StoreResult};
pub use crate::session::UpstreamTokens;

/// A registered MCP client (RFC 7591).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientRecord {
    /// The id the proxy issued at registration, or the metadata document's
    /// URL for a client identified by one (CIMD); the record's key.
    pub client_id: String,
    /// SHA-256 of the secret, for confidential clients.
    pub(crate) client_secret_hash: Option<String>,
    /// The redirect URIs registered, matched exactly.
    pub(crate) redirect_uris: Vec<String>,
    /// `none` (a public client), `client_secret_basic` or
    /// `client_secret_post`.
    pub(crate) token_endpoint_auth_method: String,
    /// The grant types the client may use at `/token`.
    pub(crate) grant_types: Vec<String>,
    /// The response types registered (only `code` is served).
    pub(crate) response_types: Vec<String>,
    /// The name the client registered, shown on the consent page and to
    /// the policy; `None` when it gave none.
    pub client_name: Option<String>,
    /// Other registered metadata, echoed back as registered.
    pub(crate) metadata: Map<String, Value>,
    /// Unix seconds of the registration.
    pub(crate) client_id_issued_at: i64,
    /// Unix seconds of the client's last use (`/authorize`, `/token`,
    /// `/revoke`), written at most hourly; each write keeps the
    /// registration for another `registration.client_ttl`.
    pub(crate) last_used_at: i64,
}

impl ClientRecord {
    /// A public client has no secret and authenticates with PKCE alone.
    pub(crate) fn is_public(&self) -> bool {
        self.token_endpoint_auth_method == "none"
    }

    /// Whether the client registered this grant type.
    pub(crate) fn allows_grant(&self, grant_type: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant_type)
    }

    /// The record of a `[[clients]]` entry (never stored: the
    /// configuration is its home). Marked [`CONFIGURED`] in `metadata`.
    pub(crate) fn configured(c: &crate::config::ConfiguredClient) -> Self {
        let mut metadata = Map::new();
        metadata.insert(CONFIGURED.into(), Value::Bool(true));
        ClientRecord {
            client_id: c.id.clone(),
            client_secret_hash: Some(c.secret_hash.clone()),
            redirect_uris: c.redirect_uris.clone(),
            token_endpoint_auth_method: "client_secret_basic".into(),
            grant_types: c.grant_types.clone(),
            response_types: vec!["code".into()],
            client_name: c.name.clone(),
            metadata,
            client_id_issued_at: 0,
            last_used_at: i64::MAX,
        }
    }

    /// Whether the client comes from `[[clients]]` rather than a
    /// registration.
    pub(crate) fn is_configured(&self) -> bool {
        self.metadata.get(CONFIGURED) == Some(&Value::Bool(true))
    }

    /// What people see on the consent page.
    pub(crate) fn display_name(&self) -> &str {
        self.client_name.as_deref().unwrap_or(&self.client_id)
    }
}

/// The `metadata` key that marks a client from `[[clients]]`.
pub(crate) const CONFIGURED: &str = "configured_client";

/// An authorization request between `/authorize` and `/callback`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct PendingAuthorization {
    /// The client asking.
    pub(crate) client_id: String,
    /// Where the code goes, checked against the client's registration.
    pub(crate) redirect_uri: String,
    /// The client's `state`, returned to it unchanged.
    pub(crate) state: Option<String>,
    /// The client's PKCE S256 challenge, checked when the code is redeemed.
    pub(crate) code_challenge: String,
    /// The scope the client asked for.
    pub(crate) scope: Option<String>,
    /// The resource (RFC 8707) the client asked for, validated.
    pub(crate) resource: Option<String>,
    /// The browser that started the flow; consent and callback must come
    /// from the same one.
    pub(crate) browser_id: String,
    /// Unix seconds of the `/authorize` request; the record lives a fixed
    /// time from then.
    pub(crate) created_at: i64,
    /// Set once the user approved and the browser went to the provider.
    pub(crate) upstream: Option<UpstreamLeg>,
}

/// The proxy's own sign-in at the provider, checked at `/callback`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct UpstreamLeg {
    /// The PKCE verifier of the proxy's request to the provider.
    pub(crate) pkce_verifier: String,
    /// The nonce the provider's id_token must carry.
    pub(crate) nonce: String,
}

/// A user's (browser's) approval of a client and redirect URI.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ConsentRecord {
    /// The client approved.
    pub(crate) client_id: String,
    /// The redirect URI approved with it.
    pub(crate) redirect_uri: String,
    /// Unix seconds of the approval.
    pub(crate) approved_at: i64,
    /// The MCP servers (route names) the person approved the client for.
    /// Records written before routes existed have none, and cover the
    /// only server there was then: the `default` route.
    #[serde(default)]
    pub(crate) servers: Vec<String>,
}

impl ConsentRecord {
    /// The servers approved: those named, or for a record written before
    /// routes existed, the one server there was then.
    pub(crate) fn servers(&self) -> Vec<String> {
        if self.servers.is_empty() {
            vec![crate::config::DEFAULT_ROUTE.to_string()]
        } else {
            self.servers.clone()
        }
    }

    /// Whether the approval covers every one of `servers`.
    pub(crate) fn covers(&self, servers: &[&str]) -> bool {
        let approved = self.servers();
        servers
            .iter()
            .all(|wanted| approved.iter().any(|s| s == wanted))
    }
}

/// An authorization code, kept after use until it expires so that a replay
/// is recognised and revokes the grant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct CodeRecord {
    /// The grant the code redeems into.
    pub(crate) grant_id: String,
    /// The client the code was issued to; only it may redeem it.
    pub(crate) client_id: String,
    /// The redirect URI of the authorization; the token request must name
    /// the same.
    pub(crate) redirect_uri: String,
    /// The client's PKCE S256 challenge; the token request's verifier must
    /// match it.
    pub(crate) code_challenge: String,
    /// The resource the tokens will be bound to.
    pub(crate) resource: Option<String>,
    /// The scope granted.
    pub(crate) scope: Option<String>,
    /// The grant's key, wrapped with the code: without the code, the
    /// grant's secrets do not open.
    #[serde(with = "b64")]
    pub(crate) wrapped_key: Vec<u8>,
    /// Redeemed once already; presenting it again revokes the grant.
    pub(crate) used: bool,
    /// Unix seconds after which the code is refused.
    pub(crate) expires_at: i64,
}

/// What a user authorized a client to do, with the identity behind it.
/// `sealed` holds `GrantSecrets`, encrypted with the grant's own key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct GrantRecord {
    /// Random id, the record's key; `grants list` and `grants revoke` show it.
    pub(crate) grant_id: String,
    /// The client authorized.
    pub(crate) client_id: String,
    /// The user's subject at the provider.
    pub(crate) sub: String,
    /// The `email` claim at sign-in, when the provider gave one.
    pub(crate) email: Option<String>,
    /// The scope granted.
    pub(crate) scope: Option<String>,
    /// The resource every token of the grant is bound to.
    pub(crate) resource: Option<String>,
    /// Unix seconds of the sign-in that made the grant.
    pub(crate) created_at: i64,
    /// Hash of the newest refresh token.
    pub(crate) refresh_current: Option<String>,
    /// Hash of the one before it, usable until the newest is first used.
    pub(crate) refresh_previous: Option<String>,
    /// When the refresh token last rotated (Unix milliseconds).
    #[serde(default)]
    pub(crate) rotated_at: i64,
    /// When the provider last confirmed the person (Unix seconds): the
    /// login, or the last renewal of the provider's tokens. Records written
    /// before this field existed read 0, taken as `created_at`.
    #[serde(default)]
    pub(crate) validated_at: i64,
    /// `GrantSecrets`, encrypted with the grant's key.
    #[serde(with = "b64")]
    pub(crate) sealed: Vec<u8>,
}

impl GrantRecord {
    /// When the provider last said yes to this person.
    pub(crate) fn confirmed_at(&self) -> i64 {
        if self.validated_at > 0 {
            self.validated_at
        } else {
            self.created_at
        }
    }
}

/// The confidential part of a grant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub(crate) struct GrantSecrets {
    /// Every claim of the id_token, merged with userinfo when configured.
    pub(crate) claims: Map<String, Value>,
    /// The provider's tokens.
    pub(crate) upstream: UpstreamTokens,
}

/// An access or refresh token, stored under its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    /// The grant the token belongs to.
    pub grant_id: String,
    /// The client the token was issued to.
    pub(crate) client_id: String,
    /// The resource the token is bound to.
    pub(crate) resource: Option<String>,
    /// The scope the token carries.
    pub(crate) scope: Option<String>,
    /// Unix seconds after which the token is refused (never after the
    /// grant's deadline, when it has one).
    pub expires_at: i64,
    /// The grant's key, wrapped with this token: only its holder can open
    /// the grant's secrets.
    #[serde(with = "b64")]
    pub(crate) wrapped_key: Vec<u8>,
}

/// Typed access to the store: records go in and come out as JSON.
#[derive(Clone)]
pub struct Records {
    /// The untyped store underneath, for raw bytes (sealed records, listing).
    pub(crate) store: SharedStore,
}

/// A record's stored form (JSON).
pub(crate) fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A record from its stored form; a mismatch is `StoreError::Corrupt`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Records {
    /// Typed access to `store`.
    pub fn new(store: SharedStore) -> Self {
        Records { store }
    }

    /// The live record under `key`, decoded; `None` when there is none or
    /// it expired.
    pub(crate) async fn get<T: DeserializeOwned>(
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
    pub(crate) async fn get_versioned<T: DeserializeOwned>(
        &self,
        ns: Namespace,
        key: &str,
    ) -> StoreResult<Option<(T, Vec<u8>)>> {
        match self.store.get(ns, key).await? {
            Some(bytes) => Ok(Some((decode(&bytes)?, bytes))),
            None => Ok(None),
        }
    }

    /// Writes `value` under `key`, replacing any record there; it expires
    /// after `ttl`.
    pub async fn put<T: Serialize>(
        &self,
        ns: Namespace,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.store.put(ns, key, &encode(value)?, ttl).await
    }

    pub(crate) async fn insert_new<T: Serialize>(
        &self,
        ns: Namespace,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> StoreResult<bool> {
        self.store.insert_new(ns, key, &encode(value)?, ttl).await
    }

    pub(crate) async fn swap<T: Serialize>(
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

    /// Records that the assertion `jti` of `issuer` was presented, until
    /// `ttl` (its expiry) passes; true the first time only, across every
    /// replica sharing the store.
    pub(crate) async fn first_use_of_assertion(
        &self,
        issuer: &str,
        jti: &str,
        ttl: Duration,
    ) -> StoreResult<bool> {
        let key = crate::crypto::token_hash(&format!("{issuer}\n{jti}"));
        self.store
            .insert_new(Namespace::Assertion, &key, b"1", ttl)
            .await
    }

    pub(crate) async fn delete(&self, ns: Namespace, key: &str) -> StoreResult<bool> {
        self.store.delete(ns, key).await
    }
}

/// Seconds left until `expires_at`, at least one.
pub(crate) fn ttl_until(expires_at: i64) -> Duration {
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

#[cfg(test)]
mod tests {
    use super::ConsentRecord;

    #[test]
    fn a_consent_covers_what_it_named_and_an_old_one_the_default_route() {
        let record = |servers: &[&str]| ConsentRecord {
            client_id: "c".into(),
            redirect_uri: "http://127.0.0.1/cb".into(),
            approved_at: 0,
            servers: servers.iter().map(|s| s.to_string()).collect(),
        };
        assert!(record(&["wiki"]).covers(&["wiki"]));
        assert!(!record(&["wiki"]).covers(&["default"]));
        assert!(!record(&["wiki"]).covers(&["default", "wiki"]));
        assert!(record(&["default", "wiki"]).covers(&["default", "wiki"]));
        // Written before routes: the one server there was.
        let old: ConsentRecord = serde_json::from_str(
            r#"{"client_id":"c","redirect_uri":"http://127.0.0.1/cb","approved_at":1}"#,
        )
        .unwrap();
        assert!(old.covers(&["default"]));
        assert!(!old.covers(&["wiki"]));
    }
}
