//! Authenticate: the bearer token from the Authorization header, and nowhere
//! else, resolved to a `Session` through the `TokenCache`.
//!
//! ```text
//! Authorization: Bearer <token> ─► TokenCache (moka, keyed by SHA-256)
//!                                   └─ miss ─► Store (token, grant, client)
//! ```
//! The cache remembers facts about a token; expiry and audience are checked
//! on every request. A revocation evicts at once.

pub mod revocations;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, Response};
use moka::future::Cache;
use moka::Expiry;
use tower::{Layer, Service};

use crate::crypto;
use crate::error::ProxyError;
use crate::grants::{GrantError, Grants};
use crate::metrics::audit::AuditSlot;
use crate::metrics::Metrics;
use crate::now_unix;
use crate::session::{Revocation, Session, SessionEnd, SessionWatch};

#[derive(Clone)]
enum Entry {
    /// A validated session, and when it was validated.
    Valid(Arc<Session>, Instant),
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
            Entry::Valid(session, _) => {
                let left = Duration::from_secs((session.expires_at - now_unix()).max(0) as u64);
                left.min(self.max_ttl)
            }
            Entry::Unknown => self.negative_ttl,
        })
    }
}

/// Validated tokens by hash, bounded, each entry living at most as long as
/// its token.
pub struct TokenCache {
    metrics: Arc<Metrics>,
    tokens: Cache<String, Entry>,
    /// Grants revoked recently: a cached session of one of them is refused
    /// at once, without waiting for its entry to expire.
    revoked_grants: Cache<String, ()>,
    grants: Grants,
    /// Set while revocations from other replicas cannot be heard.
    degraded: AtomicBool,
    /// Every revocation this process hears (its own and, with Redis, the
    /// other replicas'), for open event streams; `None` means "some may have
    /// been missed: check the store".
    heard: tokio::sync::broadcast::Sender<Option<Revocation>>,
    /// How often an open event stream asks the store about its token.
    stream_recheck: Duration,
}

/// How long a cached session is trusted while the revocation feed is down.
pub const DEGRADED_TTL: Duration = Duration::from_secs(1);

