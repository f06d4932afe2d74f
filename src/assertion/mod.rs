//! The signed identity assertion: a short-lived JWT (EdDSA, Ed25519) the
//! proxy sends to an MCP server whose policy asks for it with
//! `identity_assertion()`, so the server can verify who is calling against
//! the proxy's JWKS (`/.well-known/jwks.json`) instead of trusting the
//! network.
//!
//! The policy never sees an assertion: `identity_assertion()` returns a
//! marker, the decision carries a placeholder value no script or provider
//! can produce (random per process), and the forwarder swaps it for an
//! assertion signed for this request and this route's audience
//! (`RouteAssertions::fill_in`). Signing happens only then, with a key
//! parsed once; the store is read only when the key set changes.

mod keys;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::Signer;
use serde::Serialize;
use serde_json::Value;

use crate::config::{IdentityAssertionConfig, RouteSettings};
use crate::crypto::Keys;
use crate::error::ProxyError;
use crate::session::{PolicyOutcome, Session};
use crate::store::{SharedStore, StoreResult};
use keys::KeyRing;

/// What `identity_assertion()` returns to a script: a reference, resolved
/// by the forwarder for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdentityAssertionRef;

/// The value a decision carries where an assertion goes: random per
/// process, so neither a script's value nor a provider's token can equal it.
static PLACEHOLDER: LazyLock<HeaderValue> = LazyLock::new(|| {
    HeaderValue::from_str(&format!(
        "identity-assertion:{}",
        crate::crypto::random_token()
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("identity-assertion"))
});

/// The placeholder a decision's header holds until the forwarder signs.
pub(crate) fn placeholder() -> HeaderValue {
    PLACEHOLDER.clone()
}

/// Whether a header value is the placeholder (an assertion to sign).
pub(crate) fn is_placeholder(value: &HeaderValue) -> bool {
    value.len() == PLACEHOLDER.len() && value.as_bytes() == PLACEHOLDER.as_bytes()
}

/// The claims of one assertion.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<&'a Value>,
    /// The MCP client the person uses.
    client_id: &'a str,
    /// The `X-Request-Id` of the request it was signed for: the proxy's,
    /// or one a client (or a load balancer in front) sent, which the proxy
    /// keeps; it correlates logs, it does not identify (`jti` does).
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

/// Who an assertion speaks of.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The person's subject at the provider.
    pub sub: &'a str,
    /// Their email, when the provider gave one.
    pub email: Option<&'a str>,
    /// Their display name (the provider's `name` claim).
    pub name: Option<&'a str>,
    /// Their groups (the provider's `groups` claim), when it is a list.
    pub groups: Option<&'a Value>,
    /// The MCP client they use.
    pub client_id: &'a str,
}

impl<'a> Identity<'a> {
    /// The identity a session stands for.
    pub(crate) fn of(session: &'a Session) -> Self {
        Identity {
            sub: &session.sub,
            email: session.email.as_deref(),
            name: session.claims.get("name").and_then(Value::as_str),
            groups: session.claims.get("groups").filter(|g| g.is_array()),
            client_id: &session.client_id,
        }
    }
}

/// The proxy's signer: its keys (shared with the other replicas through
/// the store), its issuer and the assertions' lifetime.
pub struct IdentityAssertions {
    ring: KeyRing,
    issuer: Arc<str>,
    lifetime: i64,
    jti_prefix: String,
    jti_counter: AtomicU64,
}

impl IdentityAssertions {
    /// A signer on `store` whose keys are sealed with a key derived from
    /// `secret` (as `secrets.encryption_key` is), for benches and tests.
    pub fn with_secret(
        store: SharedStore,
        secret: [u8; 32],
        issuer: &str,
        config: &IdentityAssertionConfig,
    ) -> Self {
        Self::new(store, Keys::new(secret), issuer, config)
    }

    /// Signs as `issuer` (the proxy's public URL) with keys kept in `store`,
    /// sealed with `keys`; `[identity_assertion]` sets the schedule.
    pub(crate) fn new(
        store: SharedStore,
        keys: Keys,
        issuer: &str,
        config: &IdentityAssertionConfig,
    ) -> Self {
        IdentityAssertions {
            ring: KeyRing::new(store, keys, config.rotation_secs(), config.lifetime_secs()),
            issuer: issuer.into(),
            lifetime: i64::try_from(config.lifetime_secs()).unwrap_or(60),
            jti_prefix: crate::crypto::random_id(),
            jti_counter: AtomicU64::new(0),
        }
    }

