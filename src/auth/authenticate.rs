//! The checkpoint that says who is calling: the request's bearer token,
//! resolved through the token cache, must be live and meant for this
//! resource; its `Session` then travels with the request (what ends its
//! event streams, the cache's `SessionWatch`, is the forwarder's own).

use std::future::Future;
use std::sync::Arc;

use axum::http::Request;
use tower::Service;

use super::{bearer_token, TokenCache};
use crate::checkpoint::{Checkpoint, CheckpointLayer};
use crate::error::ProxyError;
use crate::metrics::audit::AuditSlot;
use crate::session::Session;

/// Adds `Authenticate` to a service.
pub(crate) type AuthenticateLayer = CheckpointLayer<Authenticate>;

/// Resolves the bearer token to a `Session` (a request extension) or
/// answers 401 with the resource metadata URL.
#[derive(Clone)]
pub(crate) struct Authenticate {
    cache: Arc<TokenCache>,
    /// Written once per endpoint: the checkpoint is cloned per request.
    resource: Arc<Resource>,
}

/// The endpoint as a protected resource (RFC 8707, RFC 9728).
struct Resource {
    /// The proxy's root: a token bound to it works on every endpoint.
    root: String,
    /// This endpoint, e.g. `https://mcp.example.com/github/mcp`.
    endpoint: String,
    /// Where the endpoint's metadata is, for the 401 challenge.
    metadata: String,
}

impl Authenticate {
    /// The layer for the endpoint at `resource_path` of the proxy at
    /// `public_url`.
    pub(crate) fn layer(
        cache: Arc<TokenCache>,
        public_url: &str,
        resource_path: &str,
    ) -> AuthenticateLayer {
        CheckpointLayer::new(Authenticate {
            cache,
            resource: Arc::new(Resource {
                root: public_url.to_string(),
                endpoint: format!("{public_url}{resource_path}"),
                metadata: format!(
                    "{public_url}/.well-known/oauth-protected-resource{resource_path}"
                ),
            }),
        })
    }

    fn unauthorized(&self, token_sent: bool, reason: &'static str) -> ProxyError {
        ProxyError::Unauthorized {
            resource_metadata: self.resource.metadata.clone(),
            token_sent,
            reason,
        }
    }

    /// The live session of `token`, if it may be used on this route.
    async fn session(&self, token: Option<&str>) -> Result<Arc<Session>, ProxyError> {
        let Some(token) = token else {
            return Err(self.unauthorized(false, "a bearer token is required"));
        };
        let Some(session) = self.cache.lookup(token).await? else {
            return Err(self.unauthorized(true, "the access token is invalid, expired or revoked"));
        };
        if !self.serves(session.resource.as_deref()) {
            return Err(self.unauthorized(true, "the access token was issued for another resource"));
        }
        Ok(session)
    }

    /// RFC 8707: a token bound to a resource works only there; the root
    /// resource covers every route.
    fn serves(&self, resource: Option<&str>) -> bool {
        resource.is_none_or(|r| r == self.resource.root || r == self.resource.endpoint)
    }
}

impl<S, B> Checkpoint<S, Request<B>> for Authenticate
where
    S: Service<Request<B>, Error: From<ProxyError>, Future: Send> + Send + 'static,
    B: Send + 'static,
{
    fn run(
        self,
        mut inner: S,
        mut request: Request<B>,
    ) -> impl Future<Output = Result<S::Response, S::Error>> + Send + 'static {
        async move {
            let token = bearer_token(&request)?;
            // Boxed: inline, the lookup's future (moka's, 968 bytes) is part of
            // this checkpoint's for the whole request, copied into its box and
            // held while the downstream answers (1,776 bytes; 576 now). With
            // many requests in flight their memory no longer fits the cache
            // (`INSTR_CACHE=1 instructions.mjs`); boxed, it is let go when the
            // lookup ends.
            let session = Box::pin(self.session(token)).await?;
            if let Some(slot) = request
                .extensions()
                .get::<AuditSlot>()
                .filter(|slot| slot.logged())
            {
                slot.update(|facts| {
                    facts.sub = Some(session.sub.clone());
                    facts.email = session.email.clone();
                    facts.client_id = Some(session.client_id.clone());
                });
            }
            request.extensions_mut().insert(session);
            inner.call(request).await
        }
    }
}

#[cfg(test)]
mod tests;
