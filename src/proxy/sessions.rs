//! Downstream MCP sessions belong to the user who created them: another user
//! presenting the same `Mcp-Session-Id` gets 404 and nothing is forwarded.
//! Bindings live in the store (so every replica knows them), with a short
//! local cache in front.

use std::time::Duration;

use axum::http::HeaderMap;
use moka::future::Cache;
use serde::{Deserialize, Serialize};

use crate::crypto::token_hash;
use crate::error::ProxyError;
use crate::store::{Namespace, Records};

pub const MCP_SESSION_ID: &str = "mcp-session-id";

/// Why a set of `Mcp-Session-Id` values is not one session id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionIdError {
    #[error("several Mcp-Session-Id values")]
    Several,
    #[error("an Mcp-Session-Id must be visible ASCII characters (0x21 to 0x7E)")]
    NotVisibleAscii,
}

/// The one `Mcp-Session-Id` of a message, if any. MCP session ids are
/// visible ASCII; anything else, or a second value, would let the proxy
/// check one session while the downstream resumes another.
pub fn session_id(headers: &HeaderMap) -> Result<Option<&str>, SessionIdError> {
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
pub fn presented_session_id(headers: &HeaderMap) -> Result<Option<&str>, ProxyError> {
    session_id(headers).map_err(|e| ProxyError::BadRequest(e.to_string()))
}

/// The session id a downstream creates: malformed is its error (502).
pub fn created_session_id(headers: &HeaderMap) -> Result<Option<&str>, ProxyError> {
    session_id(headers).map_err(|e| ProxyError::BadDownstreamAnswer(e.to_string()))
}

/// An idle session is forgotten after this long.
const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
const LOCAL_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Binding {
    pub sub: String,
    /// For legacy SSE message endpoints: where the downstream wants posts.
    pub endpoint: Option<String>,
}

pub struct SessionBindings {
    records: Records,
    local: Cache<String, Binding>,
}

impl SessionBindings {
    pub fn new(records: Records) -> Self {
        SessionBindings {
            records,
            local: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(LOCAL_TTL)
                .build(),
        }
    }

    fn key(kind: &str, id: &str) -> String {
        format!("{kind}:{}", token_hash(id))
    }

    pub async fn get(&self, kind: &str, id: &str) -> Result<Option<Binding>, ProxyError> {
        let key = Self::key(kind, id);
        if let Some(b) = self.local.get(&key).await {
            return Ok(Some(b));
        }
        let found: Option<Binding> = self
            .records
            .get(Namespace::McpSession, &key)
            .await
            .map_err(|e| ProxyError::StoreUnavailable(e.to_string()))?;
        if let Some(b) = &found {
            self.local.insert(key, b.clone()).await;
        }
        Ok(found)
    }

    pub async fn bind(&self, kind: &str, id: &str, binding: Binding) -> Result<(), ProxyError> {
        let key = Self::key(kind, id);
        self.records
            .put(Namespace::McpSession, &key, &binding, SESSION_TTL)
            .await
            .map_err(|e| ProxyError::StoreUnavailable(e.to_string()))?;
        self.local.insert(key, binding).await;
        Ok(())
    }

    pub async fn unbind(&self, kind: &str, id: &str) {
        let key = Self::key(kind, id);
        self.local.invalidate(&key).await;
        if let Err(e) = self.records.delete(Namespace::McpSession, &key).await {
            tracing::warn!(error = %e, "could not forget an MCP session");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(MCP_SESSION_ID, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn a_session_id_is_exactly_one_visible_ascii_value() {
        assert_eq!(session_id(&HeaderMap::new()), Ok(None));
        assert_eq!(session_id(&with(&[b"a-1_B~!"])), Ok(Some("a-1_B~!")));
        assert_eq!(
            session_id(&with(&[b"a", b"b"])),
            Err(SessionIdError::Several)
        );
        assert_eq!(
            session_id(&with(&[b"a", b"a"])),
            Err(SessionIdError::Several)
        );
        for bad in [&b""[..], b"a b", b"a\tb", b"caf\xc3\xa9", b"\x80"] {
            assert_eq!(
                session_id(&with(&[bad])),
                Err(SessionIdError::NotVisibleAscii),
                "{bad:?}"
            );
        }
        assert!(matches!(
            presented_session_id(&with(&[b"a", b"b"])),
            Err(ProxyError::BadRequest(_))
        ));
        assert!(matches!(
            created_session_id(&with(&[b"a b"])),
            Err(ProxyError::BadDownstreamAnswer(_))
        ));
    }
}
