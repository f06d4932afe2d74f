//! `SharedEndpoint`: an MCP endpoint's whole stack behind one `Arc`.
//!
//! The service in front of an endpoint is cloned for every connection
//! that calls it (`server::stack::Routes` keeps a copy of the endpoint's
//! boxed service, with the layers every request passes, per connection)
//! and for every request axum's router serves (it clones a route once per
//! level of routing and layering), and each clone of a tower stack copies
//! every layer below it. Behind an `Arc`, those clones cost a reference
//! count each; the stack itself is cloned once per request, here, and
//! driven to readiness before the call, exactly as axum's own route does
//! (`oneshot`), so a layer with backpressure (an embedding program's)
//! keeps it.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{Request, Response};
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

/// One endpoint's stack, cloned once per request (see the module docs).
pub(crate) struct SharedEndpoint<S>(Arc<S>);

impl<S> SharedEndpoint<S> {
    /// Shares `stack` among the router's clones.
    pub(crate) fn new(stack: S) -> Self {
        SharedEndpoint(Arc::new(stack))
    }
}

impl<S> Clone for SharedEndpoint<S> {
    fn clone(&self) -> Self {
        SharedEndpoint(self.0.clone())
    }
}

impl<S> Service<Request<Body>> for SharedEndpoint<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Oneshot<S, Request<Body>>;

    /// Always ready: readiness is the clone's, awaited in `call`.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        S::clone(&self.0).oneshot(request)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An endpoint that counts its clones and is ready only after
    /// `pending_polls` polls of each copy, like a layer with backpressure
    /// (`server::stack`'s tests use it too).
    pub(crate) struct Counted {
        clones: Arc<AtomicUsize>,
        pending_polls: usize,
        polled: usize,
    }

    impl Counted {
        pub(crate) fn new(clones: &Arc<AtomicUsize>, pending_polls: usize) -> Self {
            Counted {
                clones: clones.clone(),
                pending_polls,
                polled: 0,
            }
        }
    }

    impl Clone for Counted {
        fn clone(&self) -> Self {
            self.clones.fetch_add(1, Ordering::SeqCst);
            Counted::new(&self.clones, self.pending_polls)
        }
    }

    impl Service<Request<Body>> for Counted {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.polled >= self.pending_polls {
                return Poll::Ready(Ok(()));
            }
            self.polled += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }

        fn call(&mut self, _request: Request<Body>) -> Self::Future {
            assert!(
                self.polled >= self.pending_polls,
                "called before it was ready"
            );
            std::future::ready(Ok(Response::new(Body::from("answered"))))
        }
    }

    #[tokio::test]
    async fn the_router_s_clones_share_one_stack_and_each_request_waits_for_readiness() {
        let clones = Arc::new(AtomicUsize::new(0));
        let endpoint = SharedEndpoint::new(Counted::new(&clones, 1));
        let copies: Vec<_> = (0..7).map(|_| endpoint.clone()).collect();
        assert_eq!(clones.load(Ordering::SeqCst), 0, "clones share the stack");
        for copy in copies {
            let answer = copy.oneshot(Request::new(Body::empty())).await;
            assert!(answer.is_ok());
        }
        assert_eq!(
            clones.load(Ordering::SeqCst),
            7,
            "one stack clone per request"
        );
    }
}
