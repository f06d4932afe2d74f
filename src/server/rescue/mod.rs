//! Rescue: the one place where a typed error becomes the response its reader
//! needs, and where it is logged. `Rescue` catches the error a layer returns:
//! a `ProxyError` from the MCP stack, an `OAuthError` or `PageError` from a
//! limit in front of an OAuth route, a `FramingError` from the connection.
//! `render` holds each reader's form (OAuth JSON, HTML page, redirect,
//! JSON-RPC error), which axum also uses for the errors handlers return.
//! Written by hand, not as a `Checkpoint`: it changes the error type.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{Request, Response};
use axum::response::IntoResponse;
use tower::{Layer, Service};

mod render;

/// Wraps a service so that its errors become responses.
#[derive(Clone, Copy, Default)]
pub(crate) struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue { inner }
    }
}

/// A service whose errors are answered in their reader's form; it never
/// fails itself.
#[derive(Clone)]
pub(crate) struct Rescue<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Error: IntoResponse,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Our services are always ready; an error here would be a bug, and
        // the call below turns it into a response anyway.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        RescueFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, its error answered. Not boxed: an MCP
    /// request passes two `Rescue`s (the connection's and the endpoint's),
    /// and a box each was an allocation and a copy of the whole future
    /// below it, twice a request.
    pub(crate) struct RescueFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, E> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: IntoResponse,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map(|outcome| {
            Ok(match outcome {
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
