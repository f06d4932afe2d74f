//! One span per request, and its start, end and failures logged in it.
//!
//! tower-http's `TraceLayer` did this, and read the clock five or six
//! times a request whether or not anything was logged (its start, the
//! answer's latency, and twice for each frame of the body); at the default
//! `warn` level nothing it times is ever written. Here the start is the
//! request path's clock ([`crate::clock`]: the poll's reading, which the
//! layers below ask for anyway), and a duration is taken only for an event
//! that is written. The events are tower-http's: `started processing request`
//! and `finished processing request` (`latency`, `status`) at `debug`,
//! `end of stream` (`stream_duration`) at `debug`, and `response failed`
//! (`classification`, `latency`) at `warn` for a 5xx answer. A body that
//! fails mid-way is not a `warn` here, as with tower-http's classifier: an
//! event stream closed for being idle ends with an error, and is logged
//! where it is closed; the connection logs what failed at `debug`.
//!
//! ```text
//! TraceRequestsLayer ─► TraceRequests<S> ─► TracedFuture ─► TracedBody
//!   (span per request)    (span entered       (span entered while the
//!                           while it polls)     answer's body streams)
//! ```

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Request, Response};
use axum::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::Span;

use crate::clock;
use crate::session::request_id;

/// The layer: [`TraceRequests`] around the service it wraps.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TraceRequestsLayer;

impl<S> Layer<S> for TraceRequestsLayer {
    type Service = TraceRequests<S>;

    fn layer(&self, inner: S) -> TraceRequests<S> {
        TraceRequests { inner }
    }
}

/// A span per request around `S`, with the request's events in it.
#[derive(Clone, Debug)]
pub(crate) struct TraceRequests<S> {
    inner: S,
}

/// The span a request's logs are written in: method and path only (a query
/// carries codes and state, which must never reach a log), and the id.
fn request_span<B>(request: &Request<B>) -> Span {
    // The fields are computed inside the macro: only when the span is
    // recorded at all (not at the default `warn`).
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = request_id(request)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    )
}

impl<S, B, R> Service<Request<B>> for TraceRequests<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: Display,
    R: Body<Data = Bytes> + Send + 'static,
    R::Error: Into<BoxError>,
{
    type Response = Response<axum::body::Body>;
    type Error = S::Error;
    type Future = TracedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let span = request_span(&request);
        let started = clock::now();
        let inner = {
            let _entered = span.enter();
            tracing::debug!("started processing request");
            self.inner.call(request)
        };
        TracedFuture {
            inner,
            span: Some(span),
            started,
        }
    }
}

/// Milliseconds, as tower-http writes latencies by default.
struct Millis(Duration);

impl Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ms", self.0.as_millis())
    }
}

fn since(started: Instant) -> Millis {
    Millis(clock::now().saturating_duration_since(started))
}

pin_project_lite::pin_project! {
    /// The inner service's future, polled in the request's span.
    pub(crate) struct TracedFuture<F> {
        #[pin]
        inner: F,
        // Taken when the answer is ready: it goes on with the body.
        span: Option<Span>,
        started: Instant,
    }
}

impl<F, R, E> Future for TracedFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
    E: Display,
    R: Body<Data = Bytes> + Send + 'static,
    R::Error: Into<BoxError>,
{
    type Output = Result<Response<axum::body::Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(span) = this.span.as_ref() else {
            // Polled past its end, which a caller must not do.
            return Poll::Pending;
        };
        let entered = span.enter();
        let outcome = std::task::ready!(this.inner.poll(cx));
        let started = *this.started;
        let result = match outcome {
            Ok(response) => {
                let status = response.status();
                tracing::debug!(latency = %since(started), status = status.as_u16(), "finished processing request");
                if status.is_server_error() {
                    tracing::warn!(classification = %format_args!("Status code: {status}"), latency = %since(started), "response failed");
                }
                drop(entered);
                let span = this.span.take().unwrap_or_else(Span::none);
                // A span no subscriber records (the default `warn`) has
                // nothing to enter, and the body's `debug` event below it
                // is off too: the body goes on as it is, without a wrapper
                // and its box (`Body::new` of an axum `Body` is that body).
                Ok(response.map(|body| {
                    if span.is_disabled() {
                        axum::body::Body::new(body)
                    } else {
                        axum::body::Body::new(TracedBody {
                            inner: body,
                            span,
                            started,
                            ended: false,
                        })
                    }
                }))
            }
            Err(error) => {
                tracing::warn!(classification = %format_args!("Error: {error}"), latency = %since(started), "response failed");
                Err(error)
            }
        };
        Poll::Ready(result)
    }
}

pin_project_lite::pin_project! {
    /// An answer's body, polled in its request's span.
    pub(crate) struct TracedBody<B> {
        #[pin]
        inner: B,
        span: Span,
        started: Instant,
        // Whether "end of stream" was written (a last frame can say so
        // before the body is asked for more).
        ended: bool,
    }
}

impl<B: Body> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut inner = this.inner;
        let frame = std::task::ready!(inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Err(_)) => {}
            // The end: said by the last frame, or by none left.
            Some(Ok(_)) if !inner.is_end_stream() => {}
            _ if *this.ended => {}
            _ => {
                *this.ended = true;
                tracing::debug!(stream_duration = %since(*this.started), "end of stream");
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
