//! A connection's first bytes: HTTP/2's preface (prior knowledge; hyper
//! serves it) or anything else (an HTTP/1.1 head; `http1.rs` serves it).
//! Only as many bytes are read as tell the two apart, and they are kept:
//! the HTTP/1.1 side starts from them, the HTTP/2 side reads them again
//! through `Prefixed`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::http1::read_available;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The first read's size: a whole head, usually.
const FIRST_READ: usize = 4096;

/// What a connection began with.
pub(crate) enum First {
    /// HTTP/2's whole preface, and whatever came with it.
    Http2(Bytes),
    /// The bytes read so far (empty when the client closed at once).
    Http1(BytesMut),
}

/// Reads until the bytes are HTTP/2's preface or cannot be.
pub(crate) async fn first_bytes(stream: &TcpStream) -> io::Result<First> {
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        match read_available(stream, &mut buf) {
            Ok(0) => return Ok(First::Http1(buf)),
            Ok(_) => {
                let n = buf.len().min(H2_PREFACE.len());
                if buf[..n] != H2_PREFACE[..n] {
                    return Ok(First::Http1(buf));
                }
                if n == H2_PREFACE.len() {
                    return Ok(First::Http2(buf.freeze()));
                }
                if buf.capacity() == buf.len() {
                    buf.reserve(FIRST_READ);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.readable().await?,
            Err(e) => return Err(e),
        }
    }
}

/// The socket, with the bytes already read from it in front.
pub(crate) struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl Prefixed {
    pub(crate) fn new(prefix: Bytes, stream: TcpStream) -> Self {
        Prefixed { prefix, stream }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
