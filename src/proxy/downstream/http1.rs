//! HTTP/1.1 to the downstream, spoken on the request's own task: the request
//! written in one go, the answer's head read with `httparse`, the body left
//! in the connection's buffer for `DrivenBody` to decode.
//!
//! Why not hyper's client connection: it keeps a dispatch channel (an 8 KiB
//! block), an 8 KiB header write buffer and an 8 KiB read buffer for as long
//! as the connection lives, and a request crosses that channel twice. Here
//! the read buffer exists only while there is something to read: a
//! connection waiting in the pool, or an event stream waiting for its next
//! event, holds no buffer at all (tests/bench/README.md, "Memory per idle
//! stream").
//!
//! What the downstream sends is read strictly (RFC 9112): one
//! `Content-Length` (or a list of identical ones), `Transfer-Encoding` whose
//! last coding is `chunked` or else a body to the connection's end,
//! chunk sizes and the CRLF after each chunk exactly as the grammar has
//! them; anything else fails the answer and closes the connection.

use std::future::poll_fn;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use bytes::buf::Chain;
use bytes::{Buf, BufMut, BytesMut};
use http_body::Body as HttpBody;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Outgoing;
use crate::body::{put_chunk_size, take_ready};
use crate::proxy::headers::{list_items, HeaderLines, NotedLines};

/// The downstream connection as tokio sees it (TLS or not).
pub(super) type Io = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// The most headers an answer's head (or a chunked body's trailers) may
/// have; hyper's default.
const MAX_HEADERS: usize = 100;
/// The most bytes an answer's head may take; hyper's default buffer limit.
const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// What one read asks for at least; it grows while reads fill it.
const READ_SIZE: usize = 8 * 1024;
/// Headers the proxy may add to an answer before it reaches the client
/// (`X-Request-Id`, `Vary` and the CORS headers, `X-Accel-Buffering`).
const ANSWER_HEADER_HEADROOM: usize = 6;
/// Up to this many lines, an answer's head is read without an allocation
/// for its list of lines.
const FEW_ANSWER_LINES: usize = 16;
/// The largest read.
const MAX_READ_SIZE: usize = 64 * 1024;

