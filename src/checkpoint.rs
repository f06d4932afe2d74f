//! The one way a layer of the request path is written.
//!
//! A layer's logic is an async function of (its state, the inner service,
//! the request): check and enrich the request, call the inner service or
//! answer in its place, then look at the response if it needs to. That
//! function is a [`Checkpoint`]; [`CheckpointLayer`] turns it into a tower
//! layer, and the `Service` implementation — readiness, the clone-and-swap
//! of the inner service, the boxed future — is written here once instead of
//! once per layer. Bodies and errors stay generic: a checkpoint that refuses
//! requires `S::Error: From<ItsError>`.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use mcp_oauth_proxy::checkpoint::{Checkpoint, CheckpointLayer};
//! use tower::{Layer, Service, ServiceExt};
//!
//! /// Answers 404 for every path but `/mcp`.
//! #[derive(Clone)]
//! struct OnlyMcp;
//!
//! impl<S> Checkpoint<S, Request<String>> for OnlyMcp
//! where
//!     S: Service<Request<String>, Response = Response<String>, Error = Infallible> + Send + 'static,
//!     S::Future: Send,
//! {
//!     async fn run(self, mut inner: S, request: Request<String>) -> Result<Response<String>, Infallible> {
//!         if request.uri().path() != "/mcp" {
//!             let mut refused = Response::new(String::new());
//!             *refused.status_mut() = StatusCode::NOT_FOUND;
//!             return Ok(refused);
//!         }
//!         inner.call(request).await
//!     }
//! }
//!
//! # tokio_test_block_on(async {
//! let echo = tower::service_fn(|r: Request<String>| async move { Ok::<_, Infallible>(Response::new(r.into_body())) });
//! let service = CheckpointLayer::new(OnlyMcp).layer(echo);
//! let answer = service.oneshot(Request::get("/other").body(String::new()).unwrap()).await.unwrap();
//! assert_eq!(answer.status(), StatusCode::NOT_FOUND);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! A layer that only looks at the request — admits it, maybe enriched, or
//! refuses it — is a [`Gate`] instead: [`GateLayer`] calls the inner
//! service itself and returns the inner service's own future, so a gate
//! costs no boxed future, no copy of one and no clone of the services
//! below it. Prefer a gate wherever the response is not needed.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, Either, Ready};
use tower::{Layer, Service};

/// A layer's logic: given the ready inner service and a request, produce the
/// response (by calling `inner`, or not). `self` is a clone of the layer's
/// state, so the future owns everything it uses.
pub trait Checkpoint<S, Request>: Clone + Send + Sync + 'static
where
    S: Service<Request>,
{
    /// Runs the checkpoint for one request; `inner` has been polled ready.
    fn run(
        self,
        inner: S,
        request: Request,
    ) -> impl Future<Output = Result<S::Response, S::Error>> + Send + 'static;
}

/// The tower layer for a [`Checkpoint`].
#[derive(Clone, Debug)]
pub struct CheckpointLayer<C> {
    checkpoint: C,
}

impl<C> CheckpointLayer<C> {
    /// A layer that runs `checkpoint` in front of the service it wraps.
    pub fn new(checkpoint: C) -> Self {
        CheckpointLayer { checkpoint }
    }
}

impl<C: Clone, S> Layer<S> for CheckpointLayer<C> {
    type Service = CheckpointService<C, S>;

    fn layer(&self, inner: S) -> Self::Service {
        CheckpointService {
            checkpoint: Arc::new(self.checkpoint.clone()),
            below: Arc::new(inner),
            ready: None,
        }
    }
}

/// A [`Checkpoint`] in front of an inner service.
///
/// A checkpoint's future owns the inner service it calls, so each request
/// needs its own copy of the stack below. The checkpoint's state and that
/// stack sit behind `Arc`s: cloning the service (the router does, per
/// request) costs two reference counts, and the copy of the stack below is
/// made once per request, when the service is polled ready — not once by
/// the clone and again by the call, for every layer above it.
#[derive(Debug)]
pub struct CheckpointService<C, S> {
    checkpoint: Arc<C>,
    /// The stack below, shared by this service's clones.
    below: Arc<S>,
    /// A copy of `below` polled ready, for the next call.
    ready: Option<S>,
}

impl<C, S> Clone for CheckpointService<C, S> {
    fn clone(&self) -> Self {
        // A clone has not been polled: it makes its own copy when it is.
        CheckpointService {
            checkpoint: self.checkpoint.clone(),
            below: self.below.clone(),
            ready: None,
        }
    }
}

impl<C, S, Request> Service<Request> for CheckpointService<C, S>
where
    C: Checkpoint<S, Request>,
    S: Service<Request> + Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        let below = &self.below;
        self.ready
            .get_or_insert_with(|| S::clone(below))
            .poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The copy that was polled ready goes with this request; the next
        // poll_ready makes another.
        let ready = self.ready.take().unwrap_or_else(|| S::clone(&self.below));
        Box::pin(C::clone(&self.checkpoint).run(ready, request))
    }
}

/// A layer's logic when it needs only the request: admit it (it may add
/// to it, e.g. an extension) or refuse it. A refusal never reaches the
/// inner service.
pub trait Gate<Request>: Send + Sync + 'static {
    /// Why a request is refused; the inner service's error type takes it.
    type Refusal;

    /// Admits or refuses one request.
    fn admit(&self, request: &mut Request) -> Result<(), Self::Refusal>;
}

/// The tower layer for a [`Gate`].
#[derive(Debug)]
pub struct GateLayer<G> {
    gate: Arc<G>,
}

