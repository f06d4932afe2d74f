//! BodyDeadline: a request body must arrive within `server.body_timeout`,
//! counted from the end of the request head: a deadline for the whole body,
//! not between chunks, so trickling one byte at a time does not extend it.
//! A late body ends with a `BodyTimeout` error, which the reader of the body
//! turns into a 408. Written by hand, not as a `Checkpoint`: it changes the
//! request's body type.
//!
//! The same wrapper notes, for the connection, whether the request's body
//! was read to its end (`UnreadBody`): a response to a request whose body
//! was not (a refusal before anything read it) must close the connection
//! and say so, or a client reusing the connection races the close.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Request;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::error::BodyTimeout;

/// Whether the body of the request a connection is serving has not been
/// read to its end. An HTTP/1.1 connection serves one request at a time,
/// so one flag per connection: set when a request with a body arrives,
/// cleared when its body ends.
///
/// The connection closes after a request whose body was dropped unread
/// (what follows is not the next head), and the answer must say so: a
/// client that sends its next request at once (the Python SDK asks for
/// the authorization server's metadata right after a 401) would have it
/// cut off ("server disconnected without sending a response").
#[derive(Debug, Clone, Default)]
pub(crate) struct UnreadBody(Arc<AtomicBool>);

impl UnreadBody {
    /// Whether the current request's body was left unread.
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, unread: bool) {
        self.0.store(unread, Ordering::Release);
    }
}

#[derive(Debug, Clone)]
pub(crate) struct BodyDeadlineLayer {
    limit: Duration,
    unread: UnreadBody,
}

impl BodyDeadlineLayer {
    /// Bodies due within `limit`; whether each was read to its end is
    /// noted in `unread`.
    pub(crate) fn new(limit: Duration, unread: UnreadBody) -> Self {
        BodyDeadlineLayer { limit, unread }
    }
}

impl<S> Layer<S> for BodyDeadlineLayer {
    type Service = BodyDeadline<S>;
    fn layer(&self, inner: S) -> BodyDeadline<S> {
        BodyDeadline {
            inner,
            limit: self.limit,
            unread: self.unread.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct BodyDeadline<S> {
    inner: S,
    limit: Duration,
    unread: UnreadBody,
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
        let unread = self.unread.clone();
        self.inner
            .call(request.map(|body| DeadlineBody::new(body, limit, unread)))
    }
}

pin_project_lite::pin_project! {
    /// A request body that fails with `BodyTimeout` once its deadline
    /// passes. The body is held in place, not boxed: every request has one.
    pub(crate) struct DeadlineBody<B> {
        #[pin]
        inner: B,
        // When the body must have ended, counted from the request's
        // arrival; None for a body that is already complete (most GETs).
        due: Option<Instant>,
        // The timer, set only once the body waits for the client: most
        // bodies arrive with their head and never need one.
        deadline: Option<Pin<Box<Sleep>>>,
        limit: Duration,
        // Where the connection learns whether this body was read to its end.
        unread: UnreadBody,
    }
}

impl<B: Body> DeadlineBody<B> {
    /// `body`, due within `limit`; whether it is read to its end is noted
    /// in `unread`.
    pub(crate) fn new(body: B, limit: Duration, unread: UnreadBody) -> Self {
        let complete = body.is_end_stream();
        unread.set(!complete);
        DeadlineBody {
            inner: body,
            due: (!complete).then(|| crate::clock::now() + limit),
            deadline: None,
            limit,
            unread,
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
        let mut this = self.project();
        // What has arrived is delivered, even at the deadline.
        if let Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) {
            // A reader may stop at the last frame without asking for the
            // end (a body of known length says when it is over).
            let ended = match &frame {
                None => true,
                Some(Ok(_)) => this.inner.is_end_stream(),
                Some(Err(_)) => false,
            };
            if ended {
                // Every byte of the body has been read.
                *this.due = None;
                *this.deadline = None;
                this.unread.set(false);
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if let (Some(due), None) = (*this.due, &this.deadline) {
            *this.deadline = Some(Box::pin(tokio::time::sleep_until(due)));
        }
        let expired = this
            .deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
        if expired {
            *this.due = None;
            *this.deadline = None;
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(*this.limit)))));
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
        let error = DeadlineBody::new(trickle(), Duration::from_secs(5), UnreadBody::default())
            .collect()
            .await
            .expect_err("the deadline ends the body");
        assert!(BodyTimeout::in_chain(error.as_ref()).is_some(), "{error}");
        assert_eq!(started.elapsed().as_secs(), 5);
    }

    #[tokio::test]
    async fn a_body_is_unread_until_its_last_byte_is_read() {
        let unread = UnreadBody::default();
        let limit = Duration::from_secs(5);
        // Dropped before anyone read it.
        let body = http_body_util::Full::new(Bytes::from_static(b"{}"));
        drop(DeadlineBody::new(body, limit, unread.clone()));
        assert!(unread.is_set());
        // Read up to its last frame, without asking for the end: a body of
        // known length says it is over, and a reader may stop there.
        let body = http_body_util::Full::new(Bytes::from_static(b"{}"));
        let mut body = DeadlineBody::new(body, limit, unread.clone());
        assert!(unread.is_set());
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "{}");
        assert!(!unread.is_set(), "every byte was read");
        // The next request on the connection: without a body there is
        // nothing to leave unread.
        let body = http_body_util::Empty::<Bytes>::new();
        drop(DeadlineBody::new(body, limit, unread.clone()));
        assert!(!unread.is_set());
        // A body of unknown length, read to its end.
        let frames = futures_util::stream::iter(vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::data(Bytes::from_static(b"b"))),
        ]);
        let mut body = DeadlineBody::new(StreamBody::new(frames), limit, unread.clone());
        body.frame().await.unwrap().unwrap();
        assert!(unread.is_set(), "one frame of two");
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(&rest[..], b"b");
        assert!(!unread.is_set());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_in_time_is_delivered_whole() {
        let body = http_body_util::Full::new(Bytes::from_static(b"{}"));
        let bytes = DeadlineBody::new(body, Duration::from_secs(5), UnreadBody::default())
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&bytes[..], b"{}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_requests_arrival_not_from_the_first_read() {
        let started = tokio::time::Instant::now();
        let body = DeadlineBody::new(trickle(), Duration::from_secs(5), UnreadBody::default());
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