/// Why an exchange with the downstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("reading from or writing to the downstream failed")]
    Io(#[from] io::Error),
    #[error("the downstream closed the connection before its answer's head")]
    ClosedBeforeAnswer,
    #[error("the downstream closed the connection in the middle of the answer's body")]
    ClosedMidBody,
    #[error("the downstream's answer is not valid HTTP/1.1: {0}")]
    Malformed(&'static str),
    #[error("the downstream's answer head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("the downstream answered 101 Switching Protocols, which is not forwarded")]
    Upgrade,
    #[error("reading the client's request body failed")]
    RequestBody(#[source] axum::Error),
    #[error("the request body's length differs from the one announced")]
    BodyLength,
}

impl From<httparse::Error> for ExchangeError {
    fn from(e: httparse::Error) -> Self {
        ExchangeError::Malformed(match e {
            httparse::Error::TooManyHeaders => "more than 100 headers",
            httparse::Error::Version => "not HTTP/1.x",
            httparse::Error::Status => "bad status code",
            httparse::Error::HeaderName => "bad header name",
            httparse::Error::HeaderValue => "bad header value",
            httparse::Error::NewLine | httparse::Error::Token => "bad line",
        })
    }
}

/// One open connection to the downstream and what was read from it but not
/// yet handed on.
pub(super) struct Conn {
    io: Io,
    /// Empty (and unallocated) whenever nothing is buffered and a read
    /// waits: an idle connection holds no buffer.
    read_buf: BytesMut,
    /// How much the next read asks for.
    read_size: usize,
}

/// The answer's head, and how its body is framed.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    pub(super) framing: Framing,
    /// Whether the connection may serve another request after this answer.
    pub(super) keep_alive: bool,
}

/// How the answer's body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A request ready to write: its head, and the body as far as it was
/// already there. Until the first write it can go on another connection.
pub(super) struct Prepared {
    head: Vec<u8>,
    method: Method,
    /// The body data that was ready when the request was prepared (all of
    /// it, for a buffered body).
    ready: Bytes,
    /// The rest of the body, still to be read from the client; `None` when
    /// `ready` is all of it.
    rest: Option<Body>,
    /// The `Content-Length` written, `ready` included; `None`: chunked.
    length: Option<u64>,
}

impl Conn {
    pub(super) fn new(io: Io) -> Self {
        Conn {
            io,
            read_buf: BytesMut::new(),
            read_size: READ_SIZE,
        }
    }

    /// Whether the connection is still open with nothing unexpected on it:
    /// a read that would wait. The downstream's close (or stray bytes)
    /// makes it unusable.
    pub(super) fn is_reusable(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(cx, &mut probe),
            Poll::Pending
        )
    }

    /// Reads more into the buffer: the bytes read (0 at the connection's
    /// end). A read that waits with nothing buffered lets the buffer go:
    /// an event stream's body waits most of its life.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let read = self.poll_fill_keeping(cx);
        if read.is_pending() {
            self.let_buffer_go();
        }
        read
    }

    /// [`Conn::poll_fill`] that keeps the buffer through a wait: for the
    /// answer's head, which is usually a moment away. Letting it go there
    /// made every request allocate the buffer twice (callgrind: the first
    /// read after a request is written almost always waits).
    fn poll_fill_keeping(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < self.read_size / 2 {
            self.read_buf.reserve(self.read_size);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf) {
            Poll::Ready(Ok(n)) => {
                // Reads that fill what was asked for ask for more next time.
                self.read_size = if n >= self.read_size {
                    (self.read_size * 2).min(MAX_READ_SIZE)
                } else {
                    READ_SIZE
                };
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    /// Frees the read buffer when it holds nothing: before waiting, and
    /// before the connection goes idle in the pool.
    pub(super) fn let_buffer_go(&mut self) {
        if self.read_buf.is_empty() && self.read_buf.capacity() > 0 {
            self.read_buf = BytesMut::new();
        }
    }

    pub(super) fn buffered(&mut self) -> &mut BytesMut {
        &mut self.read_buf
    }

    #[cfg(test)]
    pub(super) fn buffer_capacity(&self) -> usize {
        self.read_buf.capacity()
    }

    /// Writes the request: its head and the body data already there in
    /// one write. `Err(Ok(prepared))`: nothing reached the downstream (the
    /// connection had closed), so the request may go on another one.
    pub(super) fn send(
        &mut self,
        prepared: Prepared,
    ) -> impl Future<Output = Result<Method, Result<Prepared, ExchangeError>>> + Send + '_ {
        async move {
            // A downstream that closed an idle connection: its FIN is
            // already here (writing would succeed, and the request be lost).
            let closed = poll_fn(|cx| Poll::Ready(!self.is_reusable(cx))).await;
            if closed {
                return Err(Ok(prepared));
            }
            let Prepared {
                head,
                method,
                ready,
                rest,
                length,
            } = prepared;
            let chunked = length.is_none();
            let mut first = framed(Bytes::from(head), &ready, chunked, rest.is_none());
            self.io
                .write_all_buf(&mut first)
                .await
                .map_err(|e| Err(e.into()))?;
            if let Some(rest) = rest {
                let left = length.map(|n| n.saturating_sub(ready.len() as u64));
                // Boxed: only a body that did not come whole with its head
                // streams, and inline its future would make every
                // request's larger.
                Box::pin(self.send_rest(rest, left)).await.map_err(Err)?;
            }
            self.io.flush().await.map_err(|e| Err(e.into()))?;
            Ok(method)
        }
    }

    /// The body's remaining frames, each written as it comes: exactly the
    /// `left` bytes its `Content-Length` announced, or chunked when there
    /// is none. A body that brings more or less fails the request (and the
    /// connection is dropped): the downstream would read the difference as
    /// the start of another request.
    async fn send_rest(
        &mut self,
        mut body: Body,
        mut left: Option<u64>,
    ) -> Result<(), ExchangeError> {
        let chunked = left.is_none();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let frame = frame.map_err(ExchangeError::RequestBody)?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers of a request are not forwarded
            };
            if data.is_empty() {
                continue;
            }
            if let Some(left) = left.as_mut() {
                *left = left
                    .checked_sub(data.len() as u64)
                    .ok_or(ExchangeError::BodyLength)?;
            }
            let mut data = framed(Bytes::new(), &data, chunked, false);
            self.io.write_all_buf(&mut data).await?;
        }
        match left {
            None => self.io.write_all(b"0\r\n\r\n").await?,
            Some(0) => {}
            Some(_) => return Err(ExchangeError::BodyLength),
        }
        Ok(())
    }

    /// Reads the answer's head (skipping informational answers).
    pub(super) async fn read_answer(&mut self, method: &Method) -> Result<Answer, ExchangeError> {
        loop {
            if !self.read_buf.is_empty() {
                if let Some(answer) = parse_answer(&mut self.read_buf, method)? {
                    return Ok(answer);
                }
                if self.read_buf.len() > MAX_HEAD_BYTES {
                    return Err(ExchangeError::HeadTooLarge);
                }
            }
            if poll_fn(|cx| self.poll_fill_keeping(cx)).await? == 0 {
                return Err(ExchangeError::ClosedBeforeAnswer);
            }
        }
    }
}

