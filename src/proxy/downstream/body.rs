//! The downstream's answer body, decoded from the connection's buffer by
//! the task that reads it.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::{Buf, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::http1::{ExchangeError, Framing};
use super::{recycle, PoolKey, Pooled};

/// The most bytes one frame to the client gathers from what the downstream
/// has already sent.
const GATHER_LIMIT: usize = 64 * 1024;
/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// The most bytes a chunked body's trailer section may take.
const MAX_TRAILER_BYTES: usize = 64 * 1024;

type Polled = Option<Result<Frame<Bytes>, ExchangeError>>;

/// An answer's body: reading it drives its connection, and a frame holds
/// everything the downstream had sent by then (up to `GATHER_LIMIT`), so
/// the client gets one write where the downstream made many small ones. A
/// body read to its end hands its connection back to the pool (when the
/// answer let it stay open); one dropped before closes it.
pub(crate) struct DrivenBody {
    connection: Option<(PoolKey, Pooled)>,
    decoder: Decoder,
    keep_alive: bool,
    /// A frame or end found after data was gathered, handed on next.
    held: Option<Polled>,
}

impl DrivenBody {
    pub(super) fn new(framing: Framing, keep_alive: bool, pooled: Pooled, key: PoolKey) -> Self {
        DrivenBody {
            connection: Some((key, pooled)),
            decoder: Decoder::new(framing),
            keep_alive,
            held: None,
        }
    }

    /// The body is read to its end: its connection goes back to the pool
    /// if the answer allows and nothing follows it.
    fn finish(&mut self) {
        if let Some((key, pooled)) = self.connection.take() {
            if self.keep_alive {
                recycle(key, pooled);
            }
        }
    }

    /// `gathered` now, and `next` after it; or `next` now when nothing was
    /// gathered.
    fn hand_on(&mut self, gathered: Gathered, next: Polled) -> Poll<Polled> {
        if gathered.len() == 0 {
            return Poll::Ready(next);
        }
        self.held = Some(next);
        Poll::Ready(Some(Ok(Frame::data(gathered.into_bytes()))))
    }

    fn fail(&mut self, gathered: Gathered, error: ExchangeError) -> Poll<Polled> {
        self.connection = None;
        self.decoder = Decoder::Done;
        self.hand_on(gathered, Some(Err(error)))
    }
}

impl HttpBody for DrivenBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Polled> {
        let this = self.get_mut();
        if let Some(held) = this.held.take() {
            return Poll::Ready(held);
        }
        let mut gathered = Gathered::default();
        loop {
            let Some((_, pooled)) = this.connection.as_mut() else {
                // Ended (or failed) before; only a body at its end is here.
                return this.hand_on(gathered, None);
            };
            match this.decoder.decode(pooled.conn.buffered(), &mut gathered) {
                Err(e) => return this.fail(gathered, e),
                Ok(Some(trailers)) => {
                    this.finish();
                    let next = trailers.map(|t| Ok(Frame::trailers(t)));
                    return this.hand_on(gathered, next);
                }
                Ok(None) if gathered.len() >= GATHER_LIMIT => {
                    return Poll::Ready(Some(Ok(Frame::data(gathered.into_bytes()))));
                }
                Ok(None) => {}
            }
            match pooled.conn.poll_fill(cx) {
                Poll::Ready(Ok(0)) if this.decoder == Decoder::UntilClose => {
                    // The connection's end is the body's end; it is not
                    // reusable.
                    this.keep_alive = false;
                    this.decoder = Decoder::Done;
                    this.finish();
                    return this.hand_on(gathered, None);
                }
                Poll::Ready(Ok(0)) => return this.fail(gathered, ExchangeError::ClosedMidBody),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(gathered, e.into()),
                Poll::Pending if gathered.len() == 0 => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Some(Ok(Frame::data(gathered.into_bytes())))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.held {
            Some(held) => held.is_none(),
            None => self.decoder == Decoder::Done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.held, &self.decoder) {
            (None, Decoder::Length(n)) => SizeHint::with_exact(*n),
            (None, Decoder::Done) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl std::fmt::Debug for DrivenBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrivenBody")
            .field("pooled", &self.connection.is_some())
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

impl Drop for DrivenBody {
    fn drop(&mut self) {
        // hyper stops reading a body that says it has ended without asking
        // for the end; the connection is still good then.
        if self.is_end_stream() {
            self.finish();
        }
    }
}

/// Where in the body's framing the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoder {
    /// This many bytes of body are still to come.
    Length(u64),
    Chunked(Chunk),
    /// The body ends with the connection.
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

impl Decoder {
    pub(crate) fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunk::Size),
            Framing::UntilClose => Decoder::UntilClose,
        }
    }

    /// Takes all the body data `buf` holds into `out`: `Some(trailers)` once
    /// the body ended, `None` while more must be read.
    pub(crate) fn decode(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Gathered,
    ) -> Result<Option<Option<HeaderMap>>, ExchangeError> {
        loop {
            match *self {
                Decoder::Done => return Ok(Some(None)),
                Decoder::UntilClose => {
                    if !buf.is_empty() {
                        out.push(buf.split().freeze());
                    }
                    return Ok(None);
                }
                Decoder::Length(n) => {
                    let left = take_data(buf, n, out);
                    *self = if left == 0 {
                        Decoder::Done
                    } else {
                        Decoder::Length(left)
                    };
                    if left != 0 {
                        return Ok(None);
                    }
                }
                Decoder::Chunked(ref mut chunk) => match step_chunked(chunk, buf, out)? {
                    Step::Continue => {}
                    Step::NeedMore => return Ok(None),
                    Step::End(trailers) => {
                        *self = Decoder::Done;
                        return Ok(Some(trailers));
                    }
                },
            }
        }
    }
}

enum Step {
    Continue,
    NeedMore,
    End(Option<HeaderMap>),
}

/// One step of a chunked body.
fn step_chunked(
    chunk: &mut Chunk,
    buf: &mut BytesMut,
    out: &mut Gathered,
) -> Result<Step, ExchangeError> {
    match *chunk {
        Chunk::Size => {
            let Some((line, size)) = chunk_size(buf)? else {
                return Ok(Step::NeedMore);
            };
            buf.advance(line);
            *chunk = if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            };
        }
        Chunk::Data(n) => {
            let left = take_data(buf, n, out);
            if left != 0 {
                *chunk = Chunk::Data(left);
                return Ok(Step::NeedMore);
            }
            *chunk = Chunk::DataEnd;
        }
        Chunk::DataEnd => {
            let missing = || ExchangeError::Malformed("no CRLF after a chunk's data");
            match buf.get(..2) {
                Some(b"\r\n") => buf.advance(2),
                Some(_) => return Err(missing()),
                None if buf.first().is_some_and(|b| *b != b'\r') => return Err(missing()),
                None => return Ok(Step::NeedMore),
            }
            *chunk = Chunk::Size;
        }
        Chunk::Trailers => {
            return Ok(match trailers(buf)? {
                Some(trailers) => Step::End(trailers),
                None => Step::NeedMore,
            })
        }
    }
    Ok(Step::Continue)
}

