//! What an event-stream answer gets on its way to the client: nothing on
//! the way may buffer it, an idle timeout (never a total one), its metrics,
//! the legacy HTTP+SSE `endpoint` event rewritten to a same-origin proxy
//! URL, and an end when the stream's session ends. Reading the events
//! themselves is `event_stream`'s.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use url::Url;

use super::sessions::{Binding, SessionBindings, LEGACY_KIND};
use crate::event_stream::{parse_event, EventSplitter, EventTooLarge};
use crate::metrics::EndpointMetrics;
use crate::session::SessionEnd;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether an answer is an event stream.
pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}

/// What decorating one event stream needs to know.
pub(crate) struct Decoration {
    /// `downstream.sse_idle_timeout`.
    pub idle_timeout: Duration,
    /// The open-stream gauge and event counter of the route's endpoint.
    pub metrics: EndpointMetrics,
    /// A successful legacy `/sse` stream: its `endpoint` event is rewritten.
    pub legacy: Option<LegacyStream>,
    /// Resolves when the caller's session ends.
    pub session_end: Option<BoxFuture<'static, SessionEnd>>,
}

/// A legacy HTTP+SSE stream whose `endpoint` event the proxy rewrites.
pub(crate) struct LegacyStream {
    /// Where the caller's legacy session is remembered.
    pub bindings: Arc<SessionBindings>,
    /// The downstream URL the stream came from: a relative endpoint is
    /// resolved against it.
    pub stream_url: Uri,
    /// The caller, the only user who may post to the endpoint.
    pub sub: String,
    /// The route's message endpoint (`<sse_path>/message`) the event
    /// announces instead of the downstream's.
    pub message_path: Arc<str>,
}

/// An event-stream answer, decorated: `headers` are the answer's (they
/// gain the no-buffering ones), `body` the downstream's.
pub(crate) fn decorate(headers: &mut HeaderMap, body: Body, decoration: Decoration) -> Body {
    // Proxies and browsers must not buffer or transform the stream.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    let timed = Body::new(IdleTimeout::new(body, decoration.idle_timeout));
    // With metrics off, not even the per-frame event count is paid for.
    let timed = if decoration.metrics.records() {
        Body::new(Counted::new(timed, decoration.metrics))
    } else {
        timed
    };
    let stream = match decoration.legacy {
        Some(legacy) => rewrite_endpoint(timed, legacy),
        None => timed,
    };
    // A stream never outlives its token (invariant 11).
    match decoration.session_end {
        Some(end) => Body::new(EndsWithSession::new(stream, end)),
        None => stream,
    }
}

/// Rewrites the legacy `endpoint` event to the proxy's message endpoint and
/// remembers where (and for whom) the downstream wants the messages.
fn rewrite_endpoint(body: Body, legacy: LegacyStream) -> Body {
    let LegacyStream {
        bindings,
        stream_url,
        sub,
        message_path,
    } = legacy;
    let base = Url::parse(&stream_url.to_string()).ok();
    let mut rewriter = EndpointRewriter::default();
    let stream = body.into_data_stream().then(move |chunk| {
        let bindings = bindings.clone();
        let base = base.clone();
        let sub = sub.clone();
        let message_path = message_path.clone();
        let step = chunk.and_then(|bytes| rewriter.feed(&bytes).map_err(axum::Error::new));
        async move {
            let step = step?;
            let mut out = step.before;
            if let Some(data) = step.endpoint {
                let endpoint = base
                    .as_ref()
                    .and_then(|b| b.join(&data).ok())
                    .map(|u| u.to_string())
                    .unwrap_or(data);
                let sid = crate::crypto::random_token();
                bindings
                    .bind(
                        LEGACY_KIND,
                        &sid,
                        Binding {
                            sub,
                            endpoint: Some(endpoint),
                        },
                    )
                    .await
                    .map_err(axum::Error::new)?;
                out.extend(endpoint_event(&format!("{message_path}?sid={sid}")));
                out.extend(step.after);
            }
            Ok::<Bytes, axum::Error>(Bytes::from(out))
        }
    });
    Body::from_stream(stream)
}

/// A body that ends with an error when no frame arrives for `idle`.
pub(crate) struct IdleTimeout {
    inner: Body,
    idle: Duration,
    /// When the last frame came. The timer is moved on from it only when
    /// it fires, not on every frame (a reset re-registers the timer).
    last_frame: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl IdleTimeout {
    /// `inner`, ended with an error after `idle` without a frame.
    pub(crate) fn new(inner: Body, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            last_frame: Instant::now(),
            sleep: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

/// Why an idle stream ended.
#[derive(Debug, thiserror::Error)]
#[error("the downstream stream was idle for {0:?}")]
pub(crate) struct IdleTimeoutError(Duration);

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
                this.last_frame = Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => loop {
                if this.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let due = this.last_frame + this.idle;
                if due > this.sleep.deadline() {
                    // A frame came since the timer was set: silence is
                    // counted from it.
                    this.sleep.as_mut().reset(due);
                    continue;
                }
                tracing::info!(idle = ?this.idle, "closing an idle event stream");
                return Poll::Ready(Some(Err(Box::new(IdleTimeoutError(this.idle)))));
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
pub(crate) struct EndsWithSession {
    inner: Option<Body>,
    end: BoxFuture<'static, SessionEnd>,
}

impl EndsWithSession {
    /// `inner`, ended when `end` resolves.
    pub(crate) fn new(inner: Body, end: BoxFuture<'static, SessionEnd>) -> Self {
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
pub(crate) struct EndpointRewriter {
    splitter: EventSplitter,
    done: bool,
}

/// One step of the rewriter: bytes to send now, and the endpoint found.
pub(crate) struct Rewritten {
    /// Complete events before the endpoint event, unchanged.
    pub before: Vec<u8>,
    /// The endpoint event's data, once found.
    pub endpoint: Option<String>,
    /// What followed the endpoint event in the same chunk.
    pub after: Vec<u8>,
}

impl EndpointRewriter {
    /// Whether the endpoint event has been found.
    #[cfg(test)]
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Feeds downstream bytes. Complete events before the endpoint event go
    /// out unchanged in `before`; the endpoint event itself is returned as
    /// its data for the caller to replace; the rest is in `after`.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<Rewritten, EventTooLarge> {
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
pub(crate) fn endpoint_event(url: &str) -> Vec<u8> {
    format!("event: endpoint\ndata: {url}\n\n").into_bytes()
}

/// Counts an open event stream (a gauge, down again when the client or the
/// downstream ends it) and the events it carries.
pub(crate) struct Counted {
    inner: Body,
    metrics: EndpointMetrics,
}

impl Counted {
    /// `inner`, counted under its route and endpoint.
    pub(crate) fn new(inner: Body, metrics: EndpointMetrics) -> Self {
        metrics.sse_stream(1);
        Counted { inner, metrics }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.metrics.sse_stream(-1);
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
                let events = event_ends(data);
                if events > 0 {
                    this.metrics.sse_events(events as u64);
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

/// How many blank lines (`\n\n` or `\r\n\r\n`), each the end of an event,
/// `data` has. Found from its line feeds, which memchr finds many bytes at
/// a time, rather than by comparing every window of the data.
fn event_ends(data: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', data)
        .map(|at| {
            let lf_lf = data.get(at + 1) == Some(&b'\n');
            let crlf_crlf = at > 0
                && data.get(at - 1) == Some(&b'\r')
                && data.get(at + 1..at + 3) == Some(b"\r\n".as_slice());
            usize::from(lf_lf) + usize::from(crlf_crlf)
        })
        .sum()
}

#[cfg(test)]
mod tests;
