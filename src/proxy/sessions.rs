//! Downstream MCP sessions belong to the user who created them: another user
//! presenting the same `Mcp-Session-Id` gets 404 and nothing is forwarded.
//! Bindings live in the store (so every replica knows them), with a short
//! local cache in front. [`CheckSessionOwnership`] is the layer that holds
//! a request to its caller's sessions.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, Request, Uri};
use moka::future::Cache;
use serde::{Deserialize, Serialize};
use tower::Service;

use super::Endpoint;
use crate::checkpoint::{Checkpoint, CheckpointLayer};
use crate::crypto::token_hash;
use crate::error::ProxyError;
use crate::session::authenticated;
use crate::store::{Namespace, Records};

/// The header that carries a Streamable HTTP session id.
pub(crate) const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
/// The binding kind of Streamable HTTP sessions (`Mcp-Session-Id`).
pub(crate) const SESSION_KIND: &str = "mcp";
/// The binding kind of legacy HTTP+SSE sessions (the proxy's `sid`).
pub(crate) const LEGACY_KIND: &str = "sse";

/// Why a set of `Mcp-Session-Id` values is not one session id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SessionIdError {
    #[error("several Mcp-Session-Id values")]
    Several,
    #[error("an Mcp-Session-Id must be visible ASCII characters (0x21 to 0x7E)")]
    NotVisibleAscii,
}

/// The one `Mcp-Session-Id` of a message, if any. MCP session ids are
/// visible ASCII; anything else, or a second value, would let the proxy
/// check one session while the downstream resumes another.
pub(crate) fn session_id(headers: &HeaderMap) -> Result<Option<&str>, SessionIdError> {
    let mut values = headers.get_all(MCP_SESSION_ID).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(SessionIdError::Several);
    }
    let bytes = first.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(SessionIdError::NotVisibleAscii);
    }
    // Visible ASCII is valid UTF-8.
    first
        .to_str()
        .map(Some)
        .map_err(|_| SessionIdError::NotVisibleAscii)
}

/// The session id a client presents: malformed is the client's error (400).
pub(crate) fn presented_session_id(headers: &HeaderMap) -> Result<Option<&str>, ProxyError> {
    session_id(headers).map_err(|e| ProxyError::BadRequest(e.to_string()))
}

/// The session id a downstream creates: malformed is its error (502).
pub(crate) fn created_session_id(headers: &HeaderMap) -> Result<Option<&str>, ProxyError> {
    session_id(headers).map_err(|e| ProxyError::BadDownstreamAnswer(e.to_string()))
}

/// An idle session is forgotten after this long.
const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
const LOCAL_TTL: Duration = Duration::from_secs(300);

/// Whose a session is, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Binding {
    /// The user who created the session.
    pub sub: String,
    /// For legacy SSE message endpoints: where the downstream wants posts.
    pub endpoint: Option<String>,
}

/// The session bindings of every replica (the store), behind a local cache.
pub(crate) struct SessionBindings {
    records: Records,
    /// Keys of routes other than the default one carry the route's name,
    /// so a session id from one route's downstream means nothing on
    /// another's; the default route's keys are unchanged from before
    /// routes existed, so its bindings survive an upgrade.
    scope: String,
    local: Cache<String, Binding>,
}

impl SessionBindings {
    /// Route `route`'s bindings, kept in `records`.
    pub(crate) fn new(records: Records, route: &str) -> Self {
        SessionBindings {
            records,
            scope: if route == crate::config::DEFAULT_ROUTE {
                String::new()
            } else {
                format!("{route}/")
            },
            local: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(LOCAL_TTL)
                .build(),
        }
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{}", self.scope, token_hash(id))
    }

    /// The binding of session `id` of `kind`, if any.
    pub(crate) async fn get(&self, kind: &str, id: &str) -> Result<Option<Binding>, ProxyError> {
        let key = self.key(kind, id);
        if let Some(b) = self.local.get(&key).await {
            return Ok(Some(b));
        }
        let found: Option<Binding> = self
            .records
            .get(Namespace::McpSession, &key)
            .await
            .map_err(|e| ProxyError::StoreUnavailable(e.to_string()))?;
        if let Some(b) = &found {
            // Boxed: moka's insert is a large future and rarely runs (the
            // local cache answers); inline, every request's future would
            // carry it.
            Box::pin(self.local.insert(key, b.clone())).await;
        }
        Ok(found)
    }

    /// Records that session `id` of `kind` is `binding`'s.
    pub(crate) async fn bind(
        &self,
        kind: &str,
        id: &str,
        binding: Binding,
    ) -> Result<(), ProxyError> {
        let key = self.key(kind, id);
        self.records
            .put(Namespace::McpSession, &key, &binding, SESSION_TTL)
            .await
            .map_err(|e| ProxyError::StoreUnavailable(e.to_string()))?;
        self.local.insert(key, binding).await;
        Ok(())
    }