impl TokenCache {
    pub fn new(
        grants: Grants,
        capacity: u64,
        max_ttl: Duration,
        negative_ttl: Duration,
        stream_recheck: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let evictions = metrics.clone();
        let cache = Arc::new(TokenCache {
            metrics,
            tokens: Cache::builder()
                .max_capacity(capacity)
                .expire_after(EntryExpiry {
                    max_ttl,
                    negative_ttl,
                })
                .eviction_listener(move |_key, _value, cause| {
                    use moka::notification::RemovalCause;
                    let cause = match cause {
                        RemovalCause::Expired => "expired",
                        RemovalCause::Explicit => "explicit",
                        RemovalCause::Replaced => "replaced",
                        RemovalCause::Size => "size",
                    };
                    evictions
                        .token_cache_evictions
                        .with_label_values(&[cause])
                        .inc();
                })
                .build(),
            revoked_grants: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(max_ttl)
                .build(),
            grants,
            degraded: AtomicBool::new(false),
            heard: tokio::sync::broadcast::channel(1024).0,
            stream_recheck,
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
        let _ = self.heard.send(Some(revocation.clone()));
        match revocation {
            Revocation::Grant(grant_id) => self.revoked_grants.insert(grant_id, ()).await,
            Revocation::AccessToken(hash) => self.tokens.invalidate(&hash).await,
        }
    }

    /// Watches sessions for open event streams (see `until_session_ends`).
    pub fn session_watch(self: &Arc<Self>) -> SessionWatch {
        let cache = self.clone();
        SessionWatch::new(move |session| Box::pin(cache.clone().until_session_ends(session)))
    }

    /// Resolves when a session ends: at its expiry, at once when a
    /// revocation of its token or grant is heard, and otherwise within
    /// `auth.stream_recheck_interval` of a revocation this process did not
    /// hear (another process on the same SQLite file, e.g. the CLI).
    pub async fn until_session_ends(self: Arc<Self>, session: Arc<Session>) -> SessionEnd {
        let mut heard = self.heard.subscribe();
        let left = Duration::from_secs((session.expires_at - now_unix()).max(0) as u64);
        let expiry = tokio::time::sleep(left);
        tokio::pin!(expiry);
        let mut recheck = tokio::time::interval_at(
            tokio::time::Instant::now() + self.stream_recheck,
            self.stream_recheck,
        );
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hearing = true;
        // Checked once here too: a revocation may have landed between
        // authentication and this subscription.
        let mut check_store = true;
        loop {
            if check_store && !self.still_live(&session).await {
                return SessionEnd::Revoked;
            }
            check_store = false;
            tokio::select! {
                _ = &mut expiry => return SessionEnd::Expired,
                event = heard.recv(), if hearing => match event {
                    Ok(Some(Revocation::Grant(id))) if id == session.grant_id => {
                        return SessionEnd::Revoked
                    }
                    Ok(Some(Revocation::AccessToken(hash))) if hash == session.token_hash => {
                        return SessionEnd::Revoked
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        check_store = true
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => hearing = false,
                },
                _ = recheck.tick() => check_store = true,
            }
        }
    }

    /// Whether the store still holds the session's token and grant; a store
    /// that cannot answer leaves the stream to its expiry.
    async fn still_live(&self, session: &Session) -> bool {
        match self
            .grants
            .is_live(&session.token_hash, &session.grant_id)
            .await
        {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(error = %e, "store unreachable; an open stream keeps its token until expiry");
                true
            }
        }
    }

    /// The live session for a token, if the token is ours and valid.
    pub async fn lookup(&self, token: &str) -> Result<Option<Arc<Session>>, ProxyError> {
        let hash = crypto::token_hash(token);
        let entry = match self.tokens.get(&hash).await {
            Some(entry) => {
                let result = if matches!(entry, Entry::Valid(..)) {
                    "hit"
                } else {
                    "negative_hit"
                };
                self.metrics
                    .token_cache_requests
                    .with_label_values(&[result])
                    .inc();
                entry
            }
            None => {
                self.metrics
                    .token_cache_requests
                    .with_label_values(&["miss"])
                    .inc();
                // Single flight: concurrent misses for one token wait for one
                // store lookup instead of each running their own.
                self.tokens
                    .try_get_with(hash.clone(), async {
                        match self.grants.validate_access_token(token).await {
                            Ok(session) => Ok(Entry::Valid(Arc::new(session), Instant::now())),
                            Err(GrantError::Store(e)) => Err(e.to_string()),
                            Err(_) => Ok(Entry::Unknown),
                        }
                    })
                    .await
                    .map_err(|e: Arc<String>| ProxyError::StoreUnavailable(e.to_string()))?
            }
        };
        // Without the revocation feed, trust a cached session only briefly:
        // ask the store again, but keep serving it if the store is down too.
        let entry = match entry {
            Entry::Valid(session, validated)
                if self.degraded.load(Ordering::Relaxed) && validated.elapsed() > DEGRADED_TTL =>
            {
                match self.grants.validate_access_token(token).await {
                    Ok(fresh) => {
                        let entry = Entry::Valid(Arc::new(fresh), Instant::now());
                        self.tokens.insert(hash.clone(), entry.clone()).await;
                        entry
                    }
                    Err(GrantError::Store(e)) => {
                        tracing::warn!(error = %e, "store unreachable; serving a cached session");
                        Entry::Valid(session, validated)
                    }
                    Err(_) => {
                        self.tokens.insert(hash.clone(), Entry::Unknown).await;
                        Entry::Unknown
                    }
                }
            }
            other => other,
        };
        match entry {
            Entry::Valid(session, _) if session.expires_at > now_unix() => {
                if self.revoked_grants.contains_key(&session.grant_id) {
                    self.tokens.invalidate(&hash).await;
                    return Ok(None);
                }
                Ok(Some(session))
            }
            _ => Ok(None),
        }
    }

    /// Drops every cached session; the next request asks the store.
    pub fn forget_all(&self) {
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
        self.metrics
            .token_cache_entries
            .set(self.tokens.entry_count() as i64);
    }
}

/// RFC 6750 §2.1 `b64token`: the characters a bearer token may use.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

fn ambiguous(what: &str) -> ProxyError {
    ProxyError::BadRequest(format!(
        "{what}; send the access token once, in the Authorization header only"
    ))
}

/// The bearer token of a request: exactly one `Authorization: Bearer
/// <token>` header (scheme in any case, RFC 6750), and no token anywhere
/// else. `Ok(None)` when the client sent no bearer token at all (it must
/// authorize); an error (400) when what it sent could be read more than one
/// way, so no two readers ever disagree on who is calling.
pub fn bearer_token<B>(request: &Request<B>) -> Result<Option<&str>, ProxyError> {
    // RFC 6750 §2: one method per request; the query and a form body are
    // not ours to read, and a token there would travel on to the downstream.
    let in_query = request.uri().query().is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .any(|(k, _)| k.eq_ignore_ascii_case("access_token"))
    });
    if in_query {
        return Err(ambiguous(
            "an access_token in the query string is not accepted",
        ));
    }
    let is_form = request
        .headers()
        .get_all(header::CONTENT_TYPE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|ct| {
            let ct = ct.trim_start().to_ascii_lowercase();
            ct.starts_with("application/x-www-form-urlencoded")
                || ct.starts_with("multipart/form-data")
        });
    if is_form {
        return Err(ambiguous(
            "MCP messages are JSON, and a form body is not accepted",
        ));
    }
    let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ambiguous("several Authorization headers"));
    }
    let value = value
        .to_str()
        .map_err(|_| ambiguous("the Authorization header is not ASCII"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() {
        return Ok(None);
    }
    if token.contains([' ', '\t', ',']) {
        return Err(ambiguous(
            "the Authorization header carries more than one token",
        ));
    }
    if !is_b64token(token) {
        return Err(ambiguous(
            "the bearer token has characters RFC 6750 does not allow",
        ));
    }
    Ok(Some(token))
}

/// Adds `Authenticate` to a service.
#[derive(Clone)]
pub struct AuthenticateLayer {
    cache: Arc<TokenCache>,
    watch: SessionWatch,
    public_url: Arc<str>,
    /// The route's resource path ("/mcp" or "/sse").
    resource_path: &'static str,
}

impl AuthenticateLayer {
    pub fn new(cache: Arc<TokenCache>, public_url: &str, resource_path: &'static str) -> Self {
        AuthenticateLayer {
            watch: cache.session_watch(),
            cache,
            public_url: public_url.into(),
            resource_path,
        }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            layer: self.clone(),
        }
    }
}

