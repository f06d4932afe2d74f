//! CheckOrigin: MCP servers must check `Origin` (DNS rebinding). A browser
//! page from another origin may not drive the MCP server, so such a request
//! is refused before any token lookup or policy run.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, Response};
use tower::{Layer, Service};

use crate::error::ProxyError;

/// Refuses a present `Origin` that is neither the proxy's own nor allowed.
pub fn check_origin(
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

#[derive(Clone)]
pub struct CheckOriginLayer {
    public_url: Arc<str>,
    allowed: Arc<[String]>,
}

impl CheckOriginLayer {
    pub fn new(public_url: &str, allowed: &[String]) -> Self {
        CheckOriginLayer {
            public_url: public_url.into(),
            allowed: allowed.into(),
        }
    }
}

impl<S> Layer<S> for CheckOriginLayer {
    type Service = CheckOrigin<S>;
    fn layer(&self, inner: S) -> CheckOrigin<S> {
        CheckOrigin {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CheckOrigin<S> {
    inner: S,
    layer: CheckOriginLayer,
}

impl<S> Service<Request<Body>> for CheckOrigin<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if let Err(refused) = check_origin(
            request.headers(),
            &self.layer.public_url,
            &self.layer.allowed,
        ) {
            return Box::pin(std::future::ready(Err(refused)));
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn foreign_origins_never_reach_the_inner_service() {
        let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = reached.clone();
        let inner = tower::service_fn(move |_req: Request<Body>| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, ProxyError>(Response::new(Body::empty())) }
        });
        let service =
            CheckOriginLayer::new("https://mcp.example.com", &["http://localhost:6274".into()])
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
