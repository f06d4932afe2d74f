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

/// The largest event the proxy holds back to read (a list answer, the
/// legacy `endpoint` event); a longer one ends the stream with an error.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("an event of the downstream's stream is longer than {0} bytes")]
pub struct EventTooLarge(pub usize);

/// Cuts an event stream into complete events (each with its blank-line
/// terminator), holding back only the unfinished tail. Lines end with CRLF,
/// LF or CR (the SSE grammar); every byte is scanned once, however the
/// stream is chunked, and an unfinished event is bounded.
pub struct EventSplitter {
    pending: Vec<u8>,
    /// How far `pending` has been scanned.
    scanned: usize,
    /// The scan is at the start of a line.
    line_start: bool,
    /// The last byte scanned was a CR: an LF right after it belongs to the
    /// same line end.
    after_cr: bool,
    limit: usize,
}

impl Default for EventSplitter {
    fn default() -> Self {
        EventSplitter::with_limit(MAX_EVENT_BYTES)
    }
}

impl EventSplitter {
    pub fn with_limit(limit: usize) -> Self {
        EventSplitter {
            pending: Vec::new(),
            scanned: 0,
            line_start: true,
            after_cr: false,
            limit,
        }
    }

    /// The complete events in `chunk` and what came before it. An event cut
    /// at a CR whose LF arrives in the next chunk leaves that LF as a piece
    /// of its own (it parses as no event), so the pieces always add up to
    /// the bytes fed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, EventTooLarge> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        let mut i = self.scanned;
        while i < self.pending.len() {
            let byte = self.pending[i];
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            if after_cr && byte == b'\n' {
                if start == i {
                    // The LF of a CRLF whose CR ended the previous event,
                    // in an earlier chunk.
                    events.push(vec![b'\n']);
                    start = i + 1;
                }
                i += 1;
                continue;
            }
            match byte {
                b'\r' | b'\n' => {
                    self.after_cr = byte == b'\r';
                    if self.line_start {
                        // A blank line: the event ends here, with its LF
                        // if a CRLF is complete.
                        let mut end = i + 1;
                        if byte == b'\r' && self.pending.get(end) == Some(&b'\n') {
                            end += 1;
                            self.after_cr = false;
                        }
                        events.push(self.pending[start..end].to_vec());
                        start = end;
                        i = end;
                        continue;
                    }
                    self.line_start = true;
                }
                _ => self.line_start = false,
            }
            i += 1;
        }
        self.pending.drain(..start);
        self.scanned = self.pending.len();
        if self.pending.len() > self.limit {
            return Err(EventTooLarge(self.limit));
        }
        Ok(events)
    }

    /// Whatever is left when the stream ends.
    pub fn take_rest(&mut self) -> Vec<u8> {
        self.scanned = 0;
        self.line_start = true;
        self.after_cr = false;
        std::mem::take(&mut self.pending)
    }
}

/// The fields of one event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Event {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Option<String>,
}

/// Reads one event's fields (the SSE grammar: CRLF, LF or CR line ends,
/// `:` comments, one optional space after the colon, data lines joined
/// with LF).
pub fn parse_event(raw: &[u8]) -> Event {
    let text = String::from_utf8_lossy(raw);
    let mut event = Event::default();
    let mut data: Vec<&str> = Vec::new();
    for line in text.split(['\r', '\n']) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event.event = Some(value.to_string()),
            "id" => event.id = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    if !data.is_empty() {
        event.data = Some(data.join("\n"));
    }
    event
}