    /// Forgets session `id` of `kind`; a store failure is logged, not
    /// returned (the binding expires anyway).
    pub(crate) async fn unbind(&self, kind: &str, id: &str) {
        let key = self.key(kind, id);
        self.local.invalidate(&key).await;
        if let Err(e) = self.records.delete(Namespace::McpSession, &key).await {
            tracing::warn!(error = %e, "could not forget an MCP session");
        }
    }
}

/// What [`CheckSessionOwnership`] established for one request, put in its
/// extensions for the forwarder. The forwarder refuses a request without
/// it, so a stack that leaves the check out fails closed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OwnedSession {
    /// `/mcp`: the `Mcp-Session-Id` presented, if any; it is the caller's.
    Mcp(Option<String>),
    /// `/sse`: a new legacy stream; its session is bound when the
    /// downstream announces its message endpoint.
    NewLegacyStream,
    /// `/sse/message`: the caller's legacy session, and where the
    /// downstream wants its messages.
    LegacyMessage(Uri),
}

/// A presented session must be the caller's: on `/mcp` an
/// `Mcp-Session-Id` another user created (or one the proxy never saw) is
/// 404, and on the legacy message endpoint so is a `sid` that is not the
/// caller's. Nothing is forwarded then.
#[derive(Clone)]
pub(crate) struct CheckSessionOwnership {
    bindings: Arc<SessionBindings>,
    route: Endpoint,
}

impl CheckSessionOwnership {
    /// The layer for one MCP route.
    pub(crate) fn layer(bindings: Arc<SessionBindings>, route: Endpoint) -> CheckpointLayer<Self> {
        CheckpointLayer::new(CheckSessionOwnership { bindings, route })
    }

    /// The `/mcp` session presented, if any, once it is known to be `sub`'s.
    async fn mcp_session(
        &self,
        presented: Option<String>,
        sub: &str,
    ) -> Result<OwnedSession, ProxyError> {
        if let Some(id) = &presented {
            // Boxed, as `legacy_endpoint`'s: inline, the lookup's future
            // (moka's and the store's, 944 bytes) is part of this
            // checkpoint's for the whole request (1,576 bytes; 736 now),
            // though a request without a session id never runs it.
            let owner = Box::pin(self.bindings.get(SESSION_KIND, id)).await?;
            if owner.is_none_or(|b| b.sub != sub) {
                return Err(ProxyError::SessionNotFound);
            }
        }
        Ok(OwnedSession::Mcp(presented))
    }

    /// Where the downstream wants the messages of legacy session `sid`,
    /// once it is known to be `sub`'s.
    async fn legacy_endpoint(&self, sid: &str, sub: &str) -> Result<OwnedSession, ProxyError> {
        match Box::pin(self.bindings.get(LEGACY_KIND, sid)).await? {
            Some(Binding {
                sub: owner,
                endpoint: Some(endpoint),
            }) if owner == sub => endpoint
                .parse::<Uri>()
                .map(OwnedSession::LegacyMessage)
                .map_err(|_| ProxyError::SessionNotFound),
            _ => Err(ProxyError::SessionNotFound),
        }
    }
}

/// The one `sid` of a legacy message endpoint's query.
fn legacy_sid(uri: &Uri) -> Result<String, ProxyError> {
    let sids: Vec<String> = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == "sid")
                .map(|(_, v)| v.into_owned())
                .collect()
        })
        .unwrap_or_default();
    match <[String; 1]>::try_from(sids) {
        Ok([sid]) => Ok(sid),
        Err(sids) if sids.is_empty() => Err(ProxyError::BadRequest(
            "the message endpoint needs its sid".into(),
        )),
        Err(_) => Err(ProxyError::BadRequest(
            "the message endpoint takes one sid".into(),
        )),
    }
}

impl<S, B> Checkpoint<S, Request<B>> for CheckSessionOwnership
where
    B: Send + 'static,
    S: Service<Request<B>> + Send + 'static,
    S::Error: From<ProxyError>,
    S::Future: Send,
{
    fn run(
        self,
        mut inner: S,
        mut request: Request<B>,
    ) -> impl Future<Output = Result<S::Response, S::Error>> + Send + 'static {
        async move {
            // The session itself, not a copy of its `sub`: a reference count
            // where a `String` was allocated and copied on every request.
            let session = authenticated(&request).ok_or_else(ProxyError::no_session)?;
            let sub: &str = &session.sub;
            // Malformed is refused on every route, though only /mcp checks it.
            let presented = presented_session_id(request.headers())?.map(str::to_string);
            let owned = match self.route {
                Endpoint::Mcp => self.mcp_session(presented, sub).await?,
                Endpoint::SseStream => OwnedSession::NewLegacyStream,
                Endpoint::SseMessage => {
                    let sid = legacy_sid(request.uri())?;
                    self.legacy_endpoint(&sid, sub).await?
                }
            };
            request.extensions_mut().insert(owned);
            inner.call(request).await
        }
    }
}

#[cfg(test)]
mod tests;
