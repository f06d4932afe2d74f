//! Rescue: the one place where a typed error becomes the response its reader
//! needs: a `ProxyError` from the MCP stack a JSON-RPC error with the right
//! status (and `WWW-Authenticate` on 401); an `OAuthError` or `PageError`
//! from a layer in front of an OAuth route its JSON or HTML form; a
//! `FramingError` from the connection a 400 that closes the connection.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{Request, Response};
use axum::response::IntoResponse;
use tower::{Layer, Service};

#[derive(Clone, Copy, Default)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue { inner }
    }
}

#[derive(Clone)]
pub struct Rescue<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Error: IntoResponse,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Our services are always ready; an error here would be a bug, and
        // the call below turns it into a response anyway.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(async move {
            Ok(match future.await {
                Ok(response) => response,
                Err(error) => error.into_response(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProxyError;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    #[tokio::test]
    async fn errors_become_json_rpc_responses() {
        let failing = tower::service_fn(|_req: Request<Body>| async {
            Err::<Response<Body>, _>(ProxyError::DownstreamUnreachable(
                "connection refused".into(),
            ))
        });
        let response = RescueLayer
            .layer(failing)
            .oneshot(Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body = axum::body::to_bytes(response.into_body(), 10_000)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["jsonrpc"], "2.0");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Failed to connect to downstream MCP server"));
    }

    #[tokio::test]
    async fn unauthorized_carries_the_resource_metadata_challenge() {
        let failing = tower::service_fn(|_req: Request<Body>| async {
            Err::<Response<Body>, _>(ProxyError::Unauthorized {
                resource_metadata: "https://p.example/.well-known/oauth-protected-resource/mcp"
                    .into(),
                token_sent: true,
                reason: "expired",
            })
        });
        let response = RescueLayer
            .layer(failing)
            .oneshot(Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\", resource_metadata=\"https://p.example/.well-known/oauth-protected-resource/mcp\""
        );
    }
}
