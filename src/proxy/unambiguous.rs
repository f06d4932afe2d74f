//! UnambiguousHeaders: a header the proxy or the policy reads must mean one
//! thing. With two values, the proxy could check the first while the
//! downstream acts on the last (or on both joined), so the request is
//! refused (400) before the policy sees it and nothing is forwarded.

use axum::http::{header, HeaderMap, HeaderName, Request};

use super::sessions::presented_session_id;
use crate::checkpoint::{gate_layer, Gate, GateLayer};
use crate::error::ProxyError;

/// Headers read on the request path (besides `Authorization`, which
/// Authenticate checks): by the session binding, the policy, the routing
/// check and the body parser.
/// Names made once (`from_static` is const): a lookup by `&str` parses the
/// name first.
pub(crate) const INTERPRETED: [HeaderName; 5] = [
    HeaderName::from_static("mcp-protocol-version"),
    HeaderName::from_static("last-event-id"),
    HeaderName::from_static("mcp-method"),
    HeaderName::from_static("mcp-name"),
    header::CONTENT_TYPE,
];

/// Refuses a request whose interpreted headers carry more than one value,
/// or whose `Mcp-Session-Id` is not exactly one visible-ASCII value.
pub(crate) fn check_unambiguous(headers: &HeaderMap) -> Result<(), ProxyError> {
    presented_session_id(headers)?;
    if headers.len() == headers.keys_len() {
        // No name has a second value: nothing to look up one by one.
        return Ok(());
    }
    for name in INTERPRETED {
        if headers.get_all(&name).iter().nth(1).is_some() {
            return Err(ProxyError::BadRequest(format!(
                "the {name} header appears more than once"
            )));
        }
    }
    Ok(())
}

/// Adds `UnambiguousHeaders` to a service.
pub(crate) type UnambiguousHeadersLayer = GateLayer<UnambiguousHeaders>;

/// Refuses (400) a request whose interpreted headers are ambiguous before it
/// reaches the service.
#[derive(Clone, Copy, Default)]
pub(crate) struct UnambiguousHeaders;

impl UnambiguousHeaders {
    /// The layer.
    pub(crate) fn layer() -> UnambiguousHeadersLayer {
        gate_layer(UnambiguousHeaders)
    }
}

impl<B> Gate<Request<B>> for UnambiguousHeaders {
    type Refusal = ProxyError;

    fn admit(&self, request: &mut Request<B>) -> Result<(), ProxyError> {
        check_unambiguous(request.headers())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Response;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tower::{Layer, ServiceExt};

    async fn reaches_inner(headers: &[(&str, &str)]) -> Result<(), ProxyError> {
        let reached = Arc::new(AtomicUsize::new(0));
        let seen = reached.clone();
        let inner = tower::service_fn(move |_req: Request<Body>| {
            seen.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, ProxyError>(Response::new(Body::empty())) }
        });
        let mut request = Request::new(Body::empty());
        for (name, value) in headers {
            request.headers_mut().append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let result = UnambiguousHeaders::layer()
            .layer(inner)
            .oneshot(request)
            .await;
        assert_eq!(reached.load(Ordering::SeqCst), usize::from(result.is_ok()));
        result.map(|_| ())
    }

    #[tokio::test]
    async fn invariant_10_a_header_the_proxy_reads_twice_is_refused_before_anything_runs() {
        assert!(reaches_inner(&[
            ("mcp-session-id", "s-1"),
            ("mcp-protocol-version", "2025-06-18"),
            ("last-event-id", "7"),
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("accept", "text/event-stream"),
        ])
        .await
        .is_ok());
        // Every name once: the check that skips the per-name lookups.
        assert!(reaches_inner(&[
            ("mcp-session-id", "s-1"),
            ("mcp-protocol-version", "2025-06-18"),
            ("content-type", "application/json"),
        ])
        .await
        .is_ok());
        for twice in [
            "mcp-session-id",
            "mcp-protocol-version",
            "last-event-id",
            "mcp-method",
            "mcp-name",
            "content-type",
        ] {
            let refused = reaches_inner(&[(twice, "a"), (twice, "b")]).await;
            assert!(
                matches!(&refused, Err(ProxyError::BadRequest(m)) if m.contains(twice) || m.contains("Mcp-Session-Id")),
                "{twice}: {refused:?}"
            );
        }
        let refused = reaches_inner(&[("mcp-session-id", "has space")]).await;
        assert!(matches!(refused, Err(ProxyError::BadRequest(_))));
    }
}
