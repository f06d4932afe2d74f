use super::*;
use std::sync::Mutex;

use bytes::BytesMut;
use http_body_util::{BodyExt, Full, StreamBody};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 8192,
    max_fields: 100,
    timeout: Duration::from_millis(300),
};
const SEND_TIMEOUT: Duration = Duration::from_millis(300);

/// One request as the test service saw it: its path, and its body (or the
/// body's error).
type SeenRequest = (String, Result<String, String>);

/// What the test service saw, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<SeenRequest>>>);

/// Both ends of a loopback connection: the client's, the server's.
async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

/// A connection served by `serve` with a service that reads each body
/// whole and answers with its length (`/slow` after half a second); the
/// client's socket, what the service saw, and the wire.
async fn served() -> (TcpStream, Seen, Arc<Wire>) {
    let (client, stream) = socket_pair().await;
    let wire = Arc::new(Wire::new(stream, BytesMut::new(), SEND_TIMEOUT));
    let seen = Seen::default();
    let record = seen.clone();
    let service = tower::service_fn(move |request: Request<RequestBody>| {
        let record = record.clone();
        async move {
            let path = request.uri().path().to_owned();
            if path == "/slow" {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let body = match request.into_body().collect().await {
                Ok(body) => Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned()),
                Err(e) => Err(e.to_string()),
            };
            let answer = format!("{}", body.as_ref().map_or(0, String::len));
            record.0.lock().unwrap().push((path, body));
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
        }
    });
    spawn_served(wire.clone(), service);
    (client, seen, wire)
}

/// Serves `wire` with `service` on a task of its own, with `LIMITS`, never
/// asked to close; ends when the connection does.
fn spawn_served<S, B>(wire: Arc<Wire>, service: S) -> tokio::task::JoinHandle<()>
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display + Send,
{
    tokio::spawn(async move {
        let (_closing_tx, closing) = watch::channel(false);
        let never = pin!(std::future::pending::<()>());
        serve(wire, service, LIMITS, never, &closing).await;
    })
}

