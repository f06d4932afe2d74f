use super::*;
use std::sync::Mutex;

use bytes::BytesMut;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 8192,
    max_fields: 100,
};

/// One request as the test service saw it: its path, its body (or the
/// body's error), and whether its raw head's framing was accepted.
type SeenRequest = (String, Result<String, String>, bool);

/// What the test service saw, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<SeenRequest>>>);

/// A connection served by `serve` with a service that reads each body
/// whole and answers with its length; the client's socket, what the
/// service saw, the wire and the raw heads.
async fn served() -> (TcpStream, Seen, Arc<Wire>, Arc<RawHeads>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let wire = Arc::new(Wire::new(stream, BytesMut::new()));
    let heads = Arc::new(RawHeads::default());
    let seen = Seen::default();
    let (record, heads_for_service) = (seen.clone(), heads.clone());
    let service = tower::service_fn(move |request: Request<RequestBody>| {
        let (record, heads) = (record.clone(), heads_for_service.clone());
        async move {
            let path = request.uri().path().to_owned();
            let verdict = heads.next_verdict().is_ok();
            let body = match request.into_body().collect().await {
                Ok(body) => Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned()),
                Err(e) => Err(e.to_string()),
            };
            let answer = format!("{}", body.as_ref().map_or(0, String::len));
            record.0.lock().unwrap().push((path, body, verdict));
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
        }
    });
    let (wire_for_serve, heads_for_serve) = (wire.clone(), heads.clone());
    tokio::spawn(async move {
        let (_closing_tx, closing) = watch::channel(false);
        let never = pin!(std::future::pending::<()>());
        serve(
            wire_for_serve,
            service,
            LIMITS,
            &heads_for_serve,
            never,
            &closing,
        )
        .await;
    });
    (client, seen, wire, heads)
}

/// Everything the server sends until it closes the connection.
async fn read_to_close(client: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

const PIPELINE: &[u8] =
    b"\r\nPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 25\r\n\r\nContent-Length: 5\r\n\r\nabcd\
POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
4;ext=1\r\nwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
3\r\nabc\r\n0\r\n\r\n\
GET /d HTTP/1.1\r\nHost: x\r\n\r\n";

use std::time::Duration;

#[tokio::test]
async fn pipelined_requests_are_read_through_their_bodies_and_an_ambiguous_head_ends_the_connection(
) {
    for step in [1, 7, PIPELINE.len()] {
        let (mut client, seen, _, _) = served().await;
        for piece in PIPELINE.chunks(step) {
            client.write_all(piece).await.unwrap();
        }
        let answers = read_to_close(&mut client).await;
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                (
                    "/a".into(),
                    Ok("Content-Length: 5\r\n\r\nabcd".into()),
                    true
                ),
                ("/b".into(), Ok("wxyz".into()), true),
                // Content-Length with Transfer-Encoding: refused by the
                // stack, the body never read, and /d never served.
                ("/c".into(), Ok(String::new()), false),
            ],
            "step {step}"
        );
        assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 3, "{answers}");
        assert!(answers.ends_with("\r\n\r\n0"), "{answers}");
    }
}

#[test]
fn repeated_equal_lengths_are_judged_raw() {
    let mut buf = BytesMut::from(
        &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na"[..],
    );
    let head = take_head(&mut buf, 8192, 100, &mut Vec::new())
        .unwrap()
        .unwrap();
    assert!(head.framing.is_err());
    // The parsed request keeps both, as they came.
    assert_eq!(
        head.request
            .headers()
            .get_all("content-length")
            .iter()
            .count(),
        2
    );
}

#[test]
fn heads_with_more_fields_than_the_stack_holds_are_still_judged() {
    let mut head = b"POST / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..(head::FEW_HEADERS + 10) {
        head.extend_from_slice(format!("X-F{i}: v\r\n").as_bytes());
    }
    head.extend_from_slice(b"Content-Length: 1\r\nContent-Length: 1\r\n\r\na");
    let parsed = take_head(&mut BytesMut::from(&head[..]), 8192, 100, &mut Vec::new())
        .unwrap()
        .unwrap();
    assert!(parsed.framing.is_err());
    let refused = take_head(&mut BytesMut::from(&head[..]), 8192, 20, &mut Vec::new());
    assert_eq!(refused.err(), Some(HeadError::TooManyFields));
}

