//! The HTTP/1.1 side of a client connection, served without hyper: each
//! request head is read once (`head.rs`: `httparse`, then the framing rules
//! on the raw fields, then the `http::Request` sharing the head's bytes),
//! the body is handed over whole when it came with its head
//! (`body.rs`), and the answer is written with its head and what its body
//! already has in one write.
//!
//! Why not hyper's server connection: it parsed each head, and the framing
//! check had to parse it again from a copy of the socket's bytes to see
//! what hyper tidies away (`framing.rs` had a second parser for that); it
//! kept an 8 KiB read buffer and an 8 KiB write buffer per connection,
//! allocated up front and kept while idle (17.5 KiB per idle keep-alive
//! connection against nginx's 0.5 KiB); and it created a timer per request
//! for the header timeout. Here a head is parsed once, buffers exist only
//! while something is read or written, a head is timed only when a read
//! leaves it half-arrived (`read_head`), and the connection's watch
//! (`connection.rs`) keeps the first-request and idle limits.
//!
//! What it speaks: HTTP/1.1 and 1.0 requests, one at a time (pipelined
//! requests wait in the buffer), bodies by `Content-Length` or chunked,
//! `Expect: 100-continue`, keep-alive by RFC 9112 §9.3. Answers carry
//! `Content-Length` when their size is known, chunked otherwise (closing
//! the connection instead for HTTP/1.0), and `Date`. A head that is not
//! HTTP/1.1 gets 400, one over `server.max_header_bytes` or
//! `server.max_headers` 431, one that does not end within
//! `server.header_timeout` 408, and the connection closes. No upgrades:
//! the proxy serves none.
//!
//! What a client that does not play along gets: one that takes no part of
//! an answer for `server.send_timeout` is disconnected (`write_all`); one
//! still sending when its connection ends (a refused head, a body left
//! unread) has the connection's write side shut and what it sends dropped
//! for a while (`close_lingering`), so it reads its answer rather than a
//! reset.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::ops::Range;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, Method, Request, Response, StatusCode, Version};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::body::put_chunk_size;
use crate::proxy::downstream::Framing;
use crate::proxy::headers::connection_has;

mod body;
mod head;

pub(crate) use body::{read_available, RequestBody, Wire};
pub(crate) use head::take_head;
use head::{Head, HeadError};

/// An answer's bytes are written once this many are waiting, even when the
/// body has more ready.
const WRITE_AT: usize = 64 * 1024;
/// How much a client may send ahead while an answer streams.
const PIPELINED_AT_MOST: usize = 64 * 1024;
/// How long a closing connection reads and drops what its client still
/// sends (`close_lingering`), and the size of each read.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_READ: usize = 16 * 1024;

/// Limits on what a client sends in a head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    pub(crate) max_bytes: usize,
    pub(crate) max_fields: usize,
    /// How long a head may take from its first byte (or from the end of the
    /// request before it, for one that came early).
    pub(crate) timeout: Duration,
}

/// Serves the HTTP/1.1 requests on `wire` until the client closes, a
/// request or answer says to, a head is refused or late, `close` resolves
/// while no request is in progress (idle, no first request in time,
/// shutdown), or shutdown (`closing`) comes during one (the connection
/// closes once its answer is written).
pub(crate) async fn serve<S, B>(
    wire: Arc<Wire>,
    mut service: S,
    limits: HeadLimits,
    mut close: Pin<&mut impl Future<Output = ()>>,
    closing: &watch::Receiver<bool>,
) where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut fields = Vec::new();
    loop {
        let next = {
            let read = pin!(read_head(&wire, limits, &mut fields));
            tokio::select! {
                biased;
                head = read => head,
                () = close.as_mut() => return,
            }
        };
        let head = match next {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(Refused::Io(e)) => {
                tracing::debug!(error = %e, "client connection failed");
                return;
            }
            Err(Refused::Head(refusal)) => {
                tracing::debug!(%refusal, "request head refused");
                let written = write_all(&wire, refusal.answer()).await;
                return close_after(&wire, written).await;
            }
        };
        let Head {
            request,
            framing,
            keep_alive,
            expects_continue,
        } = head;
        let version = request.version();
        let method = request.method().clone();
        let framing = match framing {
            Ok(framing) => framing,
            Err(ambiguous) => {
                // The bytes after this head cannot be told apart: answered,
                // and the connection closed.
                let answer = ambiguous.into_response();
                let written = write_answer(&wire, answer, version, &method, false).await;
                return close_after(&wire, written).await;
            }
        };
        let body = wire.body(framing, expects_continue);
        let request = request.map(|()| body);
        let Ok(ready) = service.ready().await;
        let Ok(response) = ready.call(request).await;
        let keep_alive = keep_alive && method != Method::CONNECT && !*closing.borrow();
        match write_answer(&wire, response, version, &method, keep_alive).await {
            Ok(true) => {}
            Ok(false) => return close_lingering(&wire).await,
            Err(e) => {
                tracing::debug!(error = %e, "writing an answer failed");
                return;
            }
        }
        let body_done = {
            let mut side = wire.read_side();
            side.let_buffer_go();
            side.body_done()
        };
        if !body_done {
            // Left unread: what follows is not a head.
            return close_lingering(&wire).await;
        }
    }
}

