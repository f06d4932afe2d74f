//! Keep-alive after an answer, over raw sockets: a connection is reused
//! only when the proxy will read the next request on it. An answer to a
//! request whose body was left unread (refused before anything read it)
//! says `Connection: close`, so a client never sends its next request on a
//! connection the server is closing.

mod common;

use std::time::Duration;

use common::downstream::Downstream;
use common::raw_http::read_answer;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

struct Setup {
    proxy: TestProxy,
    _downstream: Downstream,
}

async fn setup() -> Setup {
    let downstream = Downstream::start().await;
    let opts = Options {
        downstream_url: Some(downstream.mcp_url()),
        ..Default::default()
    };
    let proxy = TestProxy::start_with_options(&opts).await;
    Setup {
        proxy,
        _downstream: downstream,
    }
}

impl Setup {
    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.proxy.url.trim_start_matches("http://"))
            .await
            .unwrap()
    }

    async fn token(&self) -> String {
        let client = self.proxy.public_client().await;
        let tokens = self.proxy.tokens_for(&client, &[]).await;
        tokens["access_token"].as_str().unwrap().to_string()
    }
}

fn post_head(authorization: Option<&str>) -> String {
    let authorization = authorization
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /mcp HTTP/1.1\r\nHost: x\r\n{authorization}Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
        BODY.len()
    )
}

fn says_close(answer: &str) -> bool {
    answer
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .lines()
        .any(|line| line.eq_ignore_ascii_case("connection: close"))
}

/// Whether the server closed `stream` (within 5 s).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn an_answer_to_a_request_whose_body_was_left_unread_closes_the_connection() {
    let s = setup().await;
    // The body has not arrived when the refusal is written: hyper cannot
    // finish it, and closes the connection after the answer.
    let mut stream = s.connect().await;
    stream.write_all(post_head(None).as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(says_close(&answer), "{answer}");
    assert!(closed(&mut stream).await, "the connection stays open");
    // The body arrives with the head: refused unread all the same.
    let mut stream = s.connect().await;
    stream
        .write_all(format!("{}{BODY}", post_head(None)).as_bytes())
        .await
        .unwrap();
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(says_close(&answer), "{answer}");
}

#[tokio::test]
async fn a_connection_whose_requests_were_read_whole_stays_open() {
    let s = setup().await;
    let token = s.token().await;
    let mut stream = s.connect().await;
    for round in 0..3 {
        // Forwarded: the body was read and sent on.
        stream
            .write_all(format!("{}{BODY}", post_head(Some(&token))).as_bytes())
            .await
            .unwrap();
        let answer = read_answer(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{round}: {answer}");
        assert!(!says_close(&answer), "{round}: {answer}");
        // A GET without a body, refused: nothing to leave unread either.
        stream
            .write_all(b"GET /mcp HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answer(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{round}: {answer}");
        assert!(!says_close(&answer), "{round}: {answer}");
    }
}
