//! The request path's shared data, on the ground floor so every layer can
//! read it without importing another: who is calling (`Session`, made by
//! `auth` from an access token), the provider's tokens, how a session ends
//! (`SessionWatch`, `Revocation`), and what the policy decided for a request
//! that goes on (`PolicyOutcome`).

use std::any::Any;
use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The header that carries a request's id, both ways: set on every request
/// before anything logs (`server::request_id`), read by the span, the audit
/// and the forwarder (the identity assertion names it).
pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of a request, once `server::request_id` gave it one.
pub(crate) fn request_id<B>(request: &http::Request<B>) -> Option<&HeaderValue> {
    request.headers().get(&REQUEST_ID)
}

/// The caller's session, as `auth::Authenticate` filed it in the request.
/// A layer below Authenticate that finds none is in a stack without it,
/// and refuses the request (`ProxyError::no_session`: it fails closed).
pub(crate) fn authenticated<B>(request: &http::Request<B>) -> Option<Arc<Session>> {
    request.extensions().get::<Arc<Session>>().cloned()
}

/// A revocation, announced so token caches can drop what they hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Revocation {
    /// Every token of this grant.
    Grant(String),
    /// One access token, by hash.
    AccessToken(String),
}

/// What an access token stands for, once validated: who is calling, through
/// which client, with which claims. Every MCP request carries one
/// (`embed::session` reads it).
#[derive(Debug)]
pub struct Session {
    /// The grant the token belongs to (revoking it ends the session).
    pub(crate) grant_id: String,
    /// The access token's hash, its key in the store and the token cache.
    pub(crate) token_hash: String,
    /// The OAuth client the token was issued to. Shared, not copied, by
    /// what keys on it (the per-client rate limit, the audit line).
    pub(crate) client_id: Arc<str>,
    /// The user's subject at the provider. Shared, not copied, by what
    /// keys on it (the per-user rate limit, the audit line).
    pub sub: Arc<str>,
    /// The `email` claim at sign-in; `None` when the provider gave none.
    pub email: Option<String>,
    /// Every claim of the provider's id_token (merged with userinfo when
    /// configured), as of the sign-in or the last renewal.
    pub claims: Map<String, Value>,
    /// The provider's tokens, for a policy that hands one to the downstream.
    pub upstream: UpstreamTokens,
    /// The resource (RFC 8707) the token is bound to; `None` when the
    /// client named none.
    pub resource: Option<String>,
    /// The scope granted, as the client asked for it; `None` when it asked
    /// for none. The proxy itself does not read it.
    pub scope: Option<String>,
    /// Unix seconds after which the token is refused: its own expiry, or
    /// the grant's deadline when that comes first.
    pub(crate) expires_at: i64,
    /// The client's registered name, for the policy's `user` map.
    pub(crate) client_name: Option<String>,
    /// What the policy keeps for this session while the token cache holds
    /// it (its view of the user, a decision on the user alone).
    pub(crate) memo: Memo,
    /// When the store last said the session is live.
    pub(crate) confirmed: Confirmed,
}

/// Read-only views of the fields the proxy keeps to itself, for embedding
/// layers (`embed::session`); the public fields are read directly.
impl Session {
    /// The OAuth client the token was issued to: its registered
    /// `client_id`, or the URL of its Client ID Metadata Document.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The name the client registered (`client_name`), if any; it is the
    /// client's own claim, shown on the consent page, not proof of anything.
    pub fn client_name(&self) -> Option<&str> {
        self.client_name.as_deref()
    }

    /// Unix seconds after which the token is refused.
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }
}

/// Why a session ended while an event stream was open on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Its access token expired (or reached the grant's deadline).
    Expired,
    /// Its access token or grant was revoked.
    Revoked,
}

impl SessionEnd {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SessionEnd::Expired => "expired",
            SessionEnd::Revoked => "revoked",
        }
    }
}

/// Waits for the end of a session: Authenticate puts one in the request
/// extensions, and the Forwarder ends an open event stream when it fires,
/// so a stream never outlives its token.
#[derive(Clone)]
pub struct SessionWatch(Arc<WatchFn>);

type WatchFn = dyn Fn(Arc<Session>) -> BoxFuture<'static, SessionEnd> + Send + Sync;

impl SessionWatch {
    pub(crate) fn new(
        watch: impl Fn(Arc<Session>) -> BoxFuture<'static, SessionEnd> + Send + Sync + 'static,
    ) -> Self {
        SessionWatch(Arc::new(watch))
    }