    /// An assertion of `who` for `audience`, signed with the current key.
    pub async fn sign(
        &self,
        who: &Identity<'_>,
        audience: &str,
        request_id: Option<&str>,
    ) -> StoreResult<String> {
        let now = crate::now_unix();
        let set = self.ring.at(now).await?;
        let claims = Claims {
            iss: &self.issuer,
            sub: who.sub,
            aud: audience,
            iat: now,
            exp: now + self.lifetime,
            jti: format!(
                "{}-{}",
                self.jti_prefix,
                self.jti_counter.fetch_add(1, Ordering::Relaxed)
            ),
            email: who.email,
            name: who.name,
            groups: who.groups,
            client_id: who.client_id,
            request_id,
        };
        // Serialising these claims cannot fail (strings, numbers, JSON).
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        let key = &set.active;
        let mut jwt = String::with_capacity(key.header.len() + payload.len() * 4 / 3 + 100);
        jwt.push_str(&key.header);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut jwt);
        let signature = key.signing.sign(jwt.as_bytes());
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut jwt);
        Ok(jwt)
    }

    /// The published keys (JWKS) and how long a verifier may cache them.
    pub async fn jwks(&self) -> StoreResult<(axum::body::Bytes, i64)> {
        let now = crate::now_unix();
        let set = self.ring.at(now).await?;
        // The set holds the next key, so a cached copy stays good for a
        // whole generation; an hour at most.
        Ok((set.jwks.clone(), (set.fresh_until - now).clamp(1, 3600)))
    }

    /// `/.well-known/jwks.json`.
    pub(crate) async fn jwks_response(&self) -> Response {
        match self.jwks().await {
            Ok((body, max_age)) => (
                [
                    (header::CONTENT_TYPE, "application/jwk-set+json".to_string()),
                    (header::CACHE_CONTROL, format!("public, max-age={max_age}")),
                ],
                body,
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "the identity assertion keys could not be read");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "1")],
                    "the signing keys are unavailable; try again shortly",
                )
                    .into_response()
            }
        }
    }

    /// Loads (or creates) the keys now, then again each time the set
    /// changes (a new generation, the previous key's retirement), so
    /// requests find a fresh set in memory.
    pub(crate) fn spawn_rotation(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let wait = match this.ring.at(crate::now_unix()).await {
                    Ok(set) => {
                        tracing::debug!(kid = %set.active.kid, published = ?set.kids, "identity assertion keys");
                        until_unix(set.fresh_until)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the identity assertion keys could not be loaded; retrying");
                        std::time::Duration::from_secs(1)
                    }
                };
                tokio::time::sleep(wait).await;
            }
        })
    }
}

/// How long until the Unix second `at` (a moment past it, at least 10 ms).
fn until_unix(at: i64) -> std::time::Duration {
    let target =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(at).unwrap_or(0));
    target
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
        + std::time::Duration::from_millis(10)
}

/// One route's view of the signer: its audience.
#[derive(Clone)]
pub(crate) struct RouteAssertions {
    signer: Arc<IdentityAssertions>,
    audience: Arc<str>,
}

impl RouteAssertions {
    /// The route's audience: `downstream.assertion_audience`, else the
    /// downstream URL.
    pub(crate) fn new(signer: Arc<IdentityAssertions>, route: &RouteSettings) -> Self {
        let audience = match &route.downstream.assertion_audience {
            Some(audience) => audience.as_str().into(),
            None => route.downstream_url().as_str().into(),
        };
        RouteAssertions { signer, audience }
    }

    /// Replaces the placeholders of `outcome` with an assertion signed for
    /// this request (`request_id` is asked then: finding the header is a
    /// lookup by a name that is not a standard one). Most requests ask for
    /// none: theirs costs one scan of the headers, and the signing's future
    /// (the store, the key) is boxed for a request that asks, so it is not
    /// part of every request's future (the forwarder's, boxed per request).
    pub(crate) fn fill_in<'a>(
        &'a self,
        outcome: &'a mut PolicyOutcome,
        session: &'a Session,
        request_id: impl FnOnce() -> Option<&'a HeaderValue>,
    ) -> impl Future<Output = Result<(), ProxyError>> + Send + 'a {
        let wanted = outcome.headers.iter().any(|(_, v)| is_placeholder(v));
        let signing = wanted.then(|| Box::pin(self.sign_into(outcome, session, request_id())));
        async move {
            match signing {
                Some(signing) => signing.await,
                None => Ok(()),
            }
        }
    }

    /// Signs the assertion and puts it in place of the placeholders.
    async fn sign_into(
        &self,
        outcome: &mut PolicyOutcome,
        session: &Session,
        request_id: Option<&HeaderValue>,
    ) -> Result<(), ProxyError> {
        let request_id = request_id.and_then(|v| v.to_str().ok());
        let jwt = self
            .signer
            .sign(&Identity::of(session), &self.audience, request_id)
            .await
            .map_err(|e| ProxyError::StoreUnavailable(e.to_string()))?;
        let value = HeaderValue::from_str(&jwt).map_err(|_| {
            ProxyError::StoreUnavailable("an assertion is not a header value".into())
        })?;
        // The headers are shared with the session's remembered decision:
        // this request's copy gets the assertion.
        outcome.headers = outcome
            .headers
            .iter()
            .map(|(name, v)| {
                let v = if is_placeholder(v) { &value } else { v };
                (name.clone(), v.clone())
            })
            .collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
