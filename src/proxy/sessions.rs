//! Downstream MCP sessions belong to the user who created them: another user
//! presenting the same `Mcp-Session-Id` gets 404 and nothing is forwarded.
//! Bindings live in the store (so every replica knows them), with a short
//! local cache in front.

use std::time::Duration;

use moka::future::Cache;
use serde::{Deserialize, Serialize};

use crate::crypto::token_hash;
use crate::error::ProxyError;
use crate::store::{Namespace, Records};

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
