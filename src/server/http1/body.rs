//! The client's side of one HTTP/1.1 connection (`Wire`: the socket and
//! what was read from it), and a request's body read from it
//! (`RequestBody`). A body that came whole with its head (nearly every MCP
//! request) is handed over as it lies; a longer one is read from the
//! socket as the stack asks for it, through the same buffer the connection
//! reads heads from, so what follows the body stays for the next request.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::proxy::downstream::{Decoder, ExchangeError, Framing, Gathered};

/// What an unfinished read asks for at least.
const READ_SIZE: usize = 4096;
/// The largest read into the buffer while a body streams in.
const MAX_READ_SIZE: usize = 64 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// One client connection: the socket, shared by the connection (heads,
/// answers) and the body of the request in progress.
pub(crate) struct Wire {
    pub(crate) stream: TcpStream,
    /// How long a write may wait for the client to take any of it
    /// (`server.send_timeout`).
    pub(crate) send_timeout: Duration,
    read: Mutex<ReadSide>,
}

/// What was read and not yet handed on, and where the body in progress is.
pub(crate) struct ReadSide {
    /// Empty and unallocated between requests when nothing more came:
    /// an idle connection holds no buffer.
    pub(crate) buf: BytesMut,
    /// The body of the request in progress; `Done` when none is left.
    body: Decoder,
    /// `Expect: 100-continue` not yet answered: answered when the body is
    /// first read, never when it is refused unread.
    continue_due: usize,
    /// The body failed (malformed, cut off): nothing after it can be read
    /// as a request.
    broken: bool,
    /// Which body is in progress: a body kept past its request must not
    /// read the next one's.
    serial: u64,
}

impl Wire {
    pub(crate) fn new(stream: TcpStream, buf: BytesMut, send_timeout: Duration) -> Self {
        Wire {
            stream,
            send_timeout,
            read: Mutex::new(ReadSide {
                buf,
                body: Decoder::Done,
                continue_due: 0,
                broken: false,
                serial: 0,
            }),
        }
    }

    pub(crate) fn read_side(&self) -> MutexGuard<'_, ReadSide> {
        self.read
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The body after a head with this framing: whole if it is already in
    /// the buffer, read from the socket otherwise.
    pub(crate) fn body(self: &Arc<Self>, framing: Framing, expects_continue: bool) -> RequestBody {
        let mut side = self.read_side();
        match framing {
            Framing::Empty | Framing::Length(0) => RequestBody(Kind::Empty),
            Framing::Length(n) if n <= side.buf.len() as u64 => {
                // At most the buffer's length: fits in a usize.
                let n = usize::try_from(n).unwrap_or(side.buf.len());
                RequestBody(Kind::Whole(Some(side.buf.split_to(n).freeze())))
            }
            framing => {
                side.body = Decoder::new(framing);
                side.continue_due = if expects_continue { CONTINUE.len() } else { 0 };
                side.serial += 1;
                RequestBody(Kind::Streaming(self.clone(), side.serial))
            }
        }
    }
}

impl ReadSide {
    /// Whether the body of the request before was read to its end, so the
    /// next bytes are the next head.
    pub(crate) fn body_done(&self) -> bool {
        self.body == Decoder::Done && !self.broken
    }

    /// Lets the buffer go when it holds nothing.
    pub(crate) fn let_buffer_go(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// Reads what the socket has into the buffer without waiting: the bytes
    /// read (0: the client closed), or `WouldBlock`.
    pub(crate) fn try_fill(&mut self, stream: &TcpStream) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 2 {
            let want = self.buf.len().clamp(READ_SIZE, MAX_READ_SIZE);
            self.buf.reserve(want);
        }
        read_available(stream, &mut self.buf)
    }
}

/// Reads what `stream` has into `buf`'s spare room without waiting: the
/// bytes read (0: the peer closed), or `WouldBlock`. Every read of a
/// client's socket goes through here (its first bytes, heads, bodies).
///
/// A read that leaves room in the buffer has drained the socket (the
/// runtime's epoll is edge-triggered), so the socket is marked not ready,
/// as tokio's own `poll_read` does: `try_read_buf` alone leaves it ready,
/// and the next read (for the next request's head, which has not been
/// sent yet) was a syscall that failed, 0.36 a request at 256 connections
/// (`syscallprobe.mjs`). The closure reports a short read as
/// `WouldBlock`, so `try_io` clears the readiness it saw before the read:
/// an event that came after it is kept.
pub(crate) fn read_available(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.capacity() - buf.len();
    let mut drained = None;
    let read = stream.try_io(Interest::READABLE, || match stream.try_read_buf(buf)? {
        n if 0 < n && n < spare => {
            drained = Some(n);
            Err(io::ErrorKind::WouldBlock.into())
        }
        n => Ok(n),
    });
    match (read, drained) {
        (_, Some(n)) => Ok(n),
        (read, None) => read,
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestBodyError {
    #[error("reading the request body failed")]
    Io(#[from] io::Error),
    #[error("the client closed the connection in the middle of the request body")]
    Closed,
    #[error("the request body's chunked coding is malformed: {0}")]
    Malformed(#[source] ExchangeError),
}

/// A request's body on an HTTP/1.1 connection.
pub(crate) struct RequestBody(Kind);

enum Kind {
    Empty,
    /// Arrived with the head; taken by the first read.
    Whole(Option<Bytes>),
    /// Read from the connection as asked for.
    Streaming(Arc<Wire>, u64),
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match &mut self.0 {
            Kind::Empty => Poll::Ready(None),
            Kind::Whole(data) => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
            Kind::Streaming(wire, serial) => poll_streaming(wire, *serial, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Empty => true,
            Kind::Whole(data) => data.is_none(),
            Kind::Streaming(wire, serial) => {
                let side = wire.read_side();
                side.serial != *serial || side.body_done()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Whole(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Streaming(wire, serial) => match wire.read_side() {
                side if side.serial != *serial => SizeHint::with_exact(0),
                side => match side.body {
                    Decoder::Length(n) => SizeHint::with_exact(n),
                    _ => SizeHint::default(),
                },
            },
        }
    }
}

/// The next frame of a body read from the socket: what the buffer holds,
/// or a read's worth once the socket has more.
fn poll_streaming(
    wire: &Wire,
    serial: u64,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
    let mut side = wire.read_side();
    if side.serial != serial {
        return Poll::Ready(None);
    }
    if side.broken {
        return Poll::Ready(Some(Err(RequestBodyError::Closed)));
    }
    while side.continue_due > 0 {
        let sent = CONTINUE.len() - side.continue_due;
        match wire.stream.try_write(&CONTINUE[sent..]) {
            Ok(n) => side.continue_due -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = ready!(wire.stream.poll_write_ready(cx)) {
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            Err(e) => return Poll::Ready(Some(Err(e.into()))),
        }
    }
    loop {
        let side = &mut *side;
        let mut data = Gathered::default();
        let ended = match side.body.decode(&mut side.buf, &mut data) {
            Ok(ended) => ended.is_some(),
            Err(e) => {
                side.broken = true;
                return Poll::Ready(Some(Err(RequestBodyError::Malformed(e))));
            }
        };
        if data.len() > 0 {
            return Poll::Ready(Some(Ok(Frame::data(data.into_bytes()))));
        }
        if ended {
            return Poll::Ready(None);
        }
        match side.try_fill(&wire.stream) {
            Ok(0) => {
                side.broken = true;
                return Poll::Ready(Some(Err(RequestBodyError::Closed)));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = ready!(wire.stream.poll_read_ready(cx)) {
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            Err(e) => return Poll::Ready(Some(Err(e.into()))),
        }
    }
}
