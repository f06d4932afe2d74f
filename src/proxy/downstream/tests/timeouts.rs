//! Time on the downstream's connections: how long one waits in the pool,
//! and the request's deadline, moved to each request's own, covering the
//! connect, and never a timer of a runtime that ended.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::{client, get, ok_json, server, text, Seen, WAIT};
use crate::proxy::downstream::{DownstreamClient, DownstreamError};

/// A downstream that answers its `n`th request (from 0) after `delay(n)`.
async fn slow_server(delay: fn(usize) -> Duration) -> (String, Seen) {
    let answered = Arc::new(AtomicUsize::new(0));
    server(move |stream: TcpStream, head: String| {
        let n = answered.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay(n)).await;
            ok_json(stream, head).await
        }
    })
    .await
}

#[tokio::test]
async fn a_reused_connection_waits_for_each_requests_own_deadline() {
    // The connection's timer is moved to each request's deadline: a
    // deadline of an earlier request, passed while the connection was
    // idle, does not cut the next one short, and the next one's own does.
    let (base, seen) = slow_server(|n| match n {
        1 => Duration::from_millis(150),
        2 => Duration::from_secs(3),
        _ => Duration::ZERO,
    })
    .await;
    let client = client();
    let url = format!("{base}/mcp");
    let response = client.request(get(&url), Duration::from_millis(100)).await;
    assert_eq!(text(response.unwrap()).await, "{}");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let response = client.request(get(&url), Duration::from_secs(2)).await;
    assert_eq!(
        text(response.unwrap()).await,
        "{}",
        "the first deadline passed before"
    );

    let started = std::time::Instant::now();
    let timed_out = client.request(get(&url), Duration::from_millis(300)).await;
    assert!(
        matches!(timed_out, Err(DownstreamError::TimedOut)),
        "{timed_out:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);

    // The connection whose answer never came is not used again.
    let response = client.request(get(&url), WAIT).await;
    assert_eq!(text(response.unwrap()).await, "{}");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

/// A downstream that never completes a handshake, as one behind a
/// dropping firewall: a listener whose backlog is full, held open with the
/// connections that filled it.
struct Unanswering {
    url: String,
    _listener: tokio::net::TcpListener,
    _fillers: Vec<TcpStream>,
}

async fn unanswering() -> Unanswering {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(filler)) = tokio::time::timeout(
            Duration::from_millis(100),
            TcpStream::connect(listener.local_addr().unwrap()),
        )
        .await
        {
            fillers.push(filler);
        }
    }
    Unanswering {
        url,
        _listener: listener,
        _fillers: fillers,
    }
}

#[tokio::test]
async fn the_deadline_covers_opening_the_connection() {
    // The connect timeout is 2 s, the request's deadline comes first.
    let downstream = unanswering().await;
    let url = &downstream.url;
    let started = std::time::Instant::now();
    let failed = client().request(get(url), Duration::from_millis(300)).await;
    let waited = started.elapsed();
    // (A kernel that completed the handshake anyway would leave the request
    // waiting for an answer that never comes: timed out the same way.)
    assert!(
        matches!(failed, Err(DownstreamError::TimedOut)),
        "{failed:?} after {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}

#[tokio::test]
async fn a_connect_timeout_before_the_deadline_is_a_connect_error() {
    // The connect timeout (300 ms) comes before the request's deadline
    // (5 s): the connection failed, the request did not time out.
    let downstream = unanswering().await;
    let url = &downstream.url;
    let started = std::time::Instant::now();
    let failed = DownstreamClient::new(Duration::from_millis(300))
        .request(get(url), Duration::from_secs(5))
        .await;
    let waited = started.elapsed();
    let Err(DownstreamError::Connect { source, .. }) = &failed else {
        panic!("{failed:?} after {waited:?}");
    };
    let cause = std::error::Error::source(source.as_ref()).map(ToString::to_string);
    assert_eq!(cause.as_deref(), Some("connect timeout"), "{source:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}

#[test]
fn a_connection_of_an_earlier_runtime_is_not_used_on_the_next() {
    // A thread that runs one runtime after another keeps its pool; the
    // connections opened on the first are registered with its reactor and
    // timer, gone with it, and must not serve the second, nor panic in it
    // (tokio's timer panics when polled after its runtime ended).
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let downstream = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let (base, seen) = server(ok_json).await;
            url_tx.send(format!("{base}/mcp")).unwrap();
            let _ = stop_rx.await;
            seen.connections.load(Ordering::SeqCst)
        })
    });
    let url = url_rx.recv().unwrap();
    let client = client();
    for _ in 0..2 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answer = runtime.block_on(async {
            let response = client.request(get(&url), WAIT).await.unwrap();
            text(response).await
        });
        assert_eq!(answer, "{}");
    }
    stop_tx.send(()).unwrap();
    assert_eq!(downstream.join().unwrap(), 2, "one connection per runtime");
}

#[tokio::test]
async fn a_connection_idle_past_the_pools_timeout_is_closed_not_reused() {
    let (base, seen) = server(ok_json).await;
    let idle_timeout = Duration::from_millis(300);
    let client = client().with_pool_idle_timeout(idle_timeout);
    let url = format!("{base}/mcp");
    let ok = || async { text(client.request(get(&url), WAIT).await.unwrap()).await };
    assert_eq!(ok().await, "{}");
    assert_eq!(ok().await, "{}");
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        1,
        "reused within the timeout"
    );
    // Idle past the timeout (before the downstream's own keep-alive timeout
    // closes it under a request): a new connection.
    tokio::time::sleep(idle_timeout + Duration::from_millis(100)).await;
    assert_eq!(ok().await, "{}");
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        2,
        "a new connection"
    );
}

#[test]
fn the_pool_lets_go_before_mcp_servers_close_idle_connections() {
    // Node's http server and uvicorn close idle connections after 5 s.
    let default = crate::config::DownstreamConfig::default()
        .pool_idle_timeout
        .0;
    assert_eq!(default, crate::proxy::downstream::POOL_IDLE_TIMEOUT);
    assert!(default < Duration::from_secs(5), "{default:?}");
}
