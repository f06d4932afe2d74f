//! CheckFraming: a request whose length another HTTP parser could read
//! differently is refused before routing (request smuggling, RFC 9112 §6.3).
//! Our server picks one reading of `Transfer-Encoding` and `Content-Length`; a
//! proxy in front of us or the MCP server behind us may pick another. So the
//! only framing accepted is the unambiguous one: no length header, exactly
//! one `Content-Length` of digits, or exactly one `Transfer-Encoding:
//! chunked` without `Content-Length`. Header names that only normalise to
//! a framing header (`Content_Length`) are refused too: CGI-style servers
//! fold `_` into `-`.
//!
//! The rules (`read_framing`) are read over a head's fields as they came:
//! the HTTP/1.1 server (`http1.rs`) applies them to each raw head before
//! it builds a request from those same fields, and answers an ambiguous
//! one itself; `CheckFraming` applies them to the parsed headers of each
//! HTTP/2 request (hyper parsed those), once per request either way.

use std::convert::Infallible;

use axum::http::{HeaderMap, Request};
use tower::util::{Either, MapErr};
use tower::Layer;

use crate::checkpoint::{gate_layer, Gate, GateService};
use crate::error::FramingError;
use crate::proxy::downstream::Framing;
/// Adds `CheckFraming` in front of a connection's service. That service
/// answers every request itself (its error type is `Infallible`), so the
/// only error out of the pair is the refusal, a `FramingError`.
#[derive(Clone, Default)]
pub(crate) struct CheckFramingLayer {
    check: CheckFraming,
    judged_raw: bool,
}

impl CheckFramingLayer {
    /// For a connection whose heads `http1.rs` reads: it judges each raw
    /// head by these rules before building the request from the same
    /// fields, so its parsed headers are not judged again (the same work
    /// twice a request, 800 instructions).
    pub(crate) fn judged_raw() -> Self {
        CheckFramingLayer {
            check: CheckFraming,
            judged_raw: true,
        }
    }
}

/// A service that never fails, as one whose errors are `FramingError`s.
type Framed<S> = MapErr<S, fn(Infallible) -> FramingError>;

impl<S> Layer<S> for CheckFramingLayer {
    type Service = Either<GateService<CheckFraming, Framed<S>>, Framed<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        let never: fn(Infallible) -> FramingError = |never| match never {};
        let inner = MapErr::new(inner, never);
        if self.judged_raw {
            Either::Right(inner)
        } else {
            Either::Left(gate_layer(self.check.clone()).layer(inner))
        }
    }
}

/// Refuses a request whose parsed headers frame it ambiguously.
#[derive(Clone, Default)]
pub(crate) struct CheckFraming;

impl<B> Gate<Request<B>> for CheckFraming {
    type Refusal = FramingError;

    fn admit(&self, request: &mut Request<B>) -> Result<(), FramingError> {
        check_framing(request.headers())
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

/// The framing rules, over a head's fields as (name, value) pairs in any
/// case: the HTTP/1.1 server's raw reading and the parsed-header check
/// apply this one reading, in one pass, without building a map. A request
/// without a length header has no body (`Framing::Empty`); it is never
/// framed by the connection's close.
pub(crate) fn read_framing<'a>(
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<Framing, FramingError> {
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
        } else {
            // Only a name with a `_` can read so, and `reads_as` compares
            // lengths first: no search for the `_` in every name.
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
    let mut framing = Framing::Empty;
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
        framing = Framing::Chunked;
    }
    if let Some(digits) = content_length {
        // At most 19 digits: always a u64.
        let length =
            (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit) && digits.len() <= 19)
                .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or(FramingError("Content-Length must be one decimal number"))?;
        framing = Framing::Length(length);
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

#[cfg(test)]
mod tests;
