//! Request ids: every request gets one before anything logs — the
//! client's `X-Request-Id` when it sent one, else one made here — and its
//! answer carries it back. The request keeps it in its headers, where the
//! span, the audit and the forwarder read it.
//!
//! One layer does both (tower-http's `SetRequestId` and
//! `PropagateRequestId` are two, and file the id in the request's and the
//! answer's extensions too, which cost an allocation and a map insert per
//! request for what the header already says).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::header::Entry;
use axum::http::{HeaderValue, Request, Response};
use smallvec::SmallVec;

use crate::checkpoint::{Around, AroundLayer, Leave};
use crate::session::REQUEST_ID;

/// Request ids: a random per-process prefix and a counter. Unique across
/// replicas without a system call per request (a UUID costs a `getrandom`).
/// One per server, shared by its connections through the layer.
pub(crate) struct SequentialRequestId {
    prefix: Box<str>,
    counter: AtomicU64,
}

impl SequentialRequestId {
    pub(crate) fn new() -> Self {
        SequentialRequestId {
            prefix: crate::crypto::random_id().into(),
            counter: Default::default(),
        }
    }

    /// The next id: its text kept inline (a 22-character prefix, `-` and
    /// a `u64`'s digits fit) in the one allocation its value shares between
    /// the request's header and the answer's. Made as a `BytesMut` and
    /// frozen, its first clone moved it into a second allocation (~150
    /// instructions a request, callgrind).
    fn next(&self) -> Option<HeaderValue> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut counter = itoa::Buffer::new();
        let mut id: SmallVec<[u8; 48]> = SmallVec::new();
        id.extend_from_slice(self.prefix.as_bytes());
        id.push(b'-');
        id.extend_from_slice(counter.format(n).as_bytes());
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id)).ok()
    }
}

/// Gives each request its id, and copies it onto the answer unless the
/// answer has one.
pub(crate) struct RequestIds(SequentialRequestId);

impl RequestIds {
    pub(crate) fn layer() -> AroundLayer<RequestIds> {
        AroundLayer::new(RequestIds(SequentialRequestId::new()))
    }
}

impl<B, R, E> Around<Request<B>, Response<R>, E> for RequestIds {
    type Visit = EchoVisit;

    fn enter(&self, request: &mut Request<B>) -> Result<EchoVisit, Result<Response<R>, E>> {
        // One search of the map for the name, whether the client sent an id
        // or one is made (a lookup and then an insert hashed it twice).
        match request.headers_mut().entry(&REQUEST_ID) {
            Entry::Occupied(sent) => Ok(EchoVisit(Some(sent.get().clone()))),
            Entry::Vacant(vacant) => {
                let made = self.0.next();
                if let Some(made) = &made {
                    vacant.insert(made.clone());
                }
                Ok(EchoVisit(made))
            }
        }
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
    use crate::session::request_id;
    use std::convert::Infallible;
    use tower::{Layer, ServiceExt};

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
        let stack = RequestIds::layer().layer(service);
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
        assert!(
            answer.extensions().is_empty(),
            "nothing filed beside the header"
        );

        let first = answer_to(Request::new(()), None).await;
        let second = answer_to(Request::new(()), None).await;
        let id = |r: &Response<()>| r.headers()[&REQUEST_ID].to_str().unwrap().to_owned();
        assert!(!id(&first).is_empty());
        assert_ne!(id(&first), id(&second), "each request gets its own id");

        let own = answer_to(Request::new(()), Some("service-set")).await;
        assert_eq!(own.headers().get_all(&REQUEST_ID).iter().count(), 1);
        assert_eq!(own.headers()[&REQUEST_ID], "service-set");
    }

    #[test]
    fn made_ids_are_the_prefix_and_a_counter_even_the_last_one() {
        let ids = SequentialRequestId::new();
        let prefix = ids.prefix.to_string();
        let first = ids.next().expect("an id");
        let second = ids.next().expect("an id");
        assert_eq!(first, format!("{prefix}-0").as_str());
        assert_eq!(second, format!("{prefix}-1").as_str());
        ids.counter.store(u64::MAX, Ordering::Relaxed);
        let last = ids.next().expect("the longest id fits");
        assert_eq!(last, format!("{prefix}-{}", u64::MAX).as_str());
        // Shared, not copied, by a clone.
        assert_eq!(first.clone().as_bytes().as_ptr(), first.as_bytes().as_ptr());
    }

    #[tokio::test]
    async fn the_layers_below_read_the_id_the_answer_carries() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let noted = seen.clone();
        let service = tower::service_fn(move |request: Request<()>| {
            *noted.lock().unwrap() = request_id(&request).cloned();
            async { Ok::<_, Infallible>(Response::new(())) }
        });
        let answer = RequestIds::layer()
            .layer(service)
            .oneshot(Request::new(()))
            .await
            .unwrap_or_else(|never| match never {});
        let seen = seen.lock().unwrap().clone().expect("an id below");
        assert_eq!(answer.headers()[&REQUEST_ID], seen);
    }
}