impl<G> Clone for GateLayer<G> {
    fn clone(&self) -> Self {
        GateLayer {
            gate: self.gate.clone(),
        }
    }
}

impl<G> GateLayer<G> {
    /// A layer that runs `gate` in front of the service it wraps.
    pub fn new(gate: G) -> Self {
        GateLayer {
            gate: Arc::new(gate),
        }
    }
}

impl<G, S> Layer<S> for GateLayer<G> {
    type Service = GateService<G, S>;

    fn layer(&self, inner: S) -> Self::Service {
        GateService {
            gate: self.gate.clone(),
            inner,
        }
    }
}

/// A [`Gate`] in front of an inner service.
#[derive(Debug)]
pub struct GateService<G, S> {
    gate: Arc<G>,
    inner: S,
}

impl<G, S: Clone> Clone for GateService<G, S> {
    fn clone(&self) -> Self {
        GateService {
            gate: self.gate.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<G, S, Request> Service<Request> for GateService<G, S>
where
    G: Gate<Request>,
    S: Service<Request>,
    S::Error: From<G::Refusal>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        match self.gate.admit(&mut request) {
            // The inner service was polled ready for this very call.
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(refusal) => Either::Left(futures_util::future::ready(Err(refusal.into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tower::ServiceExt;

    /// Refuses odd numbers, doubles even ones on the way in and adds one to
    /// the answer on the way out.
    #[derive(Clone)]
    struct Even;

    #[derive(Debug, PartialEq)]
    enum Refused {
        Odd(u32),
    }

    impl<S> Checkpoint<S, u32> for Even
    where
        S: Service<u32, Response = u32, Error = Refused> + Send + 'static,
        S::Future: Send,
    {
        async fn run(self, mut inner: S, request: u32) -> Result<u32, Refused> {
            if request % 2 == 1 {
                return Err(Refused::Odd(request));
            }
            Ok(inner.call(request * 2).await? + 1)
        }
    }

    /// A service that answers with its request, and how often it was called.
    fn counting_echo() -> (
        impl Service<u32, Response = u32, Error = Refused, Future: Send> + Clone + Send + Sync,
        Arc<AtomicUsize>,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let echo = tower::service_fn(move |n: u32| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Refused>(n) }
        });
        (echo, calls)
    }

    #[tokio::test]
    async fn a_checkpoint_sees_the_request_and_the_response() {
        let (inner, calls) = counting_echo();
        let service = CheckpointLayer::new(Even).layer(inner);
        assert_eq!(service.clone().oneshot(4).await, Ok(9));
        assert_eq!(service.oneshot(3).await, Err(Refused::Odd(3)));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a refused request never reaches the inner service"
        );
    }

    /// An inner service that is ready only once polled, and forgets it
    /// when called (like a buffer or a concurrency limit handing out one
    /// permit per `poll_ready`); a clone starts unready, and is counted.
    #[derive(Default)]
    struct Permit {
        ready: bool,
        clones: Arc<AtomicUsize>,
    }

    impl Clone for Permit {
        fn clone(&self) -> Self {
            self.clones.fetch_add(1, Ordering::SeqCst);
            Permit {
                ready: false,
                clones: self.clones.clone(),
            }
        }
    }

    impl Service<u32> for Permit {
        type Response = u32;
        type Error = Refused;
        type Future = std::future::Ready<Result<u32, Refused>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Refused>> {
            self.ready = true;
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, n: u32) -> Self::Future {
            assert!(self.ready, "called without poll_ready");
            self.ready = false;
            std::future::ready(Ok(n))
        }
    }

    #[tokio::test]
    async fn each_request_gets_the_service_that_was_polled_ready() {
        let mut service = CheckpointLayer::new(Even).layer(Permit::default());
        for n in [2, 4, 6] {
            let answer = service.ready().await.map(|s| s.call(n));
            assert_eq!(answer.expect("ready").await, Ok(n * 2 + 1));
        }
    }

    /// Refuses odd numbers; marks even ones by adding 100.
    struct EvenGate;

    impl Gate<u32> for EvenGate {
        type Refusal = Refused;

        fn admit(&self, request: &mut u32) -> Result<(), Refused> {
            if *request % 2 == 1 {
                return Err(Refused::Odd(*request));
            }
            *request += 100;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_gate_admits_enriched_requests_and_refuses_without_calling_the_inner_service() {
        let (inner, calls) = counting_echo();
        let service = GateLayer::new(EvenGate).layer(inner);
        assert_eq!(service.clone().oneshot(4).await, Ok(104));
        assert_eq!(service.oneshot(3).await, Err(Refused::Odd(3)));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a refused request never reaches the inner service"
        );
    }

    #[tokio::test]
    async fn a_gate_calls_the_service_that_was_polled_ready() {
        let mut service = GateLayer::new(EvenGate).layer(Permit::default());
        for n in [2, 4, 6] {
            let answer = service.ready().await.map(|s| s.call(n));
            assert_eq!(answer.expect("ready").await, Ok(n + 100));
        }
    }

    #[tokio::test]
    async fn a_stack_of_checkpoints_copies_the_service_below_once_per_request() {
        let below = Permit::default();
        let clones = below.clones.clone();
        let stack = tower::ServiceBuilder::new()
            .layer(CheckpointLayer::new(Even))
            .layer(CheckpointLayer::new(Even))
            .layer(CheckpointLayer::new(Even))
            .service(below);
        for request in 1..=4 {
            // As the router serves a request: a clone of the whole stack,
            // polled ready and called once.
            assert_eq!(stack.clone().oneshot(2).await, Ok(2 * 8 + 3));
            assert_eq!(clones.load(Ordering::SeqCst), request);
        }
    }
}
