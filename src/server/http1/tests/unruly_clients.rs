//! What a client that does not play along gets: one that reads nothing of
//! its answer (`server.send_timeout`), one still sending when its
//! connection closes (lingering close).

use super::*;

#[tokio::test]
async fn a_client_that_takes_nothing_of_its_answer_fails_the_write_after_the_send_timeout() {
    let (client, stream) = socket_pair().await;
    let wire = Wire::new(stream, BytesMut::new(), SEND_TIMEOUT);
    // More than both sockets' buffers hold on loopback, so the write waits.
    let big = Bytes::from(vec![b'x'; 64 << 20]);
    let started = Instant::now();
    let written = tokio::time::timeout(
        Duration::from_secs(10),
        write_answer(
            &wire,
            Response::new(Full::new(big)),
            Version::HTTP_11,
            &Method::GET,
            true,
        ),
    )
    .await
    .expect("a write to a client that reads nothing must end");
    assert_eq!(written.unwrap_err().kind(), io::ErrorKind::TimedOut);
    assert!(started.elapsed() >= SEND_TIMEOUT, "{:?}", started.elapsed());
    drop(client);
}

#[tokio::test]
async fn a_client_that_reads_slowly_but_steadily_gets_its_whole_answer() {
    let (mut client, stream) = socket_pair().await;
    let wire = Wire::new(stream, BytesMut::new(), SEND_TIMEOUT);
    let size = 16 << 20;
    let reader = tokio::spawn(async move {
        // Pauses shorter than the send timeout between reads, longer in all.
        let mut got = 0;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            tokio::time::sleep(SEND_TIMEOUT / 3).await;
            match client.read(&mut buf).await.unwrap() {
                0 => return got,
                n => got += n,
            }
        }
    });
    let started = Instant::now();
    let keep = write_answer(
        &wire,
        Response::new(Full::new(Bytes::from(vec![b'x'; size]))),
        Version::HTTP_11,
        &Method::GET,
        true,
    )
    .await
    .unwrap();
    assert!(keep);
    assert!(started.elapsed() > SEND_TIMEOUT, "the write never waited");
    drop(wire);
    assert!(reader.await.unwrap() > size);
}

/// Serves a connection whose service answers 401 without reading the body.
async fn served_refusing_unread() -> (TcpStream, tokio::task::JoinHandle<()>) {
    let (client, stream) = socket_pair().await;
    let wire = Arc::new(Wire::new(stream, BytesMut::new(), SEND_TIMEOUT));
    let service = tower::service_fn(|_request: Request<RequestBody>| async {
        let mut answer = Response::new(Full::new(Bytes::from_static(b"sign in again")));
        *answer.status_mut() = StatusCode::UNAUTHORIZED;
        Ok::<_, Infallible>(answer)
    });
    let served = spawn_served(wire, service);
    (client, served)
}

#[tokio::test]
async fn a_body_left_unread_does_not_cost_the_client_its_answer() {
    let (client, served) = served_refusing_unread().await;
    let (mut reading, mut writing) = client.into_split();
    // A client that sends its whole body before it reads, as most do.
    let size = 8 << 20;
    let sender = tokio::spawn(async move {
        let head = format!("POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n");
        writing.write_all(head.as_bytes()).await?;
        writing.write_all(&vec![b'{'; size]).await?;
        Ok::<_, io::Error>(writing)
    });
    let sent = tokio::time::timeout(Duration::from_secs(5), sender)
        .await
        .expect("the body was read and dropped, not left to block the client")
        .unwrap();
    let _writing = sent.expect("the connection was not reset under the client's body");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), reading.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    assert!(answer.ends_with("sign in again"), "{answer}");
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("the connection closes once the client does")
        .unwrap();
}

#[tokio::test]
async fn a_client_that_keeps_sending_after_its_answer_is_closed_on_after_a_while() {
    let (mut client, served) = served_refusing_unread().await;
    let head = "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000000\r\n\r\n";
    client.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // Bytes without end, never a close: the server stops listening.
    let flood = tokio::spawn(async move {
        let chunk = vec![b'{'; 64 << 10];
        while client.write_all(&chunk).await.is_ok() {}
    });
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("lingering is bounded")
        .unwrap();
    assert!(started.elapsed() >= LINGER, "{:?}", started.elapsed());
    flood.abort();
}

#[tokio::test]
async fn a_body_kept_past_its_answer_keeps_its_bytes_when_the_connection_closes() {
    let (mut client, stream) = socket_pair().await;
    let wire = Arc::new(Wire::new(stream, BytesMut::new(), SEND_TIMEOUT));
    let (kept_tx, kept_rx) = tokio::sync::oneshot::channel();
    let kept_tx = Arc::new(Mutex::new(Some(kept_tx)));
    // Answers at once and reads the body later, as a layer that hands it
    // to a task of its own would.
    let service = tower::service_fn(move |request: Request<RequestBody>| {
        let kept_tx = kept_tx.clone();
        async move {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let body = request.into_body().collect().await.map(|b| b.to_bytes());
                if let Some(tx) = kept_tx.lock().unwrap().take() {
                    let _ = tx.send(body.map_err(|e| e.to_string()));
                }
            });
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"early"))))
        }
    });
    spawn_served(wire, service);
    client
        .write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n")
        .await
        .unwrap();
    assert!(read_some(&mut client).await.ends_with("early"));
    client.write_all(b"0123456789").await.unwrap();
    let kept = tokio::time::timeout(Duration::from_secs(5), kept_rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.unwrap(), Bytes::from_static(b"0123456789"));
}
