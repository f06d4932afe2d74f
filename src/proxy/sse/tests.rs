use super::*;
use crate::event_stream::MAX_EVENT_BYTES;
use crate::metrics::labels::McpEndpoint;

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
    let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    let body = Body::new(http_body_util::StreamBody::new(tokio_stream_from(rx)));
    let mut idle = IdleTimeout::new(body, Duration::from_secs(5));
    let frame = idle.frame().await.unwrap();
    assert!(frame.is_err());
}

#[tokio::test(start_paused = true)]
async fn an_event_stream_is_idle_from_its_last_frame_not_from_its_start() {
    use http_body_util::BodyExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    let body = Body::new(http_body_util::StreamBody::new(tokio_stream_from(rx)));
    let started = tokio::time::Instant::now();
    let mut idle = IdleTimeout::new(body, Duration::from_secs(5));
    tokio::spawn(async move {
        // Frames 3 s apart: never 5 s of silence, until the last one.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let frame = Frame::data(Bytes::from_static(b"data: x\n\n"));
            if tx.send(Ok(frame)).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(tx);
    });
    for _ in 0..4 {
        let frame = idle.frame().await.expect("a frame").expect("not idle yet");
        assert!(frame.is_data());
    }
    let ended = idle.frame().await.expect("an error ends the stream");
    assert!(ended.is_err());
    assert_eq!(
        started.elapsed().as_secs(),
        12 + 5,
        "5 s after the last frame"
    );
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
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
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

// ------------------------------------------------------------ decoration

fn decoration(
    legacy: Option<LegacyStream>,
    session_end: Option<BoxFuture<'static, SessionEnd>>,
) -> Decoration {
    Decoration {
        idle_timeout: Duration::from_secs(60),
        metrics: crate::metrics::Metrics::disabled()
            .route("default")
            .endpoint(McpEndpoint::Sse),
        legacy,
        session_end,
    }
}

async fn read_all(body: Body) -> Vec<u8> {
    use http_body_util::BodyExt;
    body.collect().await.unwrap().to_bytes().to_vec()
}

#[test]
fn an_event_stream_is_known_by_its_content_type() {
    let with = |ct: &str| {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        h
    };
    assert!(is_event_stream(&with("text/event-stream")));
    assert!(is_event_stream(&with("text/event-stream; charset=utf-8")));
    assert!(!is_event_stream(&with("application/json")));
    assert!(!is_event_stream(&HeaderMap::new()));
}

#[tokio::test]
async fn a_decorated_stream_is_never_buffered_and_ends_with_its_session() {
    use http_body_util::BodyExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
    let end = Box::pin(async move {
        let _ = end_rx.await;
        SessionEnd::Expired
    });
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, "max-age=600".parse().unwrap());
    let downstream = Body::new(http_body_util::StreamBody::new(tokio_stream_from(rx)));
    let mut body = decorate(&mut headers, downstream, decoration(None, Some(end)));
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache, no-transform");
    assert_eq!(headers["x-accel-buffering"], "no");
    tx.send(Ok(Frame::data(Bytes::from_static(
        b"event: endpoint\ndata: /m\n\n",
    ))))
    .await
    .unwrap();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(
        first.into_data().unwrap(),
        "event: endpoint\ndata: /m\n\n",
        "without a legacy stream, events pass as they are"
    );
    end_tx.send(()).unwrap();
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn the_legacy_endpoint_event_is_rewritten_and_bound_to_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("s.db")).unwrap();
    let bindings = Arc::new(SessionBindings::new(
        crate::store::Records::new(Arc::new(store)),
        "default",
    ));
    let legacy = LegacyStream {
        bindings: bindings.clone(),
        stream_url: "http://downstream.test/mcp/sse?x=1".parse().unwrap(),
        sub: "alice".into(),
        message_path: "/sse/message".into(),
    };
    let downstream = Body::from(
        ": hello\n\nevent: endpoint\ndata: messages?sessionId=abc\n\nevent: message\ndata: {}\n\n",
    );
    let body = decorate(
        &mut HeaderMap::new(),
        downstream,
        decoration(Some(legacy), None),
    );
    let text = String::from_utf8(read_all(body).await).unwrap();
    let rest = text
        .strip_prefix(": hello\n\nevent: endpoint\ndata: /sse/message?sid=")
        .unwrap_or_else(|| panic!("{text}"));
    let (sid, after) = rest.split_once('\n').unwrap();
    assert_eq!(after, "\nevent: message\ndata: {}\n\n");
    assert_eq!(
        bindings.get(LEGACY_KIND, sid).await.unwrap(),
        Some(Binding {
            sub: "alice".into(),
            endpoint: Some("http://downstream.test/mcp/messages?sessionId=abc".into()),
        }),
        "the relative endpoint is resolved against the stream's URL"
    );
}

#[test]
fn event_ends_counts_every_blank_line() {
    assert_eq!(event_ends(b""), 0);
    assert_eq!(event_ends(b"data: x\n"), 0);
    assert_eq!(event_ends(b"data: x\n\n"), 1);
    assert_eq!(event_ends(b"data: x\r\n\r\n"), 1);
    assert_eq!(event_ends(b"\n\ndata: a\n\ndata: b\r\n\r\n"), 3);
    // Overlapping blank lines each count, as a window-by-window count has it.
    assert_eq!(event_ends(b"\n\n\n"), 2);
    assert_eq!(event_ends(b"\r\n\r\n\r\n"), 2);
}

proptest::proptest! {
    /// Found from the line feeds, the count is the one a comparison of
    /// every window gives, for any bytes.
    #[test]
    fn event_ends_agrees_with_comparing_every_window(
        data in proptest::collection::vec(proptest::sample::select(vec![b'\n', b'\r', b'a', b':']), 0..64)
    ) {
        let windows = data.windows(2).filter(|w| w == b"\n\n").count()
            + data.windows(4).filter(|w| w == b"\r\n\r\n").count();
        proptest::prop_assert_eq!(event_ends(&data), windows);
    }
}
