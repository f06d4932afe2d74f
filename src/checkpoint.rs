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
//! A layer that looks at the outcome too, but waits for nothing of its own
//! on either side — counts it, logs it, adds a header — is an [`Around`]:
//! [`AroundLayer`] calls the inner service itself and wraps its future in a
//! small one that hands the outcome to [`Leave::leave`], so it costs no
//! boxed future, no copy of one and no clone of the services below it. A
//! layer that only admits the request (maybe enriched) or refuses it is a
//! [`Gate`], run as an `Around` with nothing to do on the way out
//! ([`gate_layer`]). Prefer either wherever the layer awaits nothing.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::pin::Pin;

use futures_util::future::{BoxFuture, Either};
use tower::{Layer, Service};

/// A layer's logic: given the ready inner service and a request, produce the
/// response (by calling `inner`, or not). `self` is a clone of the layer's
/// state, so the future owns everything it uses.
pub trait Checkpoint<S, Request>: Clone + Send + Sync + 'static
where
    S: Service<Request>,
{
    /// Runs the checkpoint for one request; `inner` has been polled ready.
    ///
    /// The future is boxed for every request that reaches the checkpoint.
    /// The layers of the MCP path write it as `fn run(..) -> impl Future {
    /// async move { .. } }`, not as an `async fn`, whose future holds its
    /// arguments twice (rust-lang/rust#62958): the request alone is 240
    /// bytes, copied into each new box.
    fn run(
        self,
        inner: S,
        request: Request,
    ) -> impl Future<Output = Result<S::Response, S::Error>> + Send + 'static;

    /// Whether this request has nothing to do with the checkpoint, whose
    /// `run` would only call `inner` with it: the request then goes
    /// straight to the inner service and its future is returned as it is
    /// (nothing boxed or copied). Answer only what `run` would do anyway.
    fn passes(&self, _request: &Request) -> bool {
        false
    }
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
    type Future = Either<S::Future, BoxFuture<'static, Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        let below = &self.below;
        self.ready
            .get_or_insert_with(|| S::clone(below))
            .poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The copy that was polled ready goes with this request; the next
        // poll_ready makes another.
        let mut ready = self.ready.take().unwrap_or_else(|| S::clone(&self.below));
        if self.checkpoint.passes(&request) {
            return Either::Left(ready.call(request));
        }
        Either::Right(Box::pin(C::clone(&self.checkpoint).run(ready, request)))
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

/// The tower layer for a [`Gate`]: the gate as an [`Around`] that has
/// nothing to do on the way out (see [`gate_layer`]).
pub type GateLayer<G> = AroundLayer<Admit<G>>;

/// A [`Gate`] in front of an inner service.
pub type GateService<G, S> = AroundService<Admit<G>, S>;

/// The layer that runs `gate` in front of the service it wraps.
pub fn gate_layer<G>(gate: G) -> GateLayer<G> {
    AroundLayer::new(Admit(gate))
}

/// A [`Gate`] as an [`Around`]: a refusal is the inner service's error,
/// and an admitted request's outcome passes untouched.
#[derive(Debug)]
pub struct Admit<G>(G);

impl<G, Request, Response, Error> Around<Request, Response, Error> for Admit<G>
where
    G: Gate<Request>,
    Error: From<G::Refusal>,
{
    type Visit = Admitted;

    fn enter(&self, request: &mut Request) -> Result<Admitted, Result<Response, Error>> {
        self.0
            .admit(request)
            .map(|()| Admitted)
            .map_err(|refusal| Err(refusal.into()))
    }
}

/// An admitted request: nothing to look at on its way out.
#[derive(Debug)]
pub struct Admitted;

impl<Response, Error> Leave<Response, Error> for Admitted {
    fn leave(self, _outcome: &mut Result<Response, Error>) {}
}

/// A layer's logic when it looks at the request on the way in and at the
/// outcome on the way out, and waits for nothing of its own: it may answer
/// in the inner service's place, or let the request in with a
/// [`Leave`] that sees the outcome.
pub trait Around<Request, Response, Error>: Send + Sync + 'static {
    /// What the way in hands to the way out: what it learnt, and the state
    /// it needs there.
    type Visit: Leave<Response, Error>;

    /// Sees the request; `Err(outcome)` answers (or refuses) it here, and
    /// the inner service is not called.
    fn enter(&self, request: &mut Request) -> Result<Self::Visit, Result<Response, Error>>;
}

/// The way out of an [`Around`].
pub trait Leave<Response, Error> {
    /// Sees the outcome of a request the inner service answered (not of an
    /// answer `enter` gave, nor of a request dropped unanswered).
    fn leave(self, outcome: &mut Result<Response, Error>);
}

/// The tower layer for an [`Around`].
#[derive(Debug)]
pub struct AroundLayer<A> {
    around: Arc<A>,
}

impl<A> Clone for AroundLayer<A> {
    fn clone(&self) -> Self {
        AroundLayer {
            around: self.around.clone(),
        }
    }
}

impl<A> AroundLayer<A> {
    /// A layer that runs `around` on both sides of the service it wraps.
    pub fn new(around: A) -> Self {
        AroundLayer {
            around: Arc::new(around),
        }
    }
}

impl<A, S> Layer<S> for AroundLayer<A> {
    type Service = AroundService<A, S>;

    fn layer(&self, inner: S) -> Self::Service {
        AroundService {
            around: self.around.clone(),
            inner,
        }
    }
}

/// An [`Around`] on both sides of an inner service.
#[derive(Debug)]
pub struct AroundService<A, S> {
    around: Arc<A>,
    inner: S,
}

impl<A, S: Clone> Clone for AroundService<A, S> {
    fn clone(&self) -> Self {
        AroundService {
            around: self.around.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<A, S, Request> Service<Request> for AroundService<A, S>
where
    A: Around<Request, S::Response, S::Error>,
    S: Service<Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = AroundFuture<S::Future, A::Visit, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        match self.around.enter(&mut request) {
            // The inner service was polled ready for this very call.
            Ok(visit) => AroundFuture::Inner {
                inner: self.inner.call(request),
                visit: Some(visit),
            },
            Err(outcome) => AroundFuture::Answered {
                outcome: Some(outcome),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of an [`AroundService`]: the inner service's, then
    /// [`Leave::leave`]; or the outcome [`Around::enter`] gave.
    // The macro takes no docs on variants' fields: the variants' docs say
    // what they hold.
    #[allow(missing_docs)]
    #[project = AroundProjection]
    pub enum AroundFuture<F, V, O> {
        /// Waiting for the inner service's future; the visit is taken
        /// when the outcome is known.
        Inner {
            #[pin]
            inner: F,
            visit: Option<V>,
        },
        /// Answered (or refused) by `enter`; the outcome is taken when
        /// polled.
        Answered { outcome: Option<O> },
    }
}

impl<F, V, R, E> Future for AroundFuture<F, V, Result<R, E>>
where
    F: Future<Output = Result<R, E>>,
    V: Leave<R, E>,
{
    type Output = Result<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AroundProjection::Inner { inner, visit } => {
                let mut outcome = std::task::ready!(inner.poll(cx));
                if let Some(visit) = visit.take() {
                    visit.leave(&mut outcome);
                }
                Poll::Ready(outcome)
            }
            AroundProjection::Answered { outcome } => match outcome.take() {
                Some(outcome) => Poll::Ready(outcome),
                // Polled past its end, which a caller must not do: there
                // is nothing left to give.
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests;
