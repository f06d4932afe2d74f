//! The request as written and the answer's head as read.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode, Version};
use bytes::{Buf, BytesMut};
use http_body_util::StreamBody;

use super::{parse_answer, ExchangeError, Framing, Prepared};

/// `request` prepared for a downstream whose `Host` is `downstream.internal`.
fn prepare(request: Request<Body>) -> Result<Prepared, ExchangeError> {
    Prepared::new(request.into(), "downstream.internal")
}

fn written(request: Request<Body>) -> String {
    let mut prepared = prepare(request).unwrap();
    let mut all = prepared.head.clone();
    all.extend_from_slice(&std::mem::take(&mut prepared.ready));
    String::from_utf8(all).unwrap()
}

#[test]
fn a_buffered_body_is_written_with_its_length_and_the_head() {
    let request = Request::post("/mcp")
        .header(header::HOST, "mcp.internal")
        .header(header::CONTENT_LENGTH, "999")
        .header(header::TRANSFER_ENCODING, "chunked")
        .header("x-user-email", "alice@example.com")
        .body(Body::from("{\"jsonrpc\":\"2.0\"}"))
        .unwrap();
    let text = written(request);
    // Host is the downstream's, once; the line given is not written.
    assert!(
        text.starts_with("POST /mcp HTTP/1.1\r\nhost: downstream.internal\r\n"),
        "{text}"
    );
    assert!(!text.contains("mcp.internal"), "{text}");
    // The length is the body's, whatever a header said; no chunking.
    assert!(text.contains("content-length: 17\r\n"), "{text}");
    assert!(!text.contains("999"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(
        text.contains("x-user-email: alice@example.com\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n{\"jsonrpc\":\"2.0\"}"), "{text}");
}

#[test]
fn a_request_without_a_body_announces_none_unless_its_method_carries_one() {
    let get = written(Request::get("/mcp?x=1").body(Body::empty()).unwrap());
    assert!(get.starts_with("GET /mcp?x=1 HTTP/1.1\r\n"), "{get}");
    assert!(!get.contains("content-length"), "{get}");
    let post = written(Request::post("/mcp").body(Body::empty()).unwrap());
    assert!(post.contains("content-length: 0\r\n"), "{post}");
}

#[test]
fn a_body_of_unknown_length_is_chunked() {
    let frames = futures_util::stream::iter(vec![
        Ok::<_, std::io::Error>(http_body::Frame::data(bytes::Bytes::from("ab"))),
        Ok(http_body::Frame::data(bytes::Bytes::from("cde"))),
    ]);
    let request = Request::post("/mcp")
        .header(header::CONTENT_LENGTH, "5")
        .body(Body::new(StreamBody::new(frames)))
        .unwrap();
    let prepared = prepare(request).unwrap();
    let head = String::from_utf8(prepared.head.clone()).unwrap();
    assert_eq!(prepared.length, None);
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    let mut framed = super::framed(prepared.head.into(), &prepared.ready, true, false);
    let bytes = framed.copy_to_bytes(framed.remaining());
    assert!(bytes.ends_with(b"\r\n\r\n2\r\nab\r\n"), "{bytes:?}");
    let last = super::framed(Default::default(), &"cde".into(), true, true);
    assert_eq!(last.chain_bytes(), "3\r\ncde\r\n0\r\n\r\n");
}

trait ChainBytes {
    fn chain_bytes(self) -> String;
}

impl<B: Buf> ChainBytes for B {
    fn chain_bytes(mut self) -> String {
        String::from_utf8(self.copy_to_bytes(self.remaining()).to_vec()).unwrap()
    }
}

fn parse(head: &str, method: Method) -> Result<Option<super::Answer>, ExchangeError> {
    parse_answer(&mut BytesMut::from(head), &method)
}

/// The answer of a complete, valid head.
fn answer_of(head: &str, method: Method) -> super::Answer {
    parse(head, method)
        .expect("a valid head")
        .expect("a complete head")
}

fn framing_of(head: &str) -> Framing {
    answer_of(head, Method::GET).framing
}

/// Each of `heads` fails as malformed.
fn assert_malformed(heads: &[&str]) {
    for head in heads {
        assert!(
            matches!(parse(head, Method::GET), Err(ExchangeError::Malformed(_))),
            "{head:?}"
        );
    }
}

#[test]
fn the_framing_is_read_as_rfc_9112_has_it() {
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n"),
        Framing::Length(12)
    );
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\ncontent-length: 7\r\n\r\n"),
        Framing::Length(7)
    );
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
        Framing::Chunked
    );
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
        Framing::Chunked
    );
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"),
        Framing::UntilClose
    );
    assert_eq!(framing_of("HTTP/1.1 200 OK\r\n\r\n"), Framing::UntilClose);
    assert_eq!(
        framing_of("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
        Framing::Empty
    );
    assert_eq!(
        framing_of("HTTP/1.1 304 Not Modified\r\n\r\n"),
        Framing::Empty
    );
    let head = answer_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::HEAD);
    assert_eq!(head.framing, Framing::Empty);
}

#[test]
fn conflicting_or_invalid_lengths_fail_the_answer() {
    assert_malformed(&[
        "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-length: 8\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 7, 8\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: +7\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 0x7\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
        "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
    ]);
}

#[test]
fn a_length_beside_chunking_never_reaches_the_client_and_ends_the_connection() {
    let answer = answer_of(
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
        Method::GET,
    );
    assert_eq!(answer.framing, Framing::Chunked);
    assert!(answer.headers.get(header::CONTENT_LENGTH).is_none());
    assert!(!answer.keep_alive);
}

