//! CheckFraming: a request whose length another HTTP parser could read
//! differently is refused before routing (request smuggling, RFC 9112 §6.3).
//! hyper picks one reading of `Transfer-Encoding` and `Content-Length`; a
//! proxy in front of us or the MCP server behind us may pick another. So the
//! only framing accepted is the unambiguous one: no length header, exactly
//! one `Content-Length` of digits, or exactly one `Transfer-Encoding:
//! chunked` without `Content-Length`. Header names that only normalise to
//! a framing header (`Content_Length`) are refused too: CGI-style servers
//! fold `_` into `-`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{header, HeaderMap, Request, Response};
use tower::{Layer, Service};

use crate::error::FramingError;

#[derive(Debug, Clone, Copy, Default)]
pub struct CheckFramingLayer;

impl<S> Layer<S> for CheckFramingLayer {
    type Service = CheckFraming<S>;
    fn layer(&self, inner: S) -> CheckFraming<S> {
        CheckFraming { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CheckFraming<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for CheckFraming<S>
where
    S: Service<Request<B>, Response = Response<R>, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = Response<R>;
    type Error = FramingError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, FramingError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), FramingError>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Err(error) = check_framing(request.headers()) {
            return Box::pin(std::future::ready(Err(error)));
        }
        let future = self.inner.call(request);
        Box::pin(async move {
            match future.await {
                Ok(response) => Ok(response),
                Err(never) => match never {},
            }
        })
    }
}

/// Accepts only framing every parser reads the same way.
pub fn check_framing(headers: &HeaderMap) -> Result<(), FramingError> {
    let mut transfer_encodings = headers.get_all(header::TRANSFER_ENCODING).iter();
    let transfer_encoding = transfer_encodings.next();
    if transfer_encodings.next().is_some() {
        return Err(FramingError("Transfer-Encoding is sent more than once"));
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let content_length = lengths.next();
    if lengths.next().is_some() {
        return Err(FramingError("Content-Length is sent more than once"));
    }
    if let Some(coding) = transfer_encoding {
        if !coding.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(FramingError(
                "Transfer-Encoding must be exactly `chunked` (no other coding, no list)",
            ));
        }
        if content_length.is_some() {
            return Err(FramingError(
                "Transfer-Encoding and Content-Length are sent together",
            ));
        }
    }
    if let Some(length) = content_length {
        let digits = length.as_bytes();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits.len() > 19 {
            return Err(FramingError("Content-Length must be one decimal number"));
        }
    }
    for name in headers.keys() {
        let name = name.as_str();
        if name.contains('_') {
            let folded = name.replace('_', "-");
            if folded == header::CONTENT_LENGTH.as_str()
                || folded == header::TRANSFER_ENCODING.as_str()
            {
                return Err(FramingError(
                    "a header name with `_` that reads as Content-Length or Transfer-Encoding",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn unambiguous_framing_passes() {
        for pairs in [
            &[][..],
            &[("content-length", "0")],
            &[("content-length", "1234")],
            &[("transfer-encoding", "chunked")],
            &[("transfer-encoding", "Chunked")],
            &[("x_user_email", "a@b")],
        ] {
            assert!(check_framing(&headers(pairs)).is_ok(), "{pairs:?}");
        }
    }

    #[test]
    fn every_ambiguous_framing_is_refused() {
        for pairs in [
            &[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")][..],
            &[("transfer-encoding", "chunked, chunked")],
            &[("transfer-encoding", "gzip, chunked")],
            &[("transfer-encoding", "chunked, gzip")],
            &[("transfer-encoding", "gzip")],
            &[("transfer-encoding", "identity")],
            &[("transfer-encoding", "chunked;ext=1")],
            &[("transfer-encoding", "")],
            &[("transfer-encoding", "chunked"), ("content-length", "5")],
            &[("content-length", "5"), ("content-length", "5")],
            &[("content-length", "5"), ("content-length", "6")],
            &[("content-length", "5, 5")],
            &[("content-length", "+5")],
            &[("content-length", "-1")],
            &[("content-length", "0x10")],
            &[("content-length", "1e3")],
            &[("content-length", "")],
            &[("content-length", "99999999999999999999")],
            &[("content_length", "5")],
            &[("transfer_encoding", "chunked")],
        ] {
            assert!(check_framing(&headers(pairs)).is_err(), "{pairs:?}");
        }
    }

    proptest! {
        /// Any Transfer-Encoding value other than `chunked` is refused,
        /// whatever else the request carries.
        #[test]
        fn any_transfer_coding_but_chunked_is_refused(coding in "[ -~]{0,24}") {
            prop_assume!(!coding.trim().eq_ignore_ascii_case("chunked"));
            prop_assume!(HeaderValue::from_str(&coding).is_ok());
            prop_assert!(check_framing(&headers(&[("transfer-encoding", &coding)])).is_err());
        }

        /// A Content-Length is accepted exactly when it is one plain number.
        #[test]
        fn content_length_is_accepted_only_as_digits(value in "[ -~]{0,24}") {
            prop_assume!(HeaderValue::from_str(&value).is_ok());
            let digits = !value.is_empty()
                && value.len() <= 19
                && value.bytes().all(|b| b.is_ascii_digit());
            prop_assert_eq!(
                check_framing(&headers(&[("content-length", &value)])).is_ok(),
                digits
            );
        }
    }
}
