//! A request head, read once: `httparse` finds its fields, the framing
//! rules (`framing::read_framing`) read them raw, before anything tidies
//! them, and the `http::Request` the stack sees is built from the same
//! bytes (values and path share the head's buffer; nothing is copied).

use std::mem::MaybeUninit;
use std::ops::Range;

use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Uri, Version};
use bytes::{Buf, Bytes, BytesMut};

use crate::error::FramingError;
use crate::proxy::downstream::Framing;
use crate::proxy::headers::NotedLines;
use crate::server::framing::read_framing;

/// Header lines the stack may add to a request after its head is read
/// (`x-request-id`, set when the client sent none), for which its map has
/// room from the start.
pub(super) const ADDED_BY_THE_STACK: usize = 2;

/// Fields parsed on the stack before a head is parsed again with room for
/// `server.max_headers`.
pub(super) const FEW_HEADERS: usize = 48;

/// Why a head is refused before the stack sees it: answered here, and the
/// connection closed (what follows it cannot be told apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("the request head is not valid HTTP/1.1")]
    Malformed,
    #[error("the request head is larger than server.max_header_bytes")]
    TooLarge,
    #[error("the request head has more fields than server.max_headers")]
    TooManyFields,
    #[error("an HTTP/1.0 request cannot have a chunked body")]
    ChunkedHttp10,
    #[error("the request head did not arrive within server.header_timeout")]
    Late,
}

impl HeadError {
    /// The answer, whole: status line, headers and a line of text.
    pub(crate) fn answer(self) -> &'static [u8] {
        match self {
            HeadError::Malformed => b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 36\r\nconnection: close\r\n\r\nThe request head is not valid HTTP.\n",
            HeadError::ChunkedHttp10 => b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 46\r\nconnection: close\r\n\r\nHTTP/1.0 has no chunked transfer coding here.\n",
            HeadError::Late => b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 41\r\nconnection: close\r\n\r\nThe request head did not arrive in time.\n",
            HeadError::TooLarge | HeadError::TooManyFields => b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\ncontent-length: 41\r\nconnection: close\r\n\r\nThe request head is larger than allowed.\n",
        }
    }
}

/// A complete head, as the stack will see it, and what the connection
/// needs to know about it.
pub(crate) struct Head {
    pub(crate) request: Request<()>,
    /// The body's framing, or why it is ambiguous (the server answers that
    /// with 400 and closes the connection).
    pub(crate) framing: Result<Framing, FramingError>,
    /// Whether the client lets the connection carry another request.
    pub(crate) keep_alive: bool,
    pub(crate) expects_continue: bool,
}

/// The head at the front of `buf`, taken out of it once complete; `None`
/// while it has not all arrived. Empty lines before it are dropped (RFC
/// 9112 §2.2). `fields` is scratch space, kept by the connection between
/// requests.
pub(crate) fn take_head(
    buf: &mut BytesMut,
    max_bytes: usize,
    max_fields: usize,
    fields: &mut Vec<(Range<usize>, Range<usize>)>,
) -> Result<Option<Head>, HeadError> {
    let blank = buf
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    buf.advance(blank);
    if buf.is_empty() {
        return Ok(None);
    }
    let Some(parsed) = parse(buf, max_fields, fields)? else {
        return if buf.len() > max_bytes {
            Err(HeadError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if parsed.len > max_bytes {
        return Err(HeadError::TooLarge);
    }
    if fields.len() > max_fields {
        return Err(HeadError::TooManyFields);
    }
    let head = buf.split_to(parsed.len).freeze();
    build(head, parsed, fields).map(Some)
}

/// What `httparse` found, as places in the buffer.
struct Parsed {
    len: usize,
    method: Range<usize>,
    path: Range<usize>,
    version: Version,
}

fn parse(
    buf: &[u8],
    max_fields: usize,
    fields: &mut Vec<(Range<usize>, Range<usize>)>,
) -> Result<Option<Parsed>, HeadError> {
    // Slots left uninitialised: `httparse` writes those it fills, and
    // filling all 48 with empty headers first was 1.5 KiB written a head.
    let mut few = [const { MaybeUninit::uninit() }; FEW_HEADERS];
    match parse_into(buf, &mut few, fields) {
        Err(httparse::Error::TooManyHeaders) if max_fields > FEW_HEADERS => {
            let mut many = vec![MaybeUninit::uninit(); max_fields];
            parse_into(buf, &mut many, fields).map_err(refusal)
        }
        parsed => parsed.map_err(refusal),
    }
}

fn refusal(error: httparse::Error) -> HeadError {
    match error {
        httparse::Error::TooManyHeaders => HeadError::TooManyFields,
        _ => HeadError::Malformed,
    }
}

fn parse_into<'b>(
    buf: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
    fields: &mut Vec<(Range<usize>, Range<usize>)>,
) -> Result<Option<Parsed>, httparse::Error> {
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, slots)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let at = |part: &[u8]| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + part.len()
    };
    fields.clear();
    fields.extend(
        request
            .headers
            .iter()
            .map(|field| (at(field.name.as_bytes()), at(field.value))),
    );
    let (Some(method), Some(path), Some(version)) = (request.method, request.path, request.version)
    else {
        return Err(httparse::Error::Token);
    };
    Ok(Some(Parsed {
        len,
        method: at(method.as_bytes()),
        path: at(path.as_bytes()),
        version: if version == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        },
    }))
}

fn build(
    head: Bytes,
    parsed: Parsed,
    fields: &[(Range<usize>, Range<usize>)],
) -> Result<Head, HeadError> {
    let framing = read_framing(
        fields
            .iter()
            .map(|(name, value)| (&head[name.clone()], &head[value.clone()])),
    );
    let http10 = parsed.version == Version::HTTP_10;
    if http10 && matches!(framing, Ok(Framing::Chunked)) {
        return Err(HeadError::ChunkedHttp10);
    }
    let method = Method::from_bytes(&head[parsed.method]).map_err(|_| HeadError::Malformed)?;
    let uri = Uri::from_maybe_shared(head.slice(parsed.path)).map_err(|_| HeadError::Malformed)?;
    // A full map regrows when the stack adds a line, rehashing every line
    // (callgrind: 700 instructions a request).
    let mut headers = HeaderMap::with_capacity(fields.len() + ADDED_BY_THE_STACK);
    let mut noted = NotedLines::default();
    for (name, value) in fields {
        let name =
            crate::header_name::from_wire(&head[name.clone()]).map_err(|_| HeadError::Malformed)?;
        // Filed whatever it says, a `Connection` line too: the policy's
        // `request` map reads the client's headers.
        noted.note(&name, &head[value.clone()]);
        let value = HeaderValue::from_maybe_shared(head.slice(value.clone()))
            .map_err(|_| HeadError::Malformed)?;
        headers.append(name, value);
    }
    let keep_alive = noted.persistent(parsed.version);
    // HTTP/1.0 has no interim answers.
    let expects_continue = !http10
        && noted.expect
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = parsed.version;
    *request.headers_mut() = headers;
    Ok(Head {
        request,
        framing,
        keep_alive,
        expects_continue,
    })
}