impl Prepared {
    /// The request line and header lines of `outgoing`, `Host: host`
    /// first, with the body framed by what is known of it:
    /// `Content-Length` when its size is, chunked when not. The lines must
    /// already be the downstream's (hop-by-hop ones gone); any `Host`,
    /// `Content-Length` or `Transfer-Encoding` among them is left out for
    /// the proxy's own. A body that already failed fails the request here:
    /// nothing of it is sent.
    pub(super) fn new(outgoing: Outgoing, host: &str) -> Result<Self, ExchangeError> {
        let Outgoing {
            method,
            target,
            headers,
            mut body,
        } = outgoing;
        // A buffered body (every JSON-RPC POST the policy read) is here
        // whole: taken now, it goes out with the head.
        let (ready, rest) = take_ready(&mut body).map_err(ExchangeError::RequestBody)?;
        let length = match &rest {
            None => Some(ready.len() as u64),
            Some(rest) => rest.size_hint().exact().map(|n| n + ready.len() as u64),
        };
        let target = target.path_and_query().map_or("/", |p| p.as_str());
        let mut head = Vec::with_capacity(96 + target.len() + host.len() + lines_len(&headers));
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        head.extend_from_slice(host.as_bytes());
        head.extend_from_slice(b"\r\n");
        for (name, value) in &headers {
            if name == header::HOST
                || name == header::CONTENT_LENGTH
                || name == header::TRANSFER_ENCODING
            {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        match length {
            Some(0) if !expects_body(&method) => {}
            Some(n) => {
                head.extend_from_slice(b"content-length: ");
                head.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                head.extend_from_slice(b"\r\n");
            }
            None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        head.extend_from_slice(b"\r\n");
        Ok(Prepared {
            head,
            method,
            ready,
            rest,
            length,
        })
    }

    #[cfg(test)]
    pub(super) fn head(&self) -> &[u8] {
        &self.head
    }
}

/// Methods whose empty body is still announced (`Content-Length: 0`).
fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

fn lines_len(headers: &HeaderLines) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// `head` (the request's head, or nothing) followed by body `data`,
/// chunk-framed when `chunked` (with the last chunk when `last`). The data
/// is copied only to add a chunk's framing after it.
fn framed(head: Bytes, data: &Bytes, chunked: bool, last: bool) -> Chain<Bytes, Bytes> {
    if !chunked {
        return head.chain(data.clone());
    }
    let mut front = BytesMut::with_capacity(head.len() + 18);
    front.put_slice(&head);
    let mut back = Vec::new();
    if !data.is_empty() {
        put_chunk_size(&mut front, data.len());
        back.extend_from_slice(data);
        back.extend_from_slice(b"\r\n");
    }
    if last {
        back.extend_from_slice(b"0\r\n\r\n");
    }
    front.freeze().chain(Bytes::from(back))
}

/// The answer's head from the front of `buf`, if it is all there: taken
/// out of the buffer; informational answers are dropped on the way.
fn parse_answer(buf: &mut BytesMut, method: &Method) -> Result<Option<Answer>, ExchangeError> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut slots);
        let httparse::Status::Complete(len) = response.parse(buf)? else {
            return Ok(None);
        };
        let code = response.code.unwrap_or_default();
        let status =
            StatusCode::from_u16(code).map_err(|_| ExchangeError::Malformed("bad status code"))?;
        let version = match response.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ExchangeError::Upgrade);
        }
        if status.is_informational() {
            let _ = buf.split_to(len);
            continue;
        }
        let base = buf.as_ptr() as usize;
        let bad_value = || ExchangeError::Malformed("bad header value");
        // Where each value sits in the head, so that the values can share
        // the head's bytes instead of each being copied; one that is not
        // inside the head (an empty value's slice may point anywhere) is
        // copied. Kept on the stack while the head has few lines, as
        // nearly every answer's has (a `Vec` was an allocation an answer),
        // and filled in place: collected, the list is moved whole (and it
        // is large) on its way out of `collect`.
        let mut spans: SmallVec<[(HeaderName, Span); FEW_ANSWER_LINES]> = SmallVec::new();
        let mut noted = NotedLines::default();
        for h in response.headers.iter() {
            let name = crate::header_name::from_wire(h.name.as_bytes())
                .map_err(|_| ExchangeError::Malformed("bad header name"))?;
            // A `Connection: keep-alive` or `close` is noted and not filed:
            // it speaks only of this hop, and the client's answer loses it
            // anyway (hop-by-hop). Filed, it cost a lookup and a removal on
            // every answer (~500 instructions in callgrind). A `Connection`
            // line naming anything else is filed, so that the lines it
            // names are removed too.
            if noted.note(&name, h.value) {
                continue;
            }
            let span = match (h.value.as_ptr() as usize).checked_sub(base) {
                Some(start) if start + h.value.len() <= len => {
                    Span::Shared(start, start + h.value.len())
                }
                _ => Span::Copied(HeaderValue::from_bytes(h.value).map_err(|_| bad_value())?),
            };
            spans.push((name, span));
        }
        let head = buf.split_to(len).freeze();
        // Room for what the proxy adds on the way to the client (request
        // id, CORS, event-stream headers): a full map grows by rehashing.
        let mut headers = HeaderMap::with_capacity(spans.len() + ANSWER_HEADER_HEADROOM);
        // Drained, not consumed: `into_iter` would move the list again.
        for (name, span) in spans.drain(..) {
            let value = match span {
                Span::Shared(start, end) => HeaderValue::from_maybe_shared(head.slice(start..end))
                    .map_err(|_| bad_value())?,
                Span::Copied(value) => value,
            };
            headers.append(name, value);
        }
        return answer(status, version, headers, method, noted).map(Some);
    }
}

