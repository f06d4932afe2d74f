//! AllowMethods: which methods each MCP route serves — POST, GET and DELETE
//! on /mcp, GET on /sse, POST on the message endpoint. Any other, HEAD
//! included, is `ProxyError::MethodNotAllowed` (Rescue renders 405 with
//! `Allow` and a JSON-RPC error). It sits innermost, just before session
//! ownership, so that a request without a valid token, or one the policy
//! refuses, is answered as such whatever its method, and a refused method
//! is audited like any other answer. A plain check rather than axum's
//! `MethodRouter`: every layer above clones its inner service per request,
//! and a method router's boxed services make each clone an allocation.

use axum::http::{Method, Request};

use super::Endpoint;
use crate::checkpoint::{gate_layer, Gate, GateLayer};
use crate::error::ProxyError;

impl Endpoint {
    /// Whether the route serves `method`.
    pub(crate) fn serves(self, method: &Method) -> bool {
        match self {
            Endpoint::Mcp => {
                *method == Method::POST || *method == Method::GET || *method == Method::DELETE
            }
            Endpoint::SseStream => *method == Method::GET,
            Endpoint::SseMessage => *method == Method::POST,
        }
    }
}

/// Refuses a method the route does not serve.
#[derive(Clone, Copy)]
pub(crate) struct AllowMethods {
    route: Endpoint,
}

impl AllowMethods {
    /// The layer for `route`.
    pub(crate) fn layer(route: Endpoint) -> GateLayer<AllowMethods> {
        gate_layer(AllowMethods { route })
    }
}

impl<B> Gate<Request<B>> for AllowMethods {
    type Refusal = ProxyError;

    fn admit(&self, request: &mut Request<B>) -> Result<(), ProxyError> {
        if !self.route.serves(request.method()) {
            return Err(ProxyError::MethodNotAllowed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Response;
    use tower::{Layer, ServiceExt};

    #[tokio::test]
    async fn each_mcp_route_serves_its_methods_and_refuses_the_rest_with_405() {
        let forward = tower::service_fn(|_: Request<Body>| async {
            Ok::<_, ProxyError>(Response::new(Body::from("forwarded")))
        });
        let all = [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
            Method::TRACE,
        ];
        for (route, served) in [
            (
                Endpoint::Mcp,
                &[Method::POST, Method::GET, Method::DELETE][..],
            ),
            (Endpoint::SseStream, &[Method::GET][..]),
            (Endpoint::SseMessage, &[Method::POST][..]),
        ] {
            for method in &all {
                let request = Request::builder()
                    .method(method.clone())
                    .uri("/mcp")
                    .body(Body::empty())
                    .unwrap();
                let answer = AllowMethods::layer(route)
                    .layer(forward)
                    .oneshot(request)
                    .await;
                if served.contains(method) {
                    assert!(answer.is_ok(), "{route:?} {method}");
                } else {
                    assert!(
                        matches!(answer, Err(ProxyError::MethodNotAllowed)),
                        "{route:?} {method}"
                    );
                }
            }
        }
    }
}