/// Serialises an event; `parse_event` reads it back equal.
pub fn render_event(event: &Event) -> Vec<u8> {
    let mut out = String::new();
    if let Some(e) = &event.event {
        out.push_str(&format!("event: {e}\n"));
    }
    if let Some(id) = &event.id {
        out.push_str(&format!("id: {id}\n"));
    }
    if let Some(data) = &event.data {
        for line in data.split('\n') {
            out.push_str(&format!("data: {line}\n"));
        }
    }
    out.push('\n');
    out.into_bytes()
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
    fn events_end_at_blank_lines_of_any_line_end() {
        let mut splitter = EventSplitter::default();
        let pieces = splitter
            .feed(b"data: a\r\rdata: b\r\n\r\ndata: c\n\ndata: d\r")
            .unwrap();
        let events: Vec<Event> = pieces.iter().map(|p| parse_event(p)).collect();
        assert_eq!(
            events.iter().map(|e| e.data.as_deref()).collect::<Vec<_>>(),
            [Some("a"), Some("b"), Some("c")]
        );
        // The CR may end the line or start a CRLF: nothing is decided yet.
        assert!(splitter.feed(b"\n").unwrap().is_empty());
        let last = splitter.feed(b"\r\n").unwrap();
        assert_eq!(parse_event(&last[0]).data.as_deref(), Some("d"));
        // A CR that ended an event, then its LF in the next chunk.
        let mut splitter = EventSplitter::default();
        assert_eq!(splitter.feed(b"data: e\n\r").unwrap().len(), 1);
        assert_eq!(
            splitter.feed(b"\ndata: f\n\n").unwrap(),
            [b"\n".to_vec(), b"data: f\n\n".to_vec()]
        );
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

    #[test]
    fn feeding_byte_by_byte_scans_each_byte_once() {
        // 4 MiB in 1-byte chunks: quadratic rescanning would take minutes.
        let mut splitter = EventSplitter::default();
        let mut stream = b"data: ".to_vec();
        stream.extend(std::iter::repeat_n(b'x', 4 << 20));
        stream.extend(b"\n\n");
        let started = std::time::Instant::now();
        let mut events = 0;
        for byte in &stream {
            events += splitter.feed(std::slice::from_ref(byte)).unwrap().len();
        }
        assert_eq!(events, 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    mod chunking {
        use super::super::*;
        use proptest::prelude::*;

        const ENDS: [&str; 3] = ["\r\n", "\n", "\r"];

        fn text() -> impl Strategy<Value = String> {
            "[a-z0-9 :{}\"\u{e9}\u{2028}]{0,10}"
        }

        fn event() -> impl Strategy<Value = (Event, Option<String>)> {
            (
                prop::option::of(text()),
                prop::option::of(text()),
                prop::option::of(prop::collection::vec(text(), 1..4)),
                prop::option::of(text()),
            )
                .prop_map(|(event, id, data, comment)| {
                    let data = data.map(|lines| lines.join("\n"));
                    let blank = event.is_none() && id.is_none() && data.is_none();
                    let comment = if blank {
                        Some(comment.unwrap_or_default())
                    } else {
                        comment
                    };
                    (Event { event, id, data }, comment)
                })
        }

        /// Writes events with the given line ends (cycled), a comment line
        /// where there is one, and sometimes no space after the colon.
        fn write(events: &[(Event, Option<String>)], ends: &[usize], spaces: &[bool]) -> Vec<u8> {
            let mut out = String::new();
            let mut n = 0;
            let mut previous = "";
            let mut line = |out: &mut String, text: String| {
                let mut end = ENDS[ends[n % ends.len()] % 3];
                // CR then LF would be one line end, not two.
                if previous == "\r" && end == "\n" {
                    end = "\r";
                }
                n += 1;
                previous = end;
                out.push_str(&text);
                out.push_str(end);
            };
            for (i, (event, comment)) in events.iter().enumerate() {
                let field = |name: &str, value: &str, k: usize| {
                    let space = spaces[(i + k) % spaces.len()] || value.starts_with(' ');
                    format!("{name}:{}{value}", if space { " " } else { "" })
                };
                if let Some(c) = comment {
                    line(&mut out, format!(":{c}"));
                }
                if let Some(e) = &event.event {
                    line(&mut out, field("event", e, 1));
                }
                if let Some(id) = &event.id {
                    line(&mut out, field("id", id, 2));
                }
                if let Some(data) = &event.data {
                    for (k, d) in data.split('\n').enumerate() {
                        line(&mut out, field("data", d, 3 + k));
                    }
                }
                line(&mut out, String::new());
            }
            out.into_bytes()
        }

        fn read(splitter: &mut EventSplitter, chunks: &[&[u8]]) -> (Vec<u8>, Vec<Event>) {
            let mut bytes = Vec::new();
            let mut events = Vec::new();
            for chunk in chunks {
                for piece in splitter.feed(chunk).unwrap() {
                    bytes.extend(&piece);
                    if piece != b"\n" {
                        events.push(parse_event(&piece));
                    }
                }
            }
            (bytes, events)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

            /// Any chunking of a stream yields the events of reading it whole,
            /// which are the events written, and passes every byte through.
            #[test]
            fn any_chunking_yields_the_events_of_the_whole_stream(
                events in prop::collection::vec(event(), 0..6),
                ends in prop::collection::vec(0usize..3, 1..6),
                spaces in prop::collection::vec(any::<bool>(), 1..4),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            ) {
                let stream = write(&events, &ends, &spaces);
                let (whole_bytes, whole) = read(&mut EventSplitter::default(), &[&stream]);
                prop_assert_eq!(&whole_bytes, &stream);
                let written: Vec<Event> = events.iter().map(|(e, _)| e.clone()).collect();
                prop_assert_eq!(&whole, &written);
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
                cuts.sort_unstable();
                let mut chunks = Vec::new();
                let mut at = 0;
                for cut in cuts.into_iter().chain([stream.len()]) {
                    chunks.push(&stream[at..cut]);
                    at = cut;
                }
                let (chunked_bytes, chunked) = read(&mut EventSplitter::default(), &chunks);
                prop_assert_eq!(&chunked_bytes, &stream);
                prop_assert_eq!(&chunked, &whole);
            }

            /// A re-serialised event parses back equal.
            #[test]
            fn rendered_events_parse_back_equal((event, _) in event()) {
                let rendered = render_event(&event);
                prop_assert_eq!(&parse_event(&rendered), &event);
                let pieces = EventSplitter::default().feed(&rendered).unwrap();
                prop_assert_eq!(pieces, vec![rendered]);
            }
        }
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