#[test]
fn a_connection_line_about_this_hop_alone_is_read_not_filed() {
    for head in [
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nConnection: Keep-Alive\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    ] {
        let answer = answer_of(head, Method::GET);
        assert!(answer.headers.get(header::CONNECTION).is_none(), "{head}");
        assert_eq!(answer.keep_alive, head.contains("Keep-Alive"), "{head}");
    }
    // One that names other lines is filed: the hop-by-hop filter removes
    // the lines it names.
    let naming = answer_of(
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive, x-hop\r\nx-hop: 1\r\n\r\n",
        Method::GET,
    );
    assert_eq!(naming.headers[header::CONNECTION], "keep-alive, x-hop");
    assert!(naming.keep_alive);
}

#[test]
fn the_connection_stays_open_only_when_the_answer_allows_it() {
    let keep = |head: &str| answer_of(head, Method::GET).keep_alive;
    assert!(keep("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
    assert!(!keep(
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive, Close\r\n\r\n"
    ));
    assert!(!keep("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
    assert!(keep(
        "HTTP/1.0 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
    ));
    // A body that ends with the connection ends it.
    assert!(!keep("HTTP/1.1 200 OK\r\n\r\n"));
    // The lines are found however they are spelled.
    assert!(!keep(
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nCONNECTION: close\r\n\r\n"
    ));
    let chunked = answer_of(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        Method::GET,
    );
    assert_eq!(chunked.framing, Framing::Chunked);
    assert!(
        !chunked.keep_alive,
        "Content-Length beside Transfer-Encoding"
    );
    let sized = answer_of("HTTP/1.1 200 OK\r\nContent-LENGTH: 7\r\n\r\n", Method::GET);
    assert_eq!(sized.framing, Framing::Length(7));
}

#[test]
fn informational_answers_are_skipped_and_an_upgrade_is_refused() {
    let mut buf = BytesMut::from(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\nx-a: 1\r\n\r\n{}",
    );
    let answer = parse_answer(&mut buf, &Method::POST).unwrap().unwrap();
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.version, Version::HTTP_11);
    assert_eq!(answer.headers["x-a"], "1");
    assert!(answer.headers.get("link").is_none());
    assert_eq!(&buf[..], b"{}", "the body stays in the buffer");
    let upgrade = parse(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        Method::GET,
    );
    assert!(matches!(upgrade, Err(ExchangeError::Upgrade)));
}

#[test]
fn an_incomplete_head_waits_and_a_malformed_one_fails() {
    let partial = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n";
    for end in 0..partial.len() {
        assert!(
            parse(&partial[..end], Method::GET).unwrap().is_none(),
            "{end}"
        );
    }
    assert_malformed(&[
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad header: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nx: a\0b\r\n\r\n",
    ]);
}

#[test]
fn header_values_keep_their_bytes_and_order() {
    let answer = answer_of(
        "HTTP/1.1 200 OK\r\nset-cookie: a=1\r\nx-b: two words\r\nset-cookie: b=2\r\ncontent-length: 0\r\n\r\n",
        Method::GET,
    );
    let cookies: Vec<_> = answer.headers.get_all(header::SET_COOKIE).iter().collect();
    let empty = answer_of(
        "HTTP/1.1 200 OK\r\nx-empty:\r\nx-blank: \r\ncontent-length: 0\r\n\r\n",
        Method::GET,
    );
    assert_eq!(empty.headers["x-empty"], "");
    assert_eq!(empty.headers["x-blank"], "");
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(answer.headers["x-b"], "two words");
}

#[test]
fn a_body_that_already_failed_is_not_sent_at_all() {
    // A client that went away mid-body (or a body deadline): the error is
    // the request's, never an end that would make the body look whole.
    let frames = futures_util::stream::iter(vec![Err::<http_body::Frame<bytes::Bytes>, _>(
        std::io::Error::other("client went away"),
    )]);
    let request = Request::post("/mcp")
        .body(Body::new(StreamBody::new(frames)))
        .unwrap();
    assert!(matches!(
        prepare(request),
        Err(ExchangeError::RequestBody(_))
    ));
}

/// A connection to a listener of its own, and the accepted other end.
async fn connected() -> (super::Conn, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ours = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (theirs, _) = listener.accept().await.unwrap();
    let io = hyper_util::rt::TokioIo::new(hyper_rustls::MaybeHttpsStream::Http(
        hyper_util::rt::TokioIo::new(ours),
    ));
    (super::Conn::new(io), theirs)
}

#[tokio::test]
async fn the_answer_head_is_read_into_the_buffer_allocated_before_the_wait() {
    use std::future::Future;
    use tokio::io::AsyncWriteExt;
    let (mut conn, mut theirs) = connected().await;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // Nothing answered yet: the head's read waits and keeps its buffer.
    {
        let waiting = std::pin::pin!(conn.read_answer(&Method::POST));
        assert!(waiting.poll(&mut cx).is_pending());
    }
    assert!(conn.buffer_capacity() > 0);
    let waited_in = conn.buffered().as_ptr();
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
    theirs
        .write_all(&[&head[..], b"{}"].concat())
        .await
        .unwrap();
    let answer = conn.read_answer(&Method::POST).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    // The body follows the head in the buffer the wait kept.
    assert_eq!(&conn.buffered()[..], b"{}");
    assert_eq!(
        conn.buffered().as_ptr(),
        waited_in.wrapping_add(head.len()),
        "the head was read into a second buffer"
    );
}

#[tokio::test]
async fn a_body_read_that_waits_with_nothing_buffered_lets_the_buffer_go() {
    let (mut conn, _theirs) = connected().await;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(conn.poll_fill(&mut cx).is_pending());
    assert_eq!(conn.buffer_capacity(), 0);
}
