//! A request body's data that is already there, taken without waiting: the
//! HTTP/1.1 server hands over a body that arrived with its head as one
//! frame, which the policy reads whole and the forwarder writes with the
//! head, neither through a collection or a copy.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use axum::body::{Body, Bytes};
use bytes::BufMut;
use http_body::Body as _;

/// The body's data that is already there, and what is left of it (`None`
/// when nothing is); its error, if it already failed (a body is not read
/// again after an error: it could end as if complete).
pub(crate) fn take_ready(body: &mut Body) -> Result<(Bytes, Option<Body>), axum::Error> {
    if body.is_end_stream() {
        return Ok((Bytes::new(), None));
    }
    let mut cx = Context::from_waker(Waker::noop());
    Ok(match Pin::new(&mut *body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => {
            let data = frame.into_data().unwrap_or_default();
            let rest = (!body.is_end_stream()).then(|| std::mem::take(body));
            (data, rest)
        }
        Poll::Ready(None) => (Bytes::new(), None),
        Poll::Ready(Some(Err(e))) => return Err(e),
        // Still arriving: read while sending.
        Poll::Pending => (Bytes::new(), Some(std::mem::take(body))),
    })
}

/// Appends a chunk's size line (RFC 9112 §7.1: the size in hex, then
/// CRLF), for both ends that write chunked bodies; without `fmt`, which
/// costs a request more than the line's few bytes.
pub(crate) fn put_chunk_size(out: &mut impl BufMut, size: usize) {
    let mut digits = [0u8; 2 * std::mem::size_of::<usize>()];
    let mut start = digits.len();
    let mut left = size;
    loop {
        start -= 1;
        digits[start] = b"0123456789abcdef"[left & 0xf];
        left >>= 4;
        if left == 0 {
            break;
        }
    }
    out.put_slice(&digits[start..]);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    #[test]
    fn a_whole_body_is_taken_and_nothing_is_left() {
        let mut body = Body::from("{}");
        let (data, rest) = take_ready(&mut body).unwrap();
        assert_eq!(data, "{}");
        assert!(rest.is_none());
        let (data, rest) = take_ready(&mut Body::empty()).unwrap();
        assert!(data.is_empty() && rest.is_none());
    }

    #[test]
    fn a_body_in_parts_leaves_the_rest_and_one_not_there_is_left_whole() {
        let parts: Vec<Result<Bytes, Infallible>> = vec![Ok("[1,".into()), Ok("2]".into())];
        let mut body = Body::from_stream(futures_util::stream::iter(parts));
        let (data, rest) = take_ready(&mut body).unwrap();
        assert_eq!(data, "[1,");
        assert!(rest.is_some());
        let mut waiting =
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, Infallible>>());
        let (data, rest) = take_ready(&mut waiting).unwrap();
        assert!(data.is_empty() && rest.is_some());
    }

    #[test]
    fn a_chunk_size_line_is_the_size_in_lowercase_hex() {
        for size in [0, 1, 9, 10, 15, 16, 255, 4096, 0xdead_beef, usize::MAX] {
            let mut line = Vec::new();
            put_chunk_size(&mut line, size);
            assert_eq!(line, format!("{size:x}\r\n").into_bytes());
        }
    }
}