    /// Resolves when `session` ends.
    pub(crate) fn until_end(&self, session: Arc<Session>) -> BoxFuture<'static, SessionEnd> {
        (self.0)(session)
    }
}

impl std::fmt::Debug for SessionWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionWatch")
    }
}

/// The provider's tokens for one grant, sealed in the store and handed to
/// the policy's `upstream_bearer()` and friends.
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct UpstreamTokens {
    /// The provider's access token.
    pub access_token: String,
    /// The provider's id_token (a JWT) from the sign-in, or from the last
    /// renewal that brought one.
    pub id_token: Option<String>,
    /// What renews the provider's tokens; `None` when the provider gave
    /// none (e.g. Google without offline access), and then the grant ends
    /// at `tokens.max_grant_age`.
    pub refresh_token: Option<String>,
    /// Unix seconds when `access_token` expires; `None` when the provider
    /// did not say (`expires_in` absent).
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for UpstreamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTokens")
            .field("access_token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// When the store last said a session is live: when it was read, or when an
/// open event stream's recheck asked again. Shared by every request that
/// holds the session (the token cache's), so an event stream opened soon
/// after need not ask the store again (`auth::session_watch`).
pub(crate) struct Confirmed(std::sync::Mutex<tokio::time::Instant>);

impl Confirmed {
    pub(crate) fn at(&self) -> tokio::time::Instant {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn now(&self) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tokio::time::Instant::now();
    }
}

/// Confirmed now: a session is made from what the store just said.
impl Default for Confirmed {
    fn default() -> Self {
        Confirmed(std::sync::Mutex::new(tokio::time::Instant::now()))
    }
}

impl std::fmt::Debug for Confirmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "confirmed {:?} ago", self.at().elapsed())
    }
}

/// A value a higher layer computes once per session and keeps with it. The
/// type is the owner's (the policy's), so this floor knows nothing of it;
/// the first writer wins.
#[derive(Default)]
pub(crate) struct Memo(OnceLock<Box<dyn Any + Send + Sync>>);

impl Memo {
    /// The memo, computed by `init` on first use. `None` only if another
    /// type was stored first, which would be a bug in its owner.
    pub(crate) fn get_or_init<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.0.get_or_init(|| Box::new(init())).downcast_ref()
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Memo(set)"
        } else {
            "Memo(empty)"
        })
    }
}

/// The headers a policy's `allow(...)` sets: checked names and encoded
/// values, in the order the script gave. Shared: a session remembers its
/// decisions, and each request they allow carries the headers on
/// (`PolicyOutcome`) without copying each name and value (a reference
/// count taken and dropped for each).
pub type PolicyHeaders = Arc<[(HeaderName, HeaderValue)]>;

/// Whether a client header must be removed before forwarding. Asked with
/// the parsed name (lowercase); the rule folds a `_` to `-` itself, as a
/// lenient server reads the name.
pub(crate) type StripRule = Arc<dyn Fn(&HeaderName) -> bool + Send + Sync>;

/// What the policy decided for a request it lets through: the identity
/// headers to set downstream and which client headers to strip (every
/// header a policy could set), so the forwarder needs no policy engine.
#[derive(Clone)]
pub(crate) struct PolicyOutcome {
    /// Headers the policy set, checked and encoded.
    pub(crate) headers: PolicyHeaders,
    /// Whether a client header must be removed before forwarding.
    pub(crate) strip: StripRule,
}

impl std::fmt::Debug for PolicyOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyOutcome")
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memo_is_computed_once_and_keeps_its_type() {
        let memo = Memo::default();
        let mut runs = 0;
        assert_eq!(
            memo.get_or_init(|| {
                runs += 1;
                7u32
            }),
            Some(&7)
        );
        assert_eq!(
            memo.get_or_init(|| {
                runs += 1;
                8u32
            }),
            Some(&7)
        );
        assert_eq!(runs, 1);
        assert_eq!(memo.get_or_init(|| "other"), None);
    }

    #[test]
    fn upstream_tokens_never_print_their_values() {
        let tokens = UpstreamTokens {
            access_token: "secret-access".into(),
            id_token: Some("secret-id".into()),
            refresh_token: Some("secret-refresh".into()),
            expires_at: Some(1),
        };
        let printed = format!("{tokens:?}");
        assert!(!printed.contains("secret"), "{printed}");
    }
}
