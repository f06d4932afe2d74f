//! CheckOrigin: MCP servers must check `Origin` (DNS rebinding). A browser
//! page from another origin may not drive the MCP server, so such a request
//! is refused before any token lookup or policy run.

use std::sync::Arc;

use axum::http::{header, HeaderMap, Request};

use crate::checkpoint::{gate_layer, Gate, GateLayer};
use crate::error::ProxyError;

/// Refuses a present `Origin` that is neither the proxy's own nor allowed.
pub(crate) fn check_origin(
    headers: &HeaderMap,
    public_url: &str,
    allowed: &[String],
) -> Result<(), ProxyError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    if origin == public_url || allowed.iter().any(|a| a == origin) {
        Ok(())
    } else {
        Err(ProxyError::Forbidden(format!(
            "origin {origin} is not allowed (add it to server.allowed_origins)"
        )))
    }
}

/// Adds `CheckOrigin` to a service.
pub(crate) type CheckOriginLayer = GateLayer<CheckOrigin>;

/// Refuses (403) a request from a foreign browser origin before it reaches
/// the service.
#[derive(Clone)]
pub(crate) struct CheckOrigin {
    public_url: Arc<str>,
    allowed: Arc<[String]>,
}

impl CheckOrigin {
    /// The layer that accepts the proxy's own origin (`public_url`) and the
    /// `allowed` ones (`server.allowed_origins`).
    pub(crate) fn layer(public_url: &str, allowed: &[String]) -> CheckOriginLayer {
        gate_layer(CheckOrigin {
            public_url: public_url.into(),
            allowed: allowed.into(),
        })
    }
}

impl<B> Gate<Request<B>> for CheckOrigin {
    type Refusal = ProxyError;

    fn admit(&self, request: &mut Request<B>) -> Result<(), ProxyError> {
        check_origin(request.headers(), &self.public_url, &self.allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Response;
    use tower::{Layer, ServiceExt};

    #[tokio::test]
    async fn foreign_origins_never_reach_the_inner_service() {
        let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = reached.clone();
        let inner = tower::service_fn(move |_req: Request<Body>| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, ProxyError>(Response::new(Body::empty())) }
        });
        let service =
            CheckOrigin::layer("https://mcp.example.com", &["http://localhost:6274".into()])
                .layer(inner);
        let request = |origin: Option<&str>| {
            let mut r = Request::new(Body::empty());
            if let Some(o) = origin {
                r.headers_mut().insert(header::ORIGIN, o.parse().unwrap());
            }
            r
        };
        assert!(service.clone().oneshot(request(None)).await.is_ok());
        assert!(service
            .clone()
            .oneshot(request(Some("https://mcp.example.com")))
            .await
            .is_ok());
        assert!(service
            .clone()
            .oneshot(request(Some("http://localhost:6274")))
            .await
            .is_ok());
        let refused = service
            .clone()
            .oneshot(request(Some("http://evil.example.com")))
            .await;
        assert!(matches!(refused, Err(ProxyError::Forbidden(_))));
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
