//! Request ids: every request gets one before anything logs (tower-http's
//! `SetRequestId`, with ids made here), and its answer carries it back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue, Request, Response};
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::checkpoint::{Around, AroundLayer, Leave};

/// The header that carries a request's id, both ways.
pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: a random per-process prefix and a counter. Unique across
/// replicas without a system call per request (a UUID costs a `getrandom`).
#[derive(Clone)]
pub(crate) struct SequentialRequestId {
    prefix: Arc<str>,
    counter: Arc<AtomicU64>,
}

impl SequentialRequestId {
    pub(crate) fn new() -> Self {
        SequentialRequestId {
            prefix: crate::crypto::random_id().into(),
            counter: Default::default(),
        }
    }
}

impl MakeRequestId for SequentialRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Written into one buffer that becomes the value, not formatted
        // and then copied (`format!` and `from_str`: 1,100 instructions).
        let mut counter = itoa::Buffer::new();
        let counter = counter.format(n);
        let mut id = bytes::BytesMut::with_capacity(self.prefix.len() + 1 + counter.len());
        id.extend_from_slice(self.prefix.as_bytes());
        id.extend_from_slice(b"-");
        id.extend_from_slice(counter.as_bytes());
        HeaderValue::from_maybe_shared(id.freeze())
            .ok()
            .map(RequestId::new)
    }
}

/// Copies the request's id onto its answer, unless the answer has one.
/// tower-http's `PropagateRequestId` does too, and also files the id in the
/// answer's extensions, which nothing here reads: that cost a map made and
/// dropped per request.
pub(crate) struct EchoRequestId;

impl EchoRequestId {
    pub(crate) fn layer() -> AroundLayer<EchoRequestId> {
        AroundLayer::new(EchoRequestId)
    }
}

impl<B, R, E> Around<Request<B>, Response<R>, E> for EchoRequestId {
    type Visit = EchoVisit;

    fn enter(&self, request: &mut Request<B>) -> Result<EchoVisit, Result<Response<R>, E>> {
        Ok(EchoVisit(request.headers().get(&REQUEST_ID).cloned()))
    }
}

/// The id of a request on its way through.
pub(crate) struct EchoVisit(Option<HeaderValue>);

impl<R, E> Leave<Response<R>, E> for EchoVisit {
    fn leave(self, outcome: &mut Result<Response<R>, E>) {
        if let (Some(id), Ok(response)) = (self.0, outcome) {
            response.headers_mut().entry(&REQUEST_ID).or_insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer, ServiceExt};
    use tower_http::request_id::SetRequestIdLayer;

    async fn answer_to(request: Request<()>, own_id: Option<&'static str>) -> Response<()> {
        let service = tower::service_fn(move |_request: Request<()>| async move {
            let mut response = Response::new(());
            if let Some(id) = own_id {
                response
                    .headers_mut()
                    .insert(&REQUEST_ID, HeaderValue::from_static(id));
            }
            Ok::<_, Infallible>(response)
        });
        let stack = SetRequestIdLayer::new(REQUEST_ID.clone(), SequentialRequestId::new())
            .layer(EchoRequestId::layer().layer(service));
        stack
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {})
    }

    #[tokio::test]
    async fn an_answer_carries_its_request_id_the_clients_or_a_new_one() {
        let sent = Request::builder()
            .header(&REQUEST_ID, "client-7")
            .body(())
            .unwrap();
        let answer = answer_to(sent, None).await;
        assert_eq!(answer.headers()[&REQUEST_ID], "client-7");
        assert!(answer.extensions().get::<RequestId>().is_none());

        let first = answer_to(Request::new(()), None).await;
        let second = answer_to(Request::new(()), None).await;
        let id = |r: &Response<()>| r.headers()[&REQUEST_ID].to_str().unwrap().to_owned();
        assert!(!id(&first).is_empty());
        assert_ne!(id(&first), id(&second), "each request gets its own id");

        let own = answer_to(Request::new(()), Some("service-set")).await;
        assert_eq!(own.headers().get_all(&REQUEST_ID).iter().count(), 1);
        assert_eq!(own.headers()[&REQUEST_ID], "service-set");
    }
}