/// Resolves the bearer token to a `Session` (a request extension) or
/// answers 401 with the resource metadata URL.
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    layer: AuthenticateLayer,
}

impl<S> Service<Request<Body>> for Authenticate<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The clone that was polled ready does the work.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let unauthorized = |token_sent, reason| ProxyError::Unauthorized {
                resource_metadata: format!(
                    "{}/.well-known/oauth-protected-resource{}",
                    layer.public_url, layer.resource_path
                ),
                token_sent,
                reason,
            };
            let Some(token) = bearer_token(&request)? else {
                return Err(unauthorized(false, "a bearer token is required"));
            };
            let Some(session) = layer.cache.lookup(token).await? else {
                return Err(unauthorized(
                    true,
                    "the access token is invalid, expired or revoked",
                ));
            };
            // RFC 8707: a token bound to a resource works only there; the
            // root resource covers every route.
            if let Some(resource) = session.resource.as_deref() {
                let here = resource.len() == layer.public_url.len() + layer.resource_path.len()
                    && resource.starts_with(&*layer.public_url)
                    && resource.ends_with(layer.resource_path);
                if resource != &*layer.public_url && !here {
                    return Err(unauthorized(
                        true,
                        "the access token was issued for another resource",
                    ));
                }
            }
            if let Some(slot) = request.extensions().get::<AuditSlot>() {
                slot.update(|facts| {
                    facts.sub = Some(session.sub.clone());
                    facts.email = session.email.clone();
                    facts.client_id = Some(session.client_id.clone());
                });
            }
            request.extensions_mut().insert(session);
            request.extensions_mut().insert(layer.watch.clone());
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::builder().uri(uri);
        for (name, value) in headers {
            r = r.header(*name, *value);
        }
        r.body(()).unwrap()
    }

    fn token_of(headers: &[(&str, &str)]) -> Result<Option<String>, ProxyError> {
        bearer_token(&request("/mcp", headers)).map(|t| t.map(str::to_string))
    }

    #[test]
    fn invariant_7_one_bearer_token_in_one_authorization_header() {
        for (value, token) in [
            ("Bearer abc-._~+/123==", "abc-._~+/123=="),
            ("bearer abc", "abc"),
            ("BEARER abc", "abc"),
            ("Bearer   abc ", "abc"),
        ] {
            assert_eq!(
                token_of(&[("authorization", value)]).unwrap().as_deref(),
                Some(token),
                "{value}"
            );
        }
        // No bearer at all: the client must authorize (401 upstream of here).
        for value in ["Basic Zm9vOmJhcg==", "Bearer", "Bearer ", "Bearerabc"] {
            assert_eq!(
                token_of(&[("authorization", value)]).unwrap(),
                None,
                "{value}"
            );
        }
        assert_eq!(token_of(&[]).unwrap(), None);
    }

    #[test]
    fn invariant_7_ambiguous_credentials_are_a_bad_request() {
        let refused = [
            // One valid, one junk: neither wins.
            vec![
                ("authorization", "Bearer good"),
                ("authorization", "Bearer junk"),
            ],
            vec![
                ("authorization", "Bearer good"),
                ("authorization", "Basic Zm9v"),
            ],
            vec![("authorization", "Bearer good other")],
            vec![("authorization", "Bearer good, realm=x")],
            vec![("authorization", "Bearer good\tother")],
            vec![("authorization", "Bearer go\"od")],
            vec![("authorization", "Bearer =abc")],
            vec![
                ("authorization", "Bearer good"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            vec![("content-type", "Multipart/Form-Data; boundary=x")],
        ];
        for headers in refused {
            assert!(
                matches!(token_of(&headers), Err(ProxyError::BadRequest(_))),
                "{headers:?}"
            );
        }
        for uri in ["/mcp?access_token=t", "/mcp?a=1&ACCESS_TOKEN=t"] {
            let r = request(uri, &[("authorization", "Bearer good")]);
            assert!(
                matches!(bearer_token(&r), Err(ProxyError::BadRequest(_))),
                "{uri}"
            );
            let r = request(uri, &[]);
            assert!(
                matches!(bearer_token(&r), Err(ProxyError::BadRequest(_))),
                "{uri}"
            );
        }
    }
}