/// A header value of the answer's head: where it is in the head, or a copy.
enum Span {
    Shared(usize, usize),
    Copied(HeaderValue),
}

/// How the answer's body is framed, and whether the connection stays open.
fn answer(
    status: StatusCode,
    version: Version,
    mut headers: HeaderMap,
    method: &Method,
    noted: NotedLines,
) -> Result<Answer, ExchangeError> {
    let mut keep_alive = noted.persistent(version);
    let framing = if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if noted.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(ExchangeError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 answer",
            ));
        }
        // Transfer-Encoding overrides Content-Length, which must not
        // reach the client (RFC 9112 §6.3); such an answer may be an
        // attempt to desynchronise, so its connection is not reused.
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            keep_alive = false;
        }
        if last_coding_is_chunked(&headers) {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if noted.content_length {
        Framing::Length(content_length(&headers)?)
    } else {
        Framing::UntilClose
    };
    if framing == Framing::UntilClose {
        keep_alive = false;
    }
    Ok(Answer {
        status,
        version,
        headers,
        framing,
        keep_alive,
    })
}

/// The one length every `Content-Length` (and every item of a list) gives.
fn content_length(headers: &HeaderMap) -> Result<u64, ExchangeError> {
    let invalid = || ExchangeError::Malformed("invalid or conflicting Content-Length");
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| invalid())?;
        for item in list_items(text) {
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let n: u64 = item.parse().map_err(|_| invalid())?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid());
            }
            length = Some(n);
        }
    }
    length.ok_or_else(invalid)
}

fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
}

#[cfg(test)]
mod tests;
