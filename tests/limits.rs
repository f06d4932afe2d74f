//! Connection limits and request framing, probed over raw sockets: what a
//! slow, silent, greedy or ambiguous client gets. DESIGN.md invariant 9
//! (time and connection bounds) and request smuggling.

mod common;

use std::time::{Duration, Instant};

use common::downstream::Downstream;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short limits so each test runs in a few seconds.
const SHORT_LIMITS: &str = r#"
header_timeout = "1s"
idle_timeout = "1s"
body_timeout = "1s"
"#;

struct Setup {
    proxy: TestProxy,
    downstream: Downstream,
}

async fn setup(server_extra: &str) -> Setup {
    let downstream = Downstream::start().await;
    let opts = Options {
        downstream_url: Some(downstream.mcp_url()),
        server_extra: server_extra.to_string(),
        ..Default::default()
    };
    let proxy = TestProxy::start_with_options(&opts).await;
    Setup { proxy, downstream }
}

impl Setup {
    fn addr(&self) -> String {
        self.proxy.url.trim_start_matches("http://").to_string()
    }

    async fn token(&self) -> String {
        let client = self.proxy.public_client().await;
        let tokens = self.proxy.tokens_for(&client, &[]).await;
        tokens["access_token"].as_str().unwrap().to_string()
    }

    /// A normal client's request, on a new connection each time.
    async fn metadata_status(&self) -> u16 {
        fresh_client()
            .get(format!(
                "{}/.well-known/oauth-authorization-server",
                self.proxy.url
            ))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }
}