/// Everything the server sends until it closes the connection.
async fn read_to_close(client: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// One read's worth of what the server sent.
async fn read_some(client: &mut TcpStream) -> String {
    let mut answer = [0u8; 1024];
    let n = client.read(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

const PIPELINE: &[u8] =
    b"\r\nPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 25\r\n\r\nContent-Length: 5\r\n\r\nabcd\
POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
4;ext=1\r\nwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
3\r\nabc\r\n0\r\n\r\n\
GET /d HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn pipelined_requests_are_read_through_their_bodies_and_an_ambiguous_head_ends_the_connection(
) {
    for step in [1, 7, PIPELINE.len()] {
        let (mut client, seen, _) = served().await;
        for piece in PIPELINE.chunks(step) {
            client.write_all(piece).await.unwrap();
        }
        let answers = read_to_close(&mut client).await;
        let seen = seen.0.lock().unwrap().clone();
        // Content-Length with Transfer-Encoding (/c): answered 400 by the
        // server before any request is built, its body never read, and /d
        // never served.
        assert_eq!(
            seen,
            vec![
                ("/a".into(), Ok("Content-Length: 5\r\n\r\nabcd".into())),
                ("/b".into(), Ok("wxyz".into())),
            ],
            "step {step}"
        );
        assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2, "{answers}");
        let refusal = &answers[answers.find("HTTP/1.1 400").expect("a 400 for /c")..];
        assert!(refusal.contains("connection: close\r\n"), "{refusal}");
        assert!(
            refusal.ends_with("Transfer-Encoding and Content-Length are sent together\n"),
            "{refusal}"
        );
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
fn a_parsed_head_has_room_for_the_lines_the_stack_adds() {
    for fields in [1, 3, 6, 7, 12, 24] {
        let mut text = b"POST / HTTP/1.1\r\n".to_vec();
        for i in 0..fields {
            text.extend_from_slice(format!("x-f{i}: v\r\n").as_bytes());
        }
        text.extend_from_slice(b"\r\n");
        let head = take_head(&mut BytesMut::from(&text[..]), 8192, 100, &mut Vec::new())
            .unwrap()
            .unwrap();
        let headers = head.request.headers();
        assert!(
            headers.capacity() >= headers.len() + head::ADDED_BY_THE_STACK,
            "{fields} fields: room for {}",
            headers.capacity()
        );
    }
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

/// The rule is `proxy::headers::persistent`, shared with the downstream's
/// answers.
#[test]
fn a_request_keeps_its_connection_as_rfc_9112_has_it() {
    let keeps = |version: &str, connection: &[&str]| {
        let fields: String = connection
            .iter()
            .map(|value| format!("Connection: {value}\r\n"))
            .collect();
        let head = format!("GET / HTTP/{version}\r\nHost: x\r\n{fields}\r\n");
        take_head(
            &mut BytesMut::from(head.as_bytes()),
            8192,
            100,
            &mut Vec::new(),
        )
        .unwrap()
        .unwrap()
        .keep_alive
    };
    assert!(keeps("1.1", &[]));
    assert!(keeps("1.1", &["keep-alive"]));
    assert!(!keeps("1.1", &["x-trace, Close"]));
    assert!(!keeps("1.0", &[]));
    assert!(keeps("1.0", &[" Keep-Alive "]));
    assert!(!keeps("1.0", &["keep-alive", "close"]));
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

#[test]
fn every_refusal_announces_the_length_of_its_text() {
    for refusal in [
        HeadError::Malformed,
        HeadError::TooLarge,
        HeadError::TooManyFields,
        HeadError::ChunkedHttp10,
        HeadError::Late,
    ] {
        let answer = std::str::from_utf8(refusal.answer()).unwrap();
        let (head, text) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("connection: close"), "{refusal:?}");
        assert!(
            head.contains(&format!("content-length: {}\r\n", text.len())),
            "{refusal:?}: {answer:?}"
        );
    }
}

#[tokio::test]
async fn a_head_that_stops_half_way_gets_408_after_the_header_timeout_from_its_first_byte() {
    let (mut client, seen, _) = served().await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_some(&mut client).await.starts_with("HTTP/1.1 200 OK"));
    // Idle for longer than the header timeout (idle is the watch's), then
    // half a head.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = tokio::time::Instant::now();
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let answer = read_to_close(&mut client).await;
    let after = sent.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_secs(2),
        "{after:?}"
    );
    assert_eq!(seen.0.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_head_that_ends_in_time_is_served_and_its_timer_cleared() {
    let (mut client, seen, _) = served().await;
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    client.write_all(b"Host: x\r\n\r\n").await.unwrap();
    assert!(read_some(&mut client).await.starts_with("HTTP/1.1 200 OK"));
    // Past the half head's deadline: still open, and serving.
    tokio::time::sleep(Duration::from_millis(500)).await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_some(&mut client).await.starts_with("HTTP/1.1 200 OK"));
    assert_eq!(seen.0.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_head_begun_before_the_request_ended_is_timed_from_the_end() {
    let (mut client, _, _) = served().await;
    // A pipelined head's first bytes, sent while /slow takes half a second
    // (longer than the header timeout): the client cannot be blamed for
    // the wait.
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n")
        .await
        .unwrap();
    assert!(read_some(&mut client).await.starts_with("HTTP/1.1 200 OK"));
    let answered = tokio::time::Instant::now();
    let answer = read_to_close(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answered.elapsed() >= Duration::from_millis(250),
        "{:?}",
        answered.elapsed()
    );
}

#[tokio::test]
async fn an_idle_connection_holds_no_read_buffer() {
    let (mut client, _, wire) = served().await;
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .unwrap();
    assert!(read_some(&mut client).await.starts_with("HTTP/1.1 200 OK"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(wire.read_side().buf.capacity(), 0);
}

#[tokio::test]
async fn expect_continue_is_answered_when_the_body_is_read() {
    let (mut client, seen, _) = served().await;
    client
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(
        read_some(&mut client).await,
        "HTTP/1.1 100 Continue\r\n\r\n"
    );
    client.write_all(b"hello").await.unwrap();
    let text = read_some(&mut client).await;
    assert!(
        text.starts_with("HTTP/1.1 200 OK") && text.ends_with("\r\n\r\n5"),
        "{text}"
    );
    assert_eq!(seen.0.lock().unwrap()[0].1, Ok("hello".to_owned()));
}

#[tokio::test]
async fn a_body_cut_off_by_the_client_fails_and_the_connection_ends() {
    let (mut client, seen, _) = served().await;
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
    let (mut client, stream) = socket_pair().await;
    let wire = Wire::new(stream, BytesMut::new(), SEND_TIMEOUT);
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

#[tokio::test]
async fn a_read_that_drains_the_socket_marks_it_not_ready_and_keeps_later_bytes() {
    let (mut client, server) = socket_pair().await;
    let wire = Wire::new(server, BytesMut::new(), SEND_TIMEOUT);
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    wire.stream.readable().await.unwrap();
    assert_eq!(wire.read_side().try_fill(&wire.stream).unwrap(), 16);
    // The socket is drained: asking again costs no read (the closure would
    // be the read).
    let asked = wire
        .stream
        .try_io(tokio::io::Interest::READABLE, || -> io::Result<()> {
            panic!("a drained socket was read again")
        });
    assert_eq!(asked.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    // Bytes that come later wake the connection up and are read.
    client.write_all(b"host: a\r\n\r\n").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), wire.stream.readable())
        .await
        .expect("later bytes make the socket ready again")
        .unwrap();
    assert_eq!(wire.read_side().try_fill(&wire.stream).unwrap(), 11);
    assert_eq!(
        &wire.read_side().buf[..],
        b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"
    );
}

mod unruly_clients;
