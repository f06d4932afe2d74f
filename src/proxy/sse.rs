//! Streaming helpers: an idle timeout for event streams (never a total one),
//! an end when the stream's session ends, and the legacy HTTP+SSE
//! `endpoint` event rewritten to a same-origin proxy URL.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures_util::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::event_stream::{parse_event, EventSplitter, EventTooLarge};
use crate::session::SessionEnd;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body that ends with an error when no frame arrives for `idle`.
pub struct IdleTimeout {
    inner: Body,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl IdleTimeout {
    pub fn new(inner: Body, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the downstream stream was idle for {0:?}")]
pub struct IdleTimeoutError(Duration);

impl HttpBody for IdleTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.sleep.as_mut().reset(Instant::now() + this.idle);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    tracing::info!(idle = ?this.idle, "closing an idle event stream");
                    Poll::Ready(Some(Err(Box::new(IdleTimeoutError(this.idle)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An event stream that ends, cleanly, when its session ends (token expired
/// or revoked): the client sees the stream close, and the downstream body
/// (with its connection) is dropped at once.
pub struct EndsWithSession {
    inner: Option<Body>,
    end: BoxFuture<'static, SessionEnd>,
}

impl EndsWithSession {
    pub fn new(inner: Body, end: BoxFuture<'static, SessionEnd>) -> Self {
        EndsWithSession {
            inner: Some(inner),
            end,
        }
    }
}

impl HttpBody for EndsWithSession {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        // The end is looked at first: no frame passes once the session is over.
        if let Poll::Ready(reason) = this.end.as_mut().poll(cx) {
            tracing::info!(
                reason = reason.as_str(),
                "ending an event stream: its access token {}",
                reason.as_str()
            );
            this.inner = None;
            return Poll::Ready(None);
        }
        Pin::new(inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

/// Finds the first `endpoint` event of a legacy SSE stream and rewrites its
/// data; everything after it passes through untouched.
#[derive(Default)]
pub struct EndpointRewriter {
    splitter: EventSplitter,
    done: bool,
}

/// One step of the rewriter: bytes to send now, and the endpoint found.
pub struct Rewritten {
    pub before: Vec<u8>,
    pub endpoint: Option<String>,
    pub after: Vec<u8>,
}

impl EndpointRewriter {
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Feeds downstream bytes. Complete events before the endpoint event go
    /// out unchanged in `before`; the endpoint event itself is returned as
    /// its data for the caller to replace; the rest is in `after`.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Rewritten, EventTooLarge> {
        if self.done {
            return Ok(Rewritten {
                before: chunk.to_vec(),
                endpoint: None,
                after: Vec::new(),
            });
        }
        let mut before = Vec::new();
        let mut events = self.splitter.feed(chunk)?.into_iter();
        while let Some(raw) = events.next() {
            let event = parse_event(&raw);
            if event.event.as_deref().map(str::trim) == Some("endpoint") {
                if let Some(data) = event.data {
                    self.done = true;
                    let mut after: Vec<u8> = events.flatten().collect();
                    after.extend(self.splitter.take_rest());
                    return Ok(Rewritten {
                        before,
                        endpoint: Some(data),
                        after,
                    });
                }
            }
            before.extend_from_slice(&raw);
        }
        Ok(Rewritten {
            before,
            endpoint: None,
            after: Vec::new(),
        })
    }
}

/// The rewritten `endpoint` event.
pub fn endpoint_event(url: &str) -> Vec<u8> {
    format!("event: endpoint\ndata: {url}\n\n").into_bytes()
}

/// Counts an open event stream (a gauge, down again when the client or the
/// downstream ends it) and the events it carries.
pub struct Counted {
    inner: Body,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    route: &'static str,
}

impl Counted {
    pub fn new(
        inner: Body,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        route: &'static str,
    ) -> Self {
        metrics.sse_streams_open.with_label_values(&[route]).inc();
        Counted {
            inner,
            metrics,
            route,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.metrics
            .sse_streams_open
            .with_label_values(&[self.route])
            .dec();
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                // Each event ends with a blank line.
                let events = data.windows(2).filter(|w| w == b"\n\n").count()
                    + data.windows(4).filter(|w| w == b"\r\n\r\n").count();
                if events > 0 {
                    this.metrics
                        .sse_events
                        .with_label_values(&[this.route])
                        .inc_by(events as u64);
                }
            }
        }
        polled
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
    use crate::event_stream::MAX_EVENT_BYTES;

    #[test]
    fn endpoint_event_is_found_across_chunks() {
        let mut r = EndpointRewriter::default();
        let a = r.feed(b": comment\n\nevent: endpo").unwrap();
        assert_eq!(a.before, b": comment\n\n");
        assert!(a.endpoint.is_none());
        let b = r
            .feed(b"int\r\ndata: /messages?sessionId=abc\r\n\r\nevent: message\ndata: {}\n\n")
            .unwrap();
        assert_eq!(b.endpoint.as_deref(), Some("/messages?sessionId=abc"));
        assert_eq!(b.after, b"event: message\ndata: {}\n\n");
        assert!(r.is_done());
        let c = r.feed(b"data: x\n\n").unwrap();
        assert_eq!(c.before, b"data: x\n\n");
    }

    #[test]
    fn invariant_9_an_unfinished_event_is_bounded() {
        let mut splitter = EventSplitter::with_limit(1024);
        assert!(splitter.feed(&[b'a'; 1000]).is_ok());
        assert!(splitter.feed(&[b'a'; 100]).is_err());
        let mut rewriter = EndpointRewriter::default();
        let huge = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert!(rewriter.feed(&huge).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_streams_end_with_an_error() {
        use http_body_util::BodyExt;
        let (_tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
        let body = Body::new(http_body_util::StreamBody::new(tokio_stream_from(rx)));
        let mut idle = IdleTimeout::new(body, Duration::from_secs(5));
        let frame = idle.frame().await.unwrap();
        assert!(frame.is_err());
    }

    /// Drops with the body it sits in.
    struct DropFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn invariant_11_a_stream_ends_cleanly_and_drops_the_downstream_when_its_session_ends() {
        use http_body_util::BodyExt;
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = DropFlag(dropped.clone());
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        let downstream = futures_util::StreamExt::map(tokio_stream_from(rx), move |frame| {
            let _held = &flag;
            frame
        });
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let end = Box::pin(async move {
            let _ = end_rx.await;
            SessionEnd::Revoked
        });
        let mut body =
            EndsWithSession::new(Body::new(http_body_util::StreamBody::new(downstream)), end);
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))))
            .await
            .unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "data: 1\n\n");
        end_tx.send(()).unwrap();
        // Frames still queued downstream are not delivered after the end.
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: 2\n\n"))))
            .await
            .unwrap();
        assert!(
            body.frame().await.is_none(),
            "the stream ends without an error"
        );
        assert!(body.is_end_stream());
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
        assert!(tx.is_closed(), "the downstream body was dropped");
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
