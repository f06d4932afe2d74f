//! The downstream client against a raw TCP server that records what it
//! reads and answers exactly as each test scripts it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{DownstreamClient, DownstreamError};

/// What the test server saw.
struct Seen {
    connections: Arc<AtomicUsize>,
    heads: mpsc::UnboundedReceiver<String>,
}

/// A server that reads each request head and answers it with `answer`,
/// keeping the connection open unless the answer says `close`.
async fn server<F, Fut>(answer: F) -> (String, Seen)
where
    F: Fn(TcpStream, String) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Option<TcpStream>> + Send,
{
    server_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), answer)
}

/// `server`, on a listener of the test's own.
fn server_on<F, Fut>(listener: TcpListener, answer: F) -> (String, Seen)
where
    F: Fn(TcpStream, String) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Option<TcpStream>> + Send,
{
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let (heads_tx, heads) = mpsc::unbounded_channel();
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            let heads_tx = heads_tx.clone();
            tokio::spawn(async move {
                let mut stream = stream;
                loop {
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    let _ = heads_tx.send(head.clone());
                    match answer(stream, head).await {
                        Some(kept) => stream = kept,
                        None => return,
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), Seen { connections, heads })
}

async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).ok()
}

async fn ok_json(mut stream: TcpStream, _head: String) -> Option<TcpStream> {
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        )
        .await
        .ok()?;
    Some(stream)
}

fn get(url: &str) -> Request<Body> {
    Request::builder()
        .method(Method::GET)
        .uri(url)
        .header("x-user", "alice")
        .body(Body::empty())
        .unwrap()
}

/// The integration tests' port picker: a port bound and let go from the
/// kernel's range for port 0 may be another test's socket by the time it
/// is asked, and the connection is then not refused.
// Written for the integration tests, whose crates reach it as `pub`.
#[allow(unreachable_pub)]
#[path = "../../../tests/common/ports.rs"]
mod ports;

/// How long the tests' requests wait for an answer at most.
const WAIT: Duration = Duration::from_secs(5);

/// A client as a route makes one (2 s to connect).
fn client() -> DownstreamClient {
    DownstreamClient::new(Duration::from_secs(2))
}

/// How a GET of `url` by a new client fails.
async fn failure_of(url: &str) -> DownstreamError {
    client().request(get(url), WAIT).await.unwrap_err()
}