/// Why a head was not read.
enum Refused {
    Io(io::Error),
    Head(HeadError),
}

/// Reads the next head; `None` when the client closed between requests.
/// A head left half-arrived by a read must end within `limits.timeout`.
async fn read_head(
    wire: &Wire,
    limits: HeadLimits,
    fields: &mut Vec<(Range<usize>, Range<usize>)>,
) -> Result<Option<Head>, Refused> {
    // Set only once a head is seen half-arrived: most come whole in one
    // read and never need a timer.
    let mut due: Option<Instant> = None;
    loop {
        {
            let mut side = wire.read_side();
            loop {
                match take_head(&mut side.buf, limits.max_bytes, limits.max_fields, fields) {
                    Ok(Some(head)) => return Ok(Some(head)),
                    Ok(None) => {}
                    Err(refusal) => return Err(Refused::Head(refusal)),
                }
                match side.try_fill(&wire.stream) {
                    Ok(0) if side.buf.is_empty() => return Ok(None),
                    Ok(0) => return Err(Refused::Head(HeadError::Malformed)),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(Refused::Io(e)),
                }
            }
            if !side.buf.is_empty() && due.is_none() {
                due = Some(Instant::now() + limits.timeout);
            }
            side.let_buffer_go();
        }
        let readable = wire.stream.readable();
        match due {
            None => readable.await,
            Some(due) => tokio::time::timeout_at(due, readable)
                .await
                .map_err(|_| Refused::Head(HeadError::Late))?,
        }
        .map_err(Refused::Io)?;
    }
}