#[test]
fn a_head_is_the_same_however_its_bytes_arrive() {
    let whole = b"GET /x?y=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc\r\n\r\n";
    for step in 1..whole.len() {
        let mut buf = BytesMut::new();
        let mut found = None;
        for piece in whole.chunks(step) {
            buf.extend_from_slice(piece);
            if let Some(head) = take_head(&mut buf, 8192, 100, &mut Vec::new()).unwrap() {
                found = Some(head);
            }
        }
        let head = found.expect("a complete head");
        assert_eq!(head.request.uri(), "/x?y=1", "step {step}");
        assert_eq!(head.request.headers()["authorization"], "Bearer abc");
        assert!(buf.is_empty());
    }
}

#[test]
fn heads_that_are_not_http_are_refused() {
    for bad in [
        &b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"[..],
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
    ] {
        let refused = take_head(&mut BytesMut::from(bad), 8192, 100, &mut Vec::new());
        assert_eq!(refused.err(), Some(HeadError::Malformed), "{bad:?}");
    }
    let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
    let refused = take_head(
        &mut BytesMut::from(long.as_bytes()),
        8192,
        100,
        &mut Vec::new(),
    );
    assert_eq!(refused.err(), Some(HeadError::TooLarge));
}

#[tokio::test]
async fn a_head_left_half_way_is_reported_and_cleared_when_it_ends() {
    let (mut client, seen, _, heads) = served().await;
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(heads.progress(), HeadProgress::Since(_)));
    client.write_all(b"Host: x\r\n\r\n").await.unwrap();
    let mut answer = [0u8; 256];
    let n = client.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK"));
    assert_eq!(heads.progress(), HeadProgress::Between);
    assert_eq!(seen.0.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_idle_connection_holds_no_read_buffer() {
    let (mut client, _, wire, _) = served().await;
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .unwrap();
    let mut answer = [0u8; 256];
    let n = client.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(wire.read_side().buf.capacity(), 0);
}

#[tokio::test]
async fn expect_continue_is_answered_when_the_body_is_read() {
    let (mut client, seen, _, _) = served().await;
    client
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = [0u8; 256];
    let n = client.read(&mut answer).await.unwrap();
    assert_eq!(&answer[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    client.write_all(b"hello").await.unwrap();
    let n = client.read(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(
        text.starts_with("HTTP/1.1 200 OK") && text.ends_with("\r\n\r\n5"),
        "{text}"
    );
    assert_eq!(seen.0.lock().unwrap()[0].1, Ok("hello".to_owned()));
}

#[tokio::test]
async fn a_body_cut_off_by_the_client_fails_and_the_connection_ends() {
    let (mut client, seen, _, _) = served().await;
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    let _ = read_to_close(&mut client).await;
    let seen = seen.0.lock().unwrap().clone();
    assert!(
        seen[0].1.as_ref().is_err_and(|e| e.contains("closed")),
        "{seen:?}"
    );
}

/// Writes `response` as the answer to a `method` request of `version`.
async fn answer_of(
    response: Response<impl Body<Data = Bytes, Error = Infallible>>,
    version: Version,
    method: Method,
) -> (String, bool) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let wire = Wire::new(stream, BytesMut::new());
    let keep = write_answer(&wire, response, version, &method, true)
        .await
        .unwrap();
    drop(wire);
    (read_to_close(&mut client).await, keep)
}

#[tokio::test]
async fn answers_are_framed_by_what_is_known_of_their_body() {
    let (known, keep) = answer_of(
        Response::new(Full::new(Bytes::from_static(b"hello"))),
        Version::HTTP_11,
        Method::POST,
    )
    .await;
    assert!(keep);
    assert!(
        known.contains("content-length: 5\r\n") && known.ends_with("\r\n\r\nhello"),
        "{known}"
    );
    assert!(known.contains("\r\ndate: "), "{known}");

    let stream = || {
        let frames = [b"ab".as_slice(), b"cde"]
            .map(|data| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(data))));
        StreamBody::new(futures_util::stream::iter(frames))
    };
    let (chunked, keep) = answer_of(Response::new(stream()), Version::HTTP_11, Method::GET).await;
    assert!(keep);
    assert!(
        chunked.contains("transfer-encoding: chunked\r\n"),
        "{chunked}"
    );
    assert!(
        chunked.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
        "{chunked}"
    );

    // HTTP/1.0 has no chunks: the body ends with the connection.
    let (until_close, keep) =
        answer_of(Response::new(stream()), Version::HTTP_10, Method::GET).await;
    assert!(!keep);
    assert!(
        until_close.contains("connection: close\r\n") && until_close.ends_with("\r\n\r\nabcde"),
        "{until_close}"
    );

    // HEAD: the length, no body.
    let (head, _) = answer_of(
        Response::new(Full::new(Bytes::from_static(b"hello"))),
        Version::HTTP_11,
        Method::HEAD,
    )
    .await;
    assert!(
        head.contains("content-length: 5\r\n") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
}
