//! CheckFraming: a request whose length another HTTP parser could read
//! differently is refused before routing (request smuggling, RFC 9112 §6.3).
//! hyper picks one reading of `Transfer-Encoding` and `Content-Length`; a
//! proxy in front of us or the MCP server behind us may pick another. So the
//! only framing accepted is the unambiguous one: no length header, exactly
//! one `Content-Length` of digits, or exactly one `Transfer-Encoding:
//! chunked` without `Content-Length`. Header names that only normalise to
//! a framing header (`Content_Length`) are refused too: CGI-style servers
//! fold `_` into `-`.
//!
//! hyper tidies some ambiguity away before a service sees the request (it
//! drops a `Content-Length` sent with `Transfer-Encoding`, and folds
//! repeated equal lengths into one), so HTTP/1.1 heads are also read raw, as
//! they cross the socket (`ScanHeads`), and the verdict on each travels to
//! the service in request order (`RawHeads`).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, Request, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tower::util::MapErr;
use tower::Layer;

use crate::checkpoint::{gate_layer, Gate, GateService};
use crate::error::FramingError;
pub(crate) use raw_heads::{HeadProgress, RawHeads};

/// Adds `CheckFraming` in front of a connection's service. That service
/// answers every request itself (its error type is `Infallible`), so the
/// only error out of the pair is the refusal, a `FramingError`.
#[derive(Clone, Default)]
pub(crate) struct CheckFramingLayer {
    check: CheckFraming,
}

impl CheckFramingLayer {
    /// Checks the parsed headers, and the raw heads `ScanHeads` read on
    /// this connection.
    pub(crate) fn new(raw_heads: Arc<RawHeads>) -> Self {
        CheckFramingLayer {
            check: CheckFraming {
                raw_heads: Some(raw_heads),
            },
        }
    }
}

/// A service that never fails, as one whose errors are `FramingError`s.
type Framed<S> = MapErr<S, fn(Infallible) -> FramingError>;

impl<S> Layer<S> for CheckFramingLayer {
    type Service = GateService<CheckFraming, Framed<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        let never: fn(Infallible) -> FramingError = |never| match never {};
        gate_layer(self.check.clone()).layer(MapErr::new(inner, never))
    }
}

/// Refuses a request whose framing is ambiguous, raw or parsed.
#[derive(Clone, Default)]
pub(crate) struct CheckFraming {
    raw_heads: Option<Arc<RawHeads>>,
}

impl<B> Gate<Request<B>> for CheckFraming {
    type Refusal = FramingError;

    /// The raw head's verdict is taken as the request is handed over, so
    /// verdicts and requests stay in step.
    fn admit(&self, request: &mut Request<B>) -> Result<(), FramingError> {
        let raw = match (&self.raw_heads, request.version()) {
            (Some(heads), Version::HTTP_10 | Version::HTTP_11) => heads.next_verdict(),
            _ => Ok(()),
        };
        raw.and_then(|()| check_framing(request.headers()))
    }
}

/// Accepts only framing every parser reads the same way.
pub(crate) fn check_framing(headers: &HeaderMap) -> Result<(), FramingError> {
    read_framing(
        headers
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())),
    )
    .map(|_| ())
}

/// How the body after a head is framed, once its framing is unambiguous.
#[derive(Debug, PartialEq)]
enum BodyFraming {
    /// No length header: no body.
    Unframed,
    Length(u64),
    Chunked,
}

/// The framing rules, over a head's fields as (name, value) pairs in any
/// case: the raw scan and the parsed-header check apply this one reading,
/// in one pass, without building a map.
fn read_framing<'a>(
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<BodyFraming, FramingError> {
    let (mut transfer_encoding, mut content_length) = (None, None);
    let (mut transfer_encodings, mut lengths) = (0usize, 0usize);
    let mut folds_to_framing = false;
    for (name, value) in fields {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encodings += 1;
            transfer_encoding = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            content_length = Some(value);
        } else if name.contains(&b'_') {
            folds_to_framing |=
                reads_as(name, b"content-length") || reads_as(name, b"transfer-encoding");
        }
    }
    if transfer_encodings > 1 {
        return Err(FramingError("Transfer-Encoding is sent more than once"));
    }
    if lengths > 1 {
        return Err(FramingError("Content-Length is sent more than once"));
    }
    let mut framing = BodyFraming::Unframed;
    if let Some(coding) = transfer_encoding {
        if !coding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(FramingError(
                "Transfer-Encoding must be exactly `chunked` (no other coding, no list)",
            ));
        }
        if content_length.is_some() {
            return Err(FramingError(
                "Transfer-Encoding and Content-Length are sent together",
            ));
        }
        framing = BodyFraming::Chunked;
    }
    if let Some(digits) = content_length {
        // At most 19 digits: always a u64.
        let length =
            (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit) && digits.len() <= 19)
                .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or(FramingError("Content-Length must be one decimal number"))?;
        framing = BodyFraming::Length(length);
    }
    if folds_to_framing {
        return Err(FramingError(
            "a header name with `_` that reads as Content-Length or Transfer-Encoding",
        ));
    }
    Ok(framing)
}