/// Writes `response`: its head, then its body as it comes, the bytes that
/// are ready written together. Whether the connection may carry another
/// request afterwards.
async fn write_answer<B>(
    wire: &Wire,
    response: Response<B>,
    version: Version,
    method: &Method,
    keep_alive: bool,
) -> io::Result<bool>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let bodiless = method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = answer_framing(&parts.headers, body.size_hint(), version);
    let keep_alive =
        keep_alive && framing != Framing::UntilClose && !connection_has(&parts.headers, "close");
    let mut out = Vec::with_capacity(512);
    write_head(
        &mut out,
        status,
        &parts.headers,
        framing,
        bodiless,
        version,
        keep_alive,
    );
    if bodiless {
        write_all(wire, &out).await?;
        return Ok(keep_alive);
    }
    let mut body = pin!(body);
    // A length-framed body counts down what it may still bring.
    let mut framing = framing;
    loop {
        // What the body has ready joins what waits to be written; only when
        // it has nothing ready is the waiting part written.
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                write_all(wire, &out).await?;
                out.clear();
                next_frame_unless_gone(wire, body.as_mut()).await?
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| io::Error::other(format!("answer body failed: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not sent over HTTP/1.1
        };
        if data.is_empty() {
            continue;
        }
        append_data(&mut out, &data, &mut framing)?;
        if out.len() >= WRITE_AT {
            write_all(wire, &out).await?;
            out.clear();
        }
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    write_all(wire, &out).await?;
    // A body shorter than its length leaves the client waiting for bytes
    // that will not come: only closing tells it.
    Ok(keep_alive && !matches!(framing, Framing::Length(left) if left > 0))
}

/// How an answer's body is framed: by its length when the body or the
/// answer's own `Content-Length` says it, chunked when not, and for an
/// HTTP/1.0 client (no chunks) by closing the connection.
fn answer_framing(headers: &HeaderMap, size: SizeHint, version: Version) -> Framing {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match size.exact().or(announced) {
        Some(n) => Framing::Length(n),
        None if version == Version::HTTP_11 => Framing::Chunked,
        None => Framing::UntilClose,
    }
}

/// Appends a data frame to what waits to be written, framed; a length
/// is counted down by the data (more than it fails the answer).
fn append_data(out: &mut Vec<u8>, data: &[u8], framing: &mut Framing) -> io::Result<()> {
    match framing {
        Framing::Length(left) => {
            let take = data.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            out.extend_from_slice(&data[..take]);
            *left -= take as u64;
            if take < data.len() {
                return Err(io::Error::other("answer body longer than its length"));
            }
        }
        Framing::Chunked => {
            put_chunk_size(out, data.len());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Empty | Framing::UntilClose => out.extend_from_slice(data),
    }
    Ok(())
}

/// The body's next frame, unless the client goes first: an answer that
/// streams (an event stream) ends when its client closes, so the
/// downstream's stream is closed too. What the client sends meanwhile (a
/// pipelined request) is kept for later, up to `PIPELINED_AT_MOST`.
async fn next_frame_unless_gone<B: Body>(
    wire: &Wire,
    mut body: Pin<&mut B>,
) -> io::Result<Option<Result<Frame<B::Data>, B::Error>>> {
    let mut watching = true;
    loop {
        tokio::select! {
            biased;
            frame = poll_fn(|cx| body.as_mut().poll_frame(cx)) => return Ok(frame),
            ready = wire.stream.readable(), if watching => {
                ready?;
                let mut side = wire.read_side();
                match side.try_fill(&wire.stream) {
                    Ok(0) => return Err(io::ErrorKind::ConnectionAborted.into()),
                    Ok(_) => watching = side.buf.len() < PIPELINED_AT_MOST,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// The status line and header lines, framed as `framing` says: any
/// `Content-Length` or `Transfer-Encoding` of the response's own is
/// replaced by the real one.
fn write_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    bodiless: bool,
    version: Version,
    keep_alive: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    let mut has_connection = false;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        has_date |= name == header::DATE;
        has_connection |= name == header::CONNECTION;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let no_length = status.is_informational() || status == StatusCode::NO_CONTENT;
    match framing {
        _ if no_length => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked if !bodiless => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !keep_alive && !has_connection {
        out.extend_from_slice(b"connection: close\r\n");
    } else if keep_alive && version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&http_date());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes all of `bytes`, waiting while the socket's buffer is full, each
/// time at most `server.send_timeout`: a client that takes nothing for that
/// long (a slow reader holding the connection, a peer gone without closing)
/// fails the write. A write that does not wait costs no timer.
async fn write_all(wire: &Wire, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match wire.stream.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::timeout(wire.send_timeout, wire.stream.writable())
                    .await
                    .map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "the client took nothing of its answer for {:?} (server.send_timeout)",
                                wire.send_timeout
                            ),
                        )
                    })??;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Ends a connection after its last answer: lingering when the answer was
/// written, at once when the client is gone or took nothing.
async fn close_after<T>(wire: &Arc<Wire>, written: io::Result<T>) {
    if written.is_ok() {
        close_lingering(wire).await;
    }
}

/// Ends a connection whose client may still be sending (the rest of a
/// refused head, a body left unread, a pipelined request after a last
/// answer). Closing a socket with unread bytes makes the kernel reset the
/// connection, and a client still writing then fails with "connection
/// reset" without reading the answer: a 401 to a large `POST` would never
/// reach the client that must sign in again. So the write side is shut
/// first (the client reads the whole answer, then the end), and what the
/// client still sends is read and dropped until it closes, for at most
/// `LINGER`, as nginx's lingering close does. Not while a request body
/// still reads from the socket (a layer kept it past its answer): the
/// bytes are that body's.
async fn close_lingering(wire: &Arc<Wire>) {
    if Arc::strong_count(wire) > 1 {
        return;
    }
    let socket = socket2::SockRef::from(&wire.stream);
    if socket.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let until = Instant::now() + LINGER;
    // On the heap: the connection's future is held for its whole life.
    let mut dropped = vec![0u8; LINGER_READ];
    loop {
        match tokio::time::timeout_at(until, wire.stream.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        match wire.stream.try_read(&mut dropped) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// The `Date` header's value for now, formatted once a second per thread.
fn http_date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static LAST: Cell<Option<(u64, [u8; 29])>> = const { Cell::new(None) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    LAST.with(|last| match last.get() {
        Some((at, text)) if at == second => text,
        _ => {
            // An IMF-fixdate is always 29 bytes.
            let mut text = [b' '; 29];
            let formatted = httpdate::fmt_http_date(now);
            let n = formatted.len().min(text.len());
            text[..n].copy_from_slice(&formatted.as_bytes()[..n]);
            last.set(Some((second, text)));
            text
        }
    })
}

#[cfg(test)]
mod tests;
