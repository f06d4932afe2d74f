//! BodyDeadline: a request body must arrive within `server.body_timeout`,
//! counted from the end of the request head: a deadline for the whole body,
//! not between chunks, so trickling one byte at a time does not extend it.
//! A late body ends with a `BodyTimeout` error, which the reader of the body
//! turns into a 408. Written by hand, not as a `Checkpoint`: it changes the
//! request's body type.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Request;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::error::BodyTimeout;

#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyDeadlineLayer {
    limit: Duration,
}

impl BodyDeadlineLayer {
    pub(crate) fn new(limit: Duration) -> Self {
        BodyDeadlineLayer { limit }
    }
}

impl<S> Layer<S> for BodyDeadlineLayer {
    type Service = BodyDeadline<S>;
    fn layer(&self, inner: S) -> BodyDeadline<S> {
        BodyDeadline {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct BodyDeadline<S> {
    inner: S,
    limit: Duration,
}

impl<S, B> Service<Request<B>> for BodyDeadline<S>
where
    S: Service<Request<DeadlineBody<B>>>,
    B: Body,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> S::Future {
        let limit = self.limit;
        self.inner
            .call(request.map(|body| DeadlineBody::new(body, limit)))
    }
}

/// A request body that fails with `BodyTimeout` once its deadline passes.
pub(crate) struct DeadlineBody<B> {
    inner: Pin<Box<B>>,
    /// When the body must have ended, counted from the request's arrival;
    /// None for a body that is already complete (most GETs).
    due: Option<Instant>,
    /// The timer, set only once the body waits for the client: most bodies
    /// arrive with their head and never need one.
    deadline: Option<Pin<Box<Sleep>>>,
    limit: Duration,
}

impl<B: Body> DeadlineBody<B> {
    pub(crate) fn new(body: B, limit: Duration) -> Self {
        let due = (!body.is_end_stream()).then(|| Instant::now() + limit);
        DeadlineBody {
            inner: Box::pin(body),
            due,
            deadline: None,
            limit,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body,
    B::Error: Into<tower::BoxError>,
{
    type Data = B::Data;
    type Error = tower::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, tower::BoxError>>> {
        let this = self.get_mut();
        // What has arrived is delivered, even at the deadline.
        if let Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) {
            if frame.is_none() {
                this.due = None;
                this.deadline = None;
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if let (Some(due), None) = (this.due, &this.deadline) {
            this.deadline = Some(Box::pin(tokio::time::sleep_until(due)));
        }
        let expired = this
            .deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if expired {
            this.due = None;
            this.deadline = None;
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Bytes;

    /// A body that sends one byte per second, forever.
    fn trickle() -> impl Body<Data = Bytes, Error = std::convert::Infallible> {
        let stream = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x"))),
                (),
            ))
        });
        StreamBody::new(stream)
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_fails_at_the_deadline_not_between_chunks() {
        let started = tokio::time::Instant::now();
        let error = DeadlineBody::new(trickle(), Duration::from_secs(5))
            .collect()
            .await
            .expect_err("the deadline ends the body");
        assert!(BodyTimeout::in_chain(error.as_ref()).is_some(), "{error}");
        assert_eq!(started.elapsed().as_secs(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_in_time_is_delivered_whole() {
        let body = http_body_util::Full::new(Bytes::from_static(b"{}"));
        let bytes = DeadlineBody::new(body, Duration::from_secs(5))
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&bytes[..], b"{}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_requests_arrival_not_from_the_first_read() {
        let started = tokio::time::Instant::now();
        let body = DeadlineBody::new(trickle(), Duration::from_secs(5));
        // The application reads the body late; the timer is set then.
        tokio::time::advance(Duration::from_secs(4)).await;
        let error = body
            .collect()
            .await
            .expect_err("the deadline ends the body");
        assert!(BodyTimeout::in_chain(error.as_ref()).is_some(), "{error}");
        assert_eq!(started.elapsed().as_secs(), 5);
    }
}