fn fresh_client() -> reqwest::Client {
    reqwest::ClientBuilder::new()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Reads until the server closes the connection; returns what it sent and
/// when it closed, or None if it was still open after `limit`.
async fn read_until_closed(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> Option<(Vec<u8>, Duration)> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((received, started.elapsed())),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// What the server sent before it closed `stream`, which it must do once
/// a one-second limit (header or idle) has passed, and not before; `held`
/// says what a connection still open after five seconds did wrong.
async fn closed_after_one_second(stream: &mut TcpStream, held: &str) -> Vec<u8> {
    let (received, after) = read_until_closed(stream, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("{held}"));
    assert!(
        after >= Duration::from_millis(800),
        "closed too early: {after:?}"
    );
    received
}

/// A request head without its blank line: complete it with `\r\n`, or
/// leave it half-sent.
const METADATA_HEAD: &[u8] = b"GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: x\r\n";

/// Sends `request` on `stream` and asserts the answer is a 200.
async fn assert_answered_200(stream: &mut TcpStream, request: &[u8]) {
    stream.write_all(request).await.unwrap();
    let mut buf = [0u8; 8192];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        status_of(&buf[..n]).contains("200"),
        "{}",
        status_of(&buf[..n])
    );
}

fn status_of(response: &[u8]) -> String {
    String::from_utf8_lossy(response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

// ------------------------------------------------------------ header reads

#[tokio::test]
async fn invariant_9_half_sent_request_head_is_closed_after_header_timeout() {
    let s = setup(SHORT_LIMITS).await;
    let mut stream = TcpStream::connect(s.addr()).await.unwrap();
    stream
        .write_all(b"GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let _ = closed_after_one_second(
        &mut stream,
        "a half-sent head must not hold the connection open",
    )
    .await;
}

#[tokio::test]
async fn invariant_9_half_sent_later_request_head_is_closed_after_header_timeout() {
    // Only the header timeout can close it within the wait: idle is long.
    let s = setup("header_timeout = \"1s\"\nidle_timeout = \"30s\"\n").await;
    // After a plain request, and after one naming an upgrade the server
    // does not make (answered plainly; the heads after it are still read
    // as heads, and timed).
    let upgrade: &[u8] = b"Connection: upgrade\r\nUpgrade: x\r\n\r\n";
    for first in [&b"\r\n"[..], upgrade] {
        let mut stream = TcpStream::connect(s.addr()).await.unwrap();
        assert_answered_200(&mut stream, &[METADATA_HEAD, first].concat()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.write_all(METADATA_HEAD).await.unwrap();
        let received = closed_after_one_second(
            &mut stream,
            "a half-sent later head must not hold the connection open",
        )
        .await;
        assert!(
            status_of(&received).contains("408"),
            "{}",
            status_of(&received)
        );
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_kept_for_the_idle_timeout_not_the_header_timeout() {
    let s = setup("header_timeout = \"1s\"\nidle_timeout = \"5s\"\n").await;
    let mut stream = TcpStream::connect(s.addr()).await.unwrap();
    let request = [METADATA_HEAD, b"\r\n"].concat();
    assert_answered_200(&mut stream, &request).await;
    // Idle for longer than the header timeout, well within the idle one.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_answered_200(&mut stream, &request).await;
}

#[tokio::test]
async fn invariant_9_silent_connection_is_closed_after_header_timeout() {
    let s = setup(SHORT_LIMITS).await;
    let mut stream = TcpStream::connect(s.addr()).await.unwrap();
    let received = closed_after_one_second(
        &mut stream,
        "a connection that never sends must not stay open",
    )
    .await;
    assert!(received.is_empty() || status_of(&received).contains("408"));
}

#[tokio::test]
async fn invariant_9_stalled_http2_preface_is_closed_after_header_timeout() {
    // Protocol detection reads the first bytes before hyper's own header
    // timer starts; a client that stops half-way through the HTTP/2
    // preface must be bounded too.
    let s = setup(SHORT_LIMITS).await;
    let mut stream = TcpStream::connect(s.addr()).await.unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(
        read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .is_some(),
        "a stalled HTTP/2 preface must not hold the connection open"
    );
}

#[tokio::test]
async fn invariant_9_slowloris_sockets_are_closed_and_normal_clients_served() {
    let s = setup("header_timeout = \"2s\"\n").await;
    const SLOW: usize = 300;
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut stream = TcpStream::connect(s.addr()).await.unwrap();
        stream
            .write_all(b"GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    // Each slow socket keeps sending a header line now and then, as a
    // slowloris does, until the server closes it.
    let trickling = slow.into_iter().map(|mut stream| {
        tokio::spawn(async move {
            let started = Instant::now();
            for i in 0..20 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let line = format!("X-Slow-{i}: 1\r\n");
                if stream.write_all(line.as_bytes()).await.is_err() {
                    return Some(started.elapsed());
                }
                let mut buf = [0u8; 1024];
                match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                    _ => {}
                }
            }
            None
        })
    });
    let trickling: Vec<_> = trickling.collect();
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(
            s.metadata_status().await,
            200,
            "a normal client was not served"
        );
        worst = worst.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        worst < Duration::from_secs(1),
        "normal clients waited {worst:?}"
    );
    for task in trickling {
        let closed_after = task
            .await
            .unwrap()
            .expect("a slow socket stayed open for 10 s");
        assert!(closed_after < Duration::from_secs(5), "{closed_after:?}");
    }
}

// ------------------------------------------------------------ idle connections

#[tokio::test]
async fn invariant_9_idle_http1_keep_alive_connection_is_closed() {
    // The header timer would also close it; make it long so only the idle
    // limit can.
    let s = setup("header_timeout = \"30s\"\nidle_timeout = \"1s\"\n").await;
    let mut stream = TcpStream::connect(s.addr()).await.unwrap();
    stream
        .write_all(b"GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let received =
        closed_after_one_second(&mut stream, "an idle keep-alive connection must be closed").await;
    assert!(
        status_of(&received).contains("200"),
        "{}",
        status_of(&received)
    );
}

#[tokio::test]
async fn invariant_9_idle_http2_connection_is_closed() {
    let s = setup("header_timeout = \"30s\"\nidle_timeout = \"1s\"\n").await;
    let stream = TcpStream::connect(s.addr()).await.unwrap();
    let (mut send, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!(
        "{}/.well-known/oauth-authorization-server",
        s.proxy.url
    ))
    .body(())
    .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("an idle HTTP/2 connection must be closed")
        .unwrap()
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn invariant_9_open_event_stream_outlives_the_idle_and_body_timeouts() {
    let s = setup(SHORT_LIMITS).await;
    let token = s.token().await;
    let mut r = fresh_client()
        .get(format!("{}/mcp", s.proxy.url))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("notifications/hello"));
    // Three times every request timeout, with no event: still open.
    let next = tokio::time::timeout(Duration::from_secs(3), r.chunk()).await;
    assert!(next.is_err(), "the stream ended: {next:?}");
    // Nor was the downstream's stream closed.
    assert_eq!(
        s.downstream
            .state
            .closed_count
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

// ------------------------------------------------------------ connection count

#[tokio::test]
async fn invariant_9_connections_beyond_max_are_refused_and_service_recovers() {
    let s = setup("max_connections = 5\nheader_timeout = \"30s\"\nidle_timeout = \"30s\"\n").await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(s.addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = TcpStream::connect(s.addr()).await.unwrap();
    let (received, _) = read_until_closed(&mut over, Duration::from_secs(2))
        .await
        .expect("a connection over the limit is closed at once");
    assert!(
        status_of(&received).contains("503"),
        "{:?}",
        status_of(&received)
    );
    // The connections within the budget still work.
    held[0]
        .write_all(b"GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (received, _) = read_until_closed(&mut held[0], Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        status_of(&received).contains("200"),
        "{}",
        status_of(&received)
    );
    drop(held);
    // Freed slots are usable again.
    let mut served = false;
    for _ in 0..20 {
        if s.metadata_status().await == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "the proxy did not serve again after the connections closed"
    );
}

#[tokio::test]
async fn invariant_9_admin_listener_is_bounded_and_not_starved_by_the_public_one() {
    let admin_port = free_port();
    let s = setup(&format!(
        "admin_listen = \"127.0.0.1:{admin_port}\"\nmax_connections = 3\nheader_timeout = \"1s\"\n"
    ))
    .await;
    // The public listener is full.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(s.addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = fresh_client()
        .get(format!("http://127.0.0.1:{admin_port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The admin listener has the same header timeout.
    let mut silent = TcpStream::connect(format!("127.0.0.1:{admin_port}"))
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "a silent admin connection must be closed"
    );
    drop(held);
}

// ------------------------------------------------------------ bodies

#[tokio::test]
async fn invariant_9_trickled_request_body_gets_408_at_the_body_timeout() {
    let s = setup(SHORT_LIMITS).await;
    let token = s.token().await;
    let mut stream = TcpStream::connect(s.addr()).await.unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: 400\r\n\r\n{{\"jsonrpc\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // One byte every 300 ms: each chunk arrives well within the limit, the
    // whole body never does.
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(5) {
        let _ = stream.write_all(b" ").await;
        match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                received.extend_from_slice(&buf[..n]);
                if received.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    assert!(
        status_of(&received).contains("408"),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(s.downstream.requests().is_empty());
}

// ------------------------------------------------------------ HTTP/2

#[tokio::test]
async fn invariant_9_http2_streams_and_header_list_are_bounded() {
    let s = setup("max_concurrent_streams = 7\nmax_header_bytes = 8192\n").await;
    let stream = TcpStream::connect(s.addr()).await.unwrap();
    let (send, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    // The server's SETTINGS have arrived once a first answer is back.
    let url = format!("{}/.well-known/oauth-authorization-server", s.proxy.url);
    let (response, _) = send
        .send_request(http::Request::get(&url).body(()).unwrap(), true)
        .unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    assert_eq!(send.current_max_send_streams(), 7);
    // A header list over the limit is not served.
    let mut send = send.ready().await.unwrap();
    let big = http::Request::get(&url)
        .header("x-big", "a".repeat(16 * 1024))
        .body(())
        .unwrap();
    let (response, _) = send.send_request(big, true).unwrap();
    match response.await {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(e.is_reset() || e.is_go_away(), "{e}"),
    }
}

#[tokio::test]
async fn invariant_9_oversized_http1_head_is_refused() {
    let s = setup("max_header_bytes = 8192\nmax_headers = 20\n").await;
    for head in [
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(16 * 1024)
        ),
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
            (0..30)
                .map(|i| format!("X-H{i}: 1\r\n"))
                .collect::<String>()
        ),
    ] {
        let mut stream = TcpStream::connect(s.addr()).await.unwrap();
        let _ = stream.write_all(head.as_bytes()).await;
        let (received, _) = read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            status_of(&received).contains("431"),
            "{}",
            status_of(&received)
        );
    }
}

// ------------------------------------------------------------ framing

/// Every way to frame a request body that another parser could read
/// differently. hyper refuses some itself; they are listed so an upgrade
/// cannot silently start accepting them.
const AMBIGUOUS_FRAMINGS: [(&str, &str); 14] = [
    (
        "TE twice",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    ),
    (
        "TE list chunked, chunked",
        "Transfer-Encoding: chunked, chunked\r\n",
    ),
    ("TE gzip, chunked", "Transfer-Encoding: gzip, chunked\r\n"),
    (
        "TE identity, chunked",
        "Transfer-Encoding: identity, chunked\r\n",
    ),
    ("TE gzip only", "Transfer-Encoding: gzip\r\n"),
    (
        "TE with parameters",
        "Transfer-Encoding: chunked;foo=bar\r\n",
    ),
    (
        "TE and CL",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    ),
    (
        "CL and TE",
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    ),
    (
        "CL twice, same",
        "Content-Length: 5\r\nContent-Length: 5\r\n",
    ),
    (
        "CL twice, different",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
    ),
    ("CL list", "Content-Length: 5, 5\r\n"),
    ("CL signed", "Content-Length: +5\r\n"),
    ("CL not a number", "Content-Length: five\r\n"),
    (
        "CL underscore twin",
        "Content-Length: 5\r\nContent_Length: 50\r\n",
    ),
];

#[tokio::test]
async fn ambiguous_request_framing_is_refused_before_any_handler() {
    let s = setup("").await;
    let token = s.token().await;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let send = |framing: String, payload: String| {
        let addr = s.addr();
        let token = token.clone();
        async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let request = format!(
                "POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{framing}\r\n{payload}"
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let (received, _) = read_until_closed(&mut stream, Duration::from_secs(5))
                .await
                .expect("the connection is closed after a framing error");
            status_of(&received)
        }
    };
    // The well-framed request goes through: the setup is sound.
    let ok = send(
        format!("Content-Length: {}\r\nConnection: close\r\n", body.len()),
        body.to_string(),
    )
    .await;
    assert!(ok.contains("200"), "{ok}");
    assert_eq!(s.downstream.requests().len(), 1);
    let ok = send(
        "Transfer-Encoding: chunked\r\nConnection: close\r\n".into(),
        chunked.clone(),
    )
    .await;
    assert!(ok.contains("200"), "{ok}");
    assert_eq!(s.downstream.requests().len(), 2);
    for (case, framing) in AMBIGUOUS_FRAMINGS {
        let payload = if framing.contains("chunked") {
            chunked.clone()
        } else {
            body.to_string()
        };
        let status = send(framing.to_string(), payload).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{case}: {status}");
    }
    // HTTP/1.0 has no chunked coding at all.
    let mut stream = TcpStream::connect(s.addr()).await.unwrap();
    stream
        .write_all(format!("POST /mcp HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}").as_bytes())
        .await
        .unwrap();
    let (received, _) = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        status_of(&received).contains(" 400"),
        "HTTP/1.0 chunked: {}",
        status_of(&received)
    );
    assert_eq!(
        s.downstream.requests().len(),
        2,
        "an ambiguous request reached the downstream"
    );
}

// ------------------------------------------------------------ answers

#[tokio::test]
async fn invariant_9_a_client_that_reads_none_of_its_answers_is_disconnected() {
    let s = setup("send_timeout = \"1s\"\n").await;
    // A small receive buffer: the proxy's writes wait after fewer answers.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(s.addr().parse().unwrap()).await.unwrap();
    let (mut reading, mut writing) = stream.into_split();
    // Requests pipelined without end; the writer stops only when the
    // connection does (reset, or a broken pipe).
    let head = format!("{}\r\n", String::from_utf8_lossy(METADATA_HEAD));
    let requests = head.repeat(1_000);
    let writer = tokio::spawn(async move {
        loop {
            if let Err(e) = writing.write_all(requests.as_bytes()).await {
                return e;
            }
        }
    });
    // The client takes its first answer, and nothing more.
    let first = common::raw_http::read_answer(&mut reading).await;
    assert!(first.starts_with("HTTP/1.1 200 "), "{first}");
    // Whether the connection ended is seen by the writer, without reading
    // (reading would take answers, and let the proxy write on). However
    // long the buffers take to fill on this machine, the proxy's writes then
    // wait, and a second later it must close; the bound only ends a test
    // whose proxy never does.
    let ended = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the connection of a client that read nothing must be closed")
        .unwrap();
    assert!(
        matches!(
            ended.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{ended}"
    );
    // Others are served meanwhile.
    assert_eq!(s.metadata_status().await, 200);
}

#[tokio::test]
async fn a_refused_request_with_a_large_body_reaches_its_client_whole() {
    let s = setup("").await;
    let token = s.token().await;
    // No token: 401; a token, but a body over the policy's limit: 413.
    // Both are answered before the body is read.
    for (credentials, status) in [
        (String::new(), "401"),
        (format!("authorization: Bearer {token}\r\n"), "413"),
    ] {
        let stream = TcpStream::connect(s.addr()).await.unwrap();
        let (mut reading, mut writing) = stream.into_split();
        let size = 8 << 20;
        let head = format!(
            "POST /mcp HTTP/1.1\r\nhost: x\r\n{credentials}content-type: application/json\r\n\
             accept: application/json, text/event-stream\r\ncontent-length: {size}\r\n\r\n"
        );
        // Like most clients, all of the body is sent before the answer is read.
        let sent = tokio::time::timeout(Duration::from_secs(10), async {
            writing.write_all(head.as_bytes()).await?;
            writing.write_all(&vec![b' '; size]).await
        })
        .await
        .expect("the proxy reads and drops the rest of the body");
        sent.expect("the connection was not reset under the client's body");
        let (received, _) = read_until_closed(&mut reading, Duration::from_secs(5))
            .await
            .expect("the connection closes after the answer");
        assert!(
            status_of(&received).contains(status),
            "{}",
            status_of(&received)
        );
    }
}