async fn text(response: axum::http::Response<super::DrivenBody>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn a_connection_read_to_its_end_serves_the_next_request() {
    let (base, mut seen) = server(ok_json).await;
    let client = client();
    for _ in 0..5 {
        let response = client
            .request(get(&format!("{base}/mcp")), WAIT)
            .await
            .unwrap();
        assert_eq!(text(response).await, "{}");
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    let head = seen.heads.recv().await.unwrap();
    // Origin form, the downstream's own Host, the caller's headers.
    assert!(head.starts_with("GET /mcp HTTP/1.1\r\n"), "{head}");
    let host = base.trim_start_matches("http://");
    assert!(head.contains(&format!("host: {host}\r\n")), "{head}");
    assert!(head.contains("x-user: alice\r\n"), "{head}");
}

/// The head the downstream saw for one GET of `url` by a new client.
async fn head_sent(url: &str, seen: &mut Seen) -> String {
    let client = client();
    let response = client.request(get(url), WAIT).await.unwrap();
    text(response).await;
    seen.heads.recv().await.unwrap()
}

#[tokio::test]
async fn a_connection_waiting_in_the_pool_holds_no_read_buffer() {
    let (base, _seen) = server(ok_json).await;
    let client = client();
    let request = get(&format!("{base}/mcp"));
    let key = client.key(request.uri()).unwrap();
    let response = client.request(request, WAIT).await.unwrap();
    assert_eq!(text(response).await, "{}");
    let mut pooled = super::checkout(&key, super::POOL_IDLE_TIMEOUT)
        .expect("the connection is back in the pool");
    assert_eq!(pooled.conn.buffer_capacity(), 0);
    assert!(pooled
        .conn
        .is_reusable(&mut std::task::Context::from_waker(std::task::Waker::noop())));
}

#[tokio::test]
async fn the_query_string_reaches_the_downstream() {
    let (base, mut seen) = server(ok_json).await;
    let head = head_sent(&format!("{base}/mcp?mode=idle&x=1"), &mut seen).await;
    assert!(
        head.starts_with("GET /mcp?mode=idle&x=1 HTTP/1.1\r\n"),
        "{head}"
    );
}

#[tokio::test]
async fn an_answer_left_unread_closes_its_connection() {
    let (base, seen) = server(ok_json).await;
    let client = client();
    let url = format!("{base}/mcp");
    // The head arrived, the body was never asked for: the connection is in
    // an unknown state and must not carry another request.
    let response = client.request(get(&url), WAIT).await.unwrap();
    drop(response);
    let response = client.request(get(&url), WAIT).await.unwrap();
    assert_eq!(text(response).await, "{}");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_downstream_closed_while_idle_is_replaced() {
    // Every answer closes the connection after it, as a server whose
    // keep-alive timeout passed does.
    let (base, seen) = server(|mut stream: TcpStream, _head: String| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        None
    })
    .await;
    let client = client();
    let url = format!("{base}/mcp");
    for _ in 0..3 {
        let response = client.request(get(&url), WAIT).await.unwrap();
        assert_eq!(text(response).await, "{}");
        // Give the close time to arrive before the next checkout.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn what_the_downstream_already_sent_reaches_the_client_in_one_frame() {
    // Ten events, each written (and flushed) as its own chunk, all sent
    // before the client reads the body.
    let (base, _seen) = server(|mut stream: TcpStream, _head: String| async move {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).await.ok()?;
        for i in 0..10 {
            let event = format!("data: {i}\n\n");
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            stream.write_all(chunk.as_bytes()).await.ok()?;
            stream.flush().await.ok()?;
        }
        stream.write_all(b"0\r\n\r\n").await.ok()?;
        Some(stream)
    })
    .await;
    let client = client();
    let response = client
        .request(get(&format!("{base}/mcp")), WAIT)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut body = response.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames.push(data);
        }
    }
    let all: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
    let expected: String = (0..10).map(|i| format!("data: {i}\n\n")).collect();
    assert_eq!(String::from_utf8(all).unwrap(), expected);
    assert_eq!(frames.len(), 1, "one frame for what was there: {frames:?}");
}

#[tokio::test]
async fn an_event_is_handed_on_as_soon_as_it_arrives() {
    // The second event is written only after the client got the first:
    // gathering never waits for more.
    let (release_tx, release_rx) = mpsc::unbounded_channel::<()>();
    let release_rx = Arc::new(tokio::sync::Mutex::new(release_rx));
    let (base, _seen) = server(move |mut stream: TcpStream, _head: String| {
        let release_rx = release_rx.clone();
        async move {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            stream.write_all(head.as_bytes()).await.ok()?;
            for event in ["data: one\n\n", "data: two\n\n"] {
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                stream.write_all(chunk.as_bytes()).await.ok()?;
                release_rx.lock().await.recv().await?;
            }
            stream.write_all(b"0\r\n\r\n").await.ok()?;
            Some(stream)
        }
    })
    .await;
    let client = client();
    let response = client
        .request(get(&format!("{base}/mcp")), WAIT)
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(2), body.frame())
        .await
        .expect("the first event arrives without the second");
    assert_eq!(
        first.unwrap().unwrap().into_data().unwrap(),
        "data: one\n\n"
    );
    release_tx.send(()).unwrap();
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(second, "data: two\n\n");
    release_tx.send(()).unwrap();
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn a_post_body_is_sent_whole() {
    let (base, mut seen) = server(|mut stream: TcpStream, head: String| async move {
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.ok()?;
        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
        stream.write_all(answer.as_bytes()).await.ok()?;
        stream.write_all(&body).await.ok()?;
        Some(stream)
    })
    .await;
    let client = client();
    let payload = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{base}/mcp"))
        .header("content-length", payload.len())
        .body(Body::from(payload))
        .unwrap();
    let response = client.request(request, WAIT).await.unwrap();
    assert_eq!(text(response).await, payload);
    assert!(seen
        .heads
        .recv()
        .await
        .unwrap()
        .starts_with("POST /mcp HTTP/1.1"));
}