/// Moves up to `n` bytes of `buf` into `out`; how many of the `n` are left.
fn take_data(buf: &mut BytesMut, n: u64, out: &mut Gathered) -> u64 {
    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
    if take > 0 {
        out.push(buf.split_to(take).freeze());
    }
    n - take as u64
}

/// A chunk-size line at the front of `buf`: its length and the size.
/// Strict: 1 to 16 hex digits, then optional whitespace and extensions
/// (`;` and visible characters, spaces, tabs), then CRLF. `None` while the
/// line is incomplete.
fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, ExchangeError> {
    let invalid = || ExchangeError::Malformed("bad chunk size line");
    let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let end = buf.windows(2).position(|w| w == b"\r\n");
    let mut rest = &buf[digits..end.unwrap_or(buf.len())];
    if end.is_none() {
        rest = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    let after_space = rest.trim_ascii_start();
    // Whitespace may only lead to an extension (`;`); an unfinished line
    // may still be waiting for it.
    let extension_ok = match after_space.first() {
        Some(b';') => true,
        Some(_) => false,
        None => rest.is_empty() || end.is_none(),
    };
    let well_formed = digits <= 16
        && (digits > 0 || buf.is_empty())
        && extension_ok
        && rest.iter().all(|b| is_extension_byte(*b));
    if !well_formed || end.unwrap_or(buf.len()) > MAX_CHUNK_LINE {
        return Err(invalid());
    }
    let Some(end) = end else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..digits]).map_err(|_| invalid())?;
    let size = u64::from_str_radix(text, 16).map_err(|_| invalid())?;
    Ok(Some((end + 2, size)))
}

fn is_extension_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// The trailer section at the front of `buf` (ending with an empty line):
/// taken out of the buffer. `None` while incomplete.
fn trailers(buf: &mut BytesMut) -> Result<Option<Option<HeaderMap>>, ExchangeError> {
    if buf.starts_with(b"\r\n") {
        buf.advance(2);
        return Ok(Some(None));
    }
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let (len, map) = match httparse::parse_headers(buf, &mut slots)? {
        httparse::Status::Complete((len, fields)) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for field in fields.iter() {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| ExchangeError::Malformed("bad trailer name"))?;
                let value = HeaderValue::from_bytes(field.value)
                    .map_err(|_| ExchangeError::Malformed("bad trailer value"))?;
                map.append(name, value);
            }
            (len, map)
        }
        httparse::Status::Partial if buf.len() > MAX_TRAILER_BYTES => {
            return Err(ExchangeError::Malformed("trailers larger than 64 KiB"))
        }
        httparse::Status::Partial => return Ok(None),
    };
    buf.advance(len);
    Ok(Some(Some(map)))
}

/// Data frames read in one go: the first kept as it is, copied only when a
/// second joins it.
#[derive(Default)]
pub(crate) struct Gathered {
    first: Option<Bytes>,
    joined: Option<Vec<u8>>,
}

impl Gathered {
    fn push(&mut self, data: Bytes) {
        match (&mut self.joined, self.first.take()) {
            (Some(joined), _) => joined.extend_from_slice(&data),
            (None, None) => self.first = Some(data),
            (None, Some(first)) => {
                let mut joined = Vec::with_capacity(first.len() + data.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                self.joined = Some(joined);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        match (&self.joined, &self.first) {
            (Some(joined), _) => joined.len(),
            (None, Some(first)) => first.len(),
            (None, None) => 0,
        }
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        match (self.joined, self.first) {
            (Some(joined), _) => Bytes::from(joined),
            (None, Some(first)) => first,
            (None, None) => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests;