/// Whether `name` reads as `framing_name` (lowercase) once a lenient
/// server folds its `_` into `-` and its case.
fn reads_as(name: &[u8], framing_name: &[u8]) -> bool {
    name.len() == framing_name.len()
        && name.iter().zip(framing_name).all(|(&b, &f)| {
            let b = if b == b'_' {
                b'-'
            } else {
                b.to_ascii_lowercase()
            };
            b == f
        })
}

/// Where the scanner is in the client's byte stream.
enum Scan {
    /// Reading a request head (the bytes so far).
    Head(Vec<u8>),
    /// Skipping a body of known length.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    /// The line end after a chunk's data.
    ChunkEnd,
    /// Reading trailer lines up to the empty one.
    Trailers(Vec<u8>),
    /// No longer HTTP/1.1 requests we can follow (HTTP/2, an upgrade, a head
    /// hyper refuses anyway, or one whose body length is ambiguous, after
    /// which the connection closes).
    Off,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Heads above this are refused by hyper (`server.max_header_bytes` is at
/// most 1 MiB); the scanner gives up on them.
const MAX_SCANNED_HEAD: usize = 1024 * 1024 + 1024;
const MAX_HEADERS_SCANNED: usize = 1000;
const MAX_LINE: usize = 8 * 1024;

/// Reads HTTP/1.1 request heads as they cross the socket, before hyper
/// normalises them, and records a framing verdict for each.
pub(crate) struct ScanHeads<T> {
    inner: T,
    scan: Scan,
    /// The first bytes, until HTTP/1.1 or HTTP/2 is known.
    sniffed: usize,
    /// The connection began with HTTP/2's preface.
    http2: bool,
    heads: Arc<RawHeads>,
    /// What `heads` last heard of the next head's progress (told only when
    /// it changes: a head that arrives whole costs no lock and no clock).
    reported: HeadProgress,
}

impl<T> ScanHeads<T> {
    /// Scans what `inner` reads, recording verdicts into `heads`.
    pub(crate) fn new(inner: T, heads: Arc<RawHeads>) -> Self {
        ScanHeads {
            inner,
            scan: Scan::Head(Vec::new()),
            sniffed: 0,
            http2: false,
            heads,
            reported: HeadProgress::Between,
        }
    }

    /// Scans `bytes`, then tells `heads` whether a head is left half-read.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        let a_head_ended = self.scan_bytes(bytes);
        let progress = match &self.scan {
            Scan::Off if self.http2 => HeadProgress::Http2,
            Scan::Off => HeadProgress::Unfollowed,
            Scan::Head(head) if !head.is_empty() => match self.reported {
                // Still the head that was arriving before these bytes.
                since @ HeadProgress::Since(_) if !a_head_ended => since,
                _ => HeadProgress::Since(Instant::now()),
            },
            _ => HeadProgress::Between,
        };
        if progress != self.reported {
            self.reported = progress;
            self.heads.set_progress(progress);
        }
    }

    /// Follows the heads and bodies in `bytes`; true when a head ended in
    /// them.
    fn scan_bytes(&mut self, mut bytes: &[u8]) -> bool {
        if self.sniffed_http2(bytes) {
            self.scan = Scan::Off;
            self.http2 = true;
            return false;
        }
        let mut a_head_ended = false;
        while !bytes.is_empty() {
            let (next, used) = match std::mem::replace(&mut self.scan, Scan::Off) {
                Scan::Off => return a_head_ended,
                Scan::Head(head) => {
                    let (next, used) = self.head(head, bytes);
                    // Only a head still arriving stays `Head` with bytes in it.
                    a_head_ended |= !matches!(&next, Scan::Head(head) if !head.is_empty());
                    (next, used)
                }
                Scan::Body(left) => match skip(left, bytes) {
                    (0, used) => (Scan::Head(Vec::new()), used),
                    (left, used) => (Scan::Body(left), used),
                },
                Scan::ChunkSize(line) => match read_line(line, bytes) {
                    Line::Partial(line) => (Scan::ChunkSize(line), bytes.len()),
                    Line::TooLong => (Scan::Off, bytes.len()),
                    Line::Complete(line, used) => (chunk_size(&line), used),
                },
                Scan::ChunkData(left) => match skip(left, bytes) {
                    (0, used) => (Scan::ChunkEnd, used),
                    (left, used) => (Scan::ChunkData(left), used),
                },
                Scan::ChunkEnd => match bytes[0] {
                    b'\r' => (Scan::ChunkEnd, 1),
                    b'\n' => (Scan::ChunkSize(Vec::new()), 1),
                    _ => (Scan::Off, bytes.len()),
                },
                Scan::Trailers(line) => match read_line(line, bytes) {
                    Line::Partial(line) => (Scan::Trailers(line), bytes.len()),
                    Line::TooLong => (Scan::Off, bytes.len()),
                    // The empty line ends the trailers, and the request.
                    Line::Complete(line, used)
                        if line.iter().all(|b| matches!(b, b'\r' | b'\n')) =>
                    {
                        (Scan::Head(Vec::new()), used)
                    }
                    Line::Complete(_, used) => (Scan::Trailers(Vec::new()), used),
                },
            };
            self.scan = next;
            bytes = &bytes[used..];
        }
        a_head_ended
    }

    /// Follows the first bytes until they rule HTTP/2's preface out; true
    /// once the whole preface has arrived.
    fn sniffed_http2(&mut self, bytes: &[u8]) -> bool {
        if self.sniffed >= H2_PREFACE.len() {
            return false;
        }
        let n = bytes.len().min(H2_PREFACE.len() - self.sniffed);
        if bytes[..n] == H2_PREFACE[self.sniffed..self.sniffed + n] {
            self.sniffed += n;
            self.sniffed == H2_PREFACE.len()
        } else {
            self.sniffed = H2_PREFACE.len();
            false
        }
    }

    /// Reads into a request head; once its blank line has arrived, records
    /// its verdict and goes on to what follows it. Only the head is kept,
    /// never the body after it, and a head that arrived in one read is
    /// parsed where it lies.
    fn head(&self, mut head: Vec<u8>, bytes: &[u8]) -> (Scan, usize) {
        let mut used = 0;
        // Empty lines before a request line are ignored (RFC 9112 §2.2).
        if head.is_empty() {
            used = bytes
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
        }
        let rest = &bytes[used..];
        let before = head.len();
        // Parse only once the blank line has arrived: a head sent a byte at
        // a time costs one parse, not one per byte.
        let state = match blank_line_end(&head, rest) {
            Some(cut) if head.is_empty() => self.end_of_head(&rest[..cut]),
            Some(cut) => {
                head.extend_from_slice(&rest[..cut]);
                self.end_of_head(&head)
            }
            None => HeadState::Partial,
        };
        match state {
            HeadState::Partial => {
                head.truncate(before);
                head.extend_from_slice(rest);
                if head.len() > MAX_SCANNED_HEAD {
                    (Scan::Off, bytes.len())
                } else {
                    (Scan::Head(head), bytes.len())
                }
            }
            HeadState::Done(len, next) => (next, used + (len - before)),
            HeadState::Lost => (Scan::Off, bytes.len()),
        }
    }

    /// Parses a head; on a complete one, records its verdict and says what
    /// follows it.
    fn end_of_head(&self, head: &[u8]) -> HeadState {
        // Most heads have a few dozen fields: parsed on the stack, and only a
        // head with more is parsed again with room for the most hyper takes.
        let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
        match self.parse_head(&mut few, head) {
            Err(httparse::Error::TooManyHeaders) => {
                let mut many = vec![httparse::EMPTY_HEADER; MAX_HEADERS_SCANNED];
                self.parse_head(&mut many, head).unwrap_or(HeadState::Lost)
            }
            // hyper refuses it too, and closes the connection.
            parsed => parsed.unwrap_or(HeadState::Lost),
        }
    }

    fn parse_head<'h>(
        &self,
        fields: &mut [httparse::Header<'h>],
        head: &'h [u8],
    ) -> Result<HeadState, httparse::Error> {
        let mut request = httparse::Request::new(fields);
        let len = match request.parse(head)? {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => return Ok(HeadState::Partial),
        };
        // Every field must be one hyper accepts (or hyper refuses the head
        // and closes the connection).
        let mut upgrade = request.method == Some("CONNECT");
        for field in request.headers.iter() {
            let name = field.name.as_bytes();
            if !is_header_name(name) || !is_header_value(field.value) {
                return Ok(HeadState::Lost);
            }
            upgrade |= name.eq_ignore_ascii_case(b"upgrade");
        }
        let verdict = read_framing(
            request
                .headers
                .iter()
                .map(|field| (field.name.as_bytes(), field.value)),
        );
        let next = match &verdict {
            // After an ambiguous head the connection closes; after an
            // upgrade it no longer carries HTTP/1.1 requests.
            Err(_) => Scan::Off,
            Ok(_) if upgrade => Scan::Off,
            Ok(BodyFraming::Chunked) => Scan::ChunkSize(Vec::new()),
            Ok(BodyFraming::Length(0) | BodyFraming::Unframed) => Scan::Head(Vec::new()),
            Ok(BodyFraming::Length(length)) => Scan::Body(*length),
        };
        self.heads.push(verdict.map(|_| ()));
        Ok(HeadState::Done(len, next))
    }
}

/// Fields parsed on the stack before a head is parsed again with room for
/// `MAX_HEADERS_SCANNED`.
const FEW_HEADERS: usize = 64;

/// How many bytes of `rest` end the head begun by `head`: up to and
/// including the line feed of its blank line (`\n\n` or `\n\r\n`, which
/// may straddle the two).
fn blank_line_end(head: &[u8], rest: &[u8]) -> Option<usize> {
    let at = |i: usize, back: usize| -> Option<u8> {
        // The byte `back` places before rest[i], in head ++ rest.
        match i.checked_sub(back) {
            Some(j) => rest.get(j).copied(),
            None => head.len().checked_sub(back - i).map(|j| head[j]),
        }
    };
    // memchr finds the line feeds many bytes at a time; each is then looked
    // at (1,300 instructions a request when every byte was).
    memchr::memchr_iter(b'\n', rest)
        .find(|&i| at(i, 1) == Some(b'\n') || (at(i, 1) == Some(b'\r') && at(i, 2) == Some(b'\n')))
        .map(|i| i + 1)
}

/// A name `http::HeaderName::from_bytes` accepts: 1 to 65,535 token
/// characters (RFC 9110 §5.6.2).
fn is_header_name(name: &[u8]) -> bool {
    !name.is_empty() && name.len() < 1 << 16 && crate::net::is_token(name)
}

/// A value `http::HeaderValue::from_bytes` accepts: no control character
/// but horizontal tab, no DEL.
fn is_header_value(value: &[u8]) -> bool {
    // Without an early exit the loop is vectorised: a value is usually a
    // kilobyte-long bearer token, and this runs for every request.
    value.iter().fold(true, |ok, &b| {
        ok & (((b >= 32) & (b != 127)) | (b == b'\t'))
    })
}

enum HeadState {
    Partial,
    /// The head is `len` bytes long; then comes this.
    Done(usize, Scan),
    Lost,
}

/// Skips up to `left` bytes of a body or chunk: how many are left after
/// `bytes`, and how many of `bytes` were skipped.
fn skip(left: u64, bytes: &[u8]) -> (u64, usize) {
    let n = bytes.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    (left - n as u64, n)
}

/// A line of a chunked body (a chunk size or a trailer).
enum Line {
    /// No line end yet: the bytes so far.
    Partial(Vec<u8>),
    /// Longer than `MAX_LINE`: no longer followed.
    TooLong,
    /// The line with its `\n`, and how many of the new bytes it took.
    Complete(Vec<u8>, usize),
}

fn read_line(mut line: Vec<u8>, bytes: &[u8]) -> Line {
    match bytes.iter().position(|b| *b == b'\n') {
        None if line.len() + bytes.len() > MAX_LINE => Line::TooLong,
        None => {
            line.extend_from_slice(bytes);
            Line::Partial(line)
        }
        Some(at) => {
            line.extend_from_slice(&bytes[..=at]);
            Line::Complete(line, at + 1)
        }
    }
}

/// What follows a chunk-size line.
fn chunk_size(line: &[u8]) -> Scan {
    match httparse::parse_chunk_size(line) {
        Ok(httparse::Status::Complete((_, 0))) => Scan::Trailers(Vec::new()),
        Ok(httparse::Status::Complete((_, size))) => Scan::ChunkData(size),
        _ => Scan::Off,
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ScanHeads<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && !matches!(this.scan, Scan::Off) {
            this.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ScanHeads<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

mod raw_heads;
#[cfg(test)]
mod tests;