#[tokio::test]
async fn an_unreachable_downstream_is_a_connect_error() {
    let port = ports::free_port();
    let failed = failure_of(&format!("http://127.0.0.1:{port}/mcp")).await;
    assert!(
        matches!(failed, DownstreamError::Connect { .. }),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_refused_connection_reads_as_the_connectors_error_for_addresses_and_names() {
    let port = ports::free_port();
    // By address the client connects itself; by name, through the connector.
    for host in ["127.0.0.1", "localhost"] {
        let failed = failure_of(&format!("http://{host}:{port}/mcp")).await;
        let chain = crate::error::error_chain(&failed);
        assert!(
            chain.starts_with(&format!(
                "cannot connect to {host}:{port}: tcp connect error: "
            )),
            "{chain}"
        );
    }
}

#[tokio::test]
async fn an_ipv6_downstream_is_reached_by_its_bracketed_address() {
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        return; // No IPv6 loopback on this machine.
    };
    // `http://[::1]:<port>`: the address as a URL writes it.
    let (base, _seen) = server_on(listener, ok_json);
    assert!(base.starts_with("http://[::1]:"), "{base}");
    let response = client()
        .request(get(&format!("{base}/mcp")), WAIT)
        .await
        .unwrap();
    assert_eq!(text(response).await, "{}");
}

#[test]
fn only_plain_http_to_an_ip_address_skips_the_connector() {
    let client = client();
    let address = |url: &str| {
        client
            .key(&url.parse().unwrap())
            .unwrap()
            .plain_ip_address()
            .map(|a| a.to_string())
    };
    assert_eq!(
        address("http://127.0.0.1:8080/mcp").as_deref(),
        Some("127.0.0.1:8080")
    );
    assert_eq!(
        address("http://10.0.0.7/mcp").as_deref(),
        Some("10.0.0.7:80")
    );
    assert_eq!(
        address("http://[::1]:3000/mcp").as_deref(),
        Some("[::1]:3000")
    );
    assert_eq!(address("http://localhost:8080/mcp"), None);
    assert_eq!(address("https://127.0.0.1:8443/mcp"), None);
}

#[tokio::test]
async fn a_relative_target_is_refused() {
    let failed = failure_of("/mcp").await;
    assert!(
        matches!(failed, DownstreamError::NotAbsolute(_)),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_body_dropped_once_it_says_it_ended_keeps_its_connection() {
    // hyper's server reads a frame, sees `is_end_stream`, and drops the
    // body without asking for the end.
    let (base, seen) = server(ok_json).await;
    let client = client();
    let url = format!("{base}/mcp");
    for _ in 0..3 {
        let mut body = client.request(get(&url), WAIT).await.unwrap().into_body();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "{}");
        assert!(http_body::Body::is_end_stream(&body));
        drop(body);
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_request_on_a_connection_the_downstream_closed_comes_back_unsent() {
    // The downstream closes the connection before the request is written:
    // writing would succeed and the request be lost; it must come back (to
    // go on another connection), not wait for the response timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let client = client();
    let request = get(&url);
    let key = client.key(request.uri()).unwrap();
    let mut pooled = client
        .connect(&key, tokio::time::Instant::now() + WAIT)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sent = tokio::time::timeout(
        Duration::from_secs(2),
        pooled.conn.send(prepared(request, &key)),
    )
    .await
    .expect("sending ends at once on a closed connection");
    assert!(matches!(sent, Err(Ok(_))), "the request comes back unsent");
}

#[tokio::test]
async fn the_host_header_is_the_downstreams_host_and_port() {
    let (base, mut seen) = server(ok_json).await;
    // User information in a URL (a legacy endpoint announced by the
    // downstream could carry it) never reaches the Host header.
    let with_user = base.replace("http://", "http://user:secret@");
    let head = head_sent(&format!("{with_user}/mcp"), &mut seen).await;
    let host = base.trim_start_matches("http://");
    assert!(head.contains(&format!("host: {host}\r\n")), "{head}");
    assert!(!head.contains("secret"), "{head}");
}

#[test]
fn host_is_the_host_alone_on_the_schemes_default_port() {
    let client = client();
    for (url, host) in [
        ("https://mcp.internal:443/mcp", "mcp.internal"),
        ("http://user:pw@mcp.internal:80/mcp", "mcp.internal"),
        (
            "https://user:pw@mcp.internal:8443/mcp?x=1",
            "mcp.internal:8443",
        ),
        ("http://mcp.internal/mcp", "mcp.internal"),
    ] {
        let mut request = get(url);
        // The client's own Host never reaches the downstream.
        request
            .headers_mut()
            .insert(header::HOST, "proxy.example".parse().unwrap());
        let key = client.key(request.uri()).unwrap();
        assert_eq!(key.host_header(), host, "{url}");
        let head = String::from_utf8(prepared(request, &key).head().to_vec()).unwrap();
        let target = url.rfind("/mcp").map(|at| &url[at..]).unwrap();
        assert!(
            head.starts_with(&format!("GET {target} HTTP/1.1\r\nhost: {host}\r\n")),
            "{url}: {head}"
        );
        assert_eq!(head.matches("host: ").count(), 1, "{head}");
    }
}

/// What `DownstreamClient::request` prepares for `request` on `key`'s pool.
fn prepared(request: Request<Body>, key: &super::PoolKey) -> super::Prepared {
    super::Prepared::new(request.into(), key.host_header()).unwrap()
}

/// A body whose size hint promises `claimed` bytes more than the first
/// frame, whatever its frames hold.
struct Lying {
    frames: std::collections::VecDeque<bytes::Bytes>,
    claimed: u64,
}

impl http_body::Body for Lying {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(
            self.frames
                .pop_front()
                .map(|d| Ok(http_body::Frame::data(d))),
        )
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.claimed)
    }
}

#[tokio::test]
async fn a_body_longer_or_shorter_than_announced_is_never_sent_whole() {
    for (frames, claimed) in [(vec!["ab", "cdef"], 2), (vec!["ab", "c"], 4)] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let received = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut all = Vec::new();
            let _ = stream.read_to_end(&mut all).await;
            String::from_utf8(all).unwrap()
        });
        let client = client();
        let body = Lying {
            frames: frames.iter().map(|f| bytes::Bytes::from(*f)).collect(),
            claimed,
        };
        let request = Request::post(&url).body(Body::new(body)).unwrap();
        let key = client.key(request.uri()).unwrap();
        let mut pooled = client
            .connect(&key, tokio::time::Instant::now() + WAIT)
            .await
            .unwrap();
        let sent = pooled.conn.send(prepared(request, &key)).await;
        assert!(
            matches!(sent, Err(Err(super::ExchangeError::BodyLength))),
            "{frames:?}"
        );
        drop(pooled);
        let received = received.await.unwrap();
        let (head, body) = received.split_once("\r\n\r\n").unwrap();
        let announced = 2 + claimed;
        let announced_line = format!("\r\ncontent-length: {announced}");
        assert!(
            format!("{head}\r\n").contains(&format!("{announced_line}\r\n")),
            "{head}"
        );
        assert!(body.len() as u64 <= announced, "{received:?}");
    }
}

#[tokio::test]
async fn invariant_9_the_downstreams_answer_head_is_bounded() {
    // A head that never ends: the read stops at the limit, not at memory's.
    let (base, _seen) = server(|mut stream: TcpStream, _head: String| async move {
        stream.write_all(b"HTTP/1.1 200 OK\r\nx-pad: ").await.ok()?;
        let pad = vec![b'a'; 64 * 1024];
        for _ in 0..16 {
            stream.write_all(&pad).await.ok()?;
        }
        Some(stream)
    })
    .await;
    let failed = failure_of(&format!("{base}/mcp")).await;
    assert!(
        matches!(
            failed,
            DownstreamError::Request(super::ExchangeError::HeadTooLarge)
        ),
        "{failed:?}"
    );
}

mod timeouts;
