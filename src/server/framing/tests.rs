use super::*;
use axum::http::{HeaderName, HeaderValue, Response, Version};
use proptest::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tower::ServiceExt;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
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
        &[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ][..],
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

/// The raw heads' verdicts are the HTTP/1.1 server's to apply
/// (`http1::tests`, the pipeline whose third head is ambiguous).
#[tokio::test]
async fn check_framing_refuses_ambiguous_parsed_headers_before_the_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = tower::service_fn(move |_request: Request<()>| {
        counted.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok::<_, Infallible>(Response::new("answer")))
    });
    let service = CheckFramingLayer::default().layer(service);
    let request = |version, pairs: &[(&str, &str)]| {
        let mut request = Request::new(());
        *request.version_mut() = version;
        *request.headers_mut() = headers(pairs);
        request
    };
    let answer = service
        .clone()
        .oneshot(request(Version::HTTP_11, &[("content-length", "5")]))
        .await;
    assert_eq!(answer.expect("clean").into_body(), "answer");
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let refused = service
            .clone()
            .oneshot(request(
                version,
                &[("transfer-encoding", "chunked"), ("content-length", "5")],
            ))
            .await;
        assert!(refused.is_err(), "{version:?}: the parsed headers' own");
    }
    assert!(service
        .clone()
        .oneshot(request(Version::HTTP_2, &[]))
        .await
        .is_ok());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// On an HTTP/1.1 connection the server judged the raw head and built the
/// request from its fields (`http1::tests`: an ambiguous head is answered
/// 400 and never reaches the service); the layer does not judge again.
#[tokio::test]
async fn heads_judged_raw_are_not_judged_again() {
    let service = tower::service_fn(|_request: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(Response::new("answer")))
    });
    let service = CheckFramingLayer::judged_raw().layer(service);
    let mut request = Request::new(());
    *request.headers_mut() = headers(&[("transfer-encoding", "chunked"), ("content-length", "5")]);
    let answer = service.oneshot(request).await;
    assert_eq!(answer.expect("passed on").into_body(), "answer");
}

#[test]
fn raw_fields_are_read_whatever_their_case() {
    let read = |fields: &[(&str, &str)]| {
        read_framing(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))).ok()
    };
    assert_eq!(read(&[("Content-Length", "5")]), Some(Framing::Length(5)));
    assert_eq!(
        read(&[("TRANSFER-ENCODING", "Chunked")]),
        Some(Framing::Chunked)
    );
    assert_eq!(
        read(&[("Host", "x"), ("X_Forwarded", "y")]),
        Some(Framing::Empty)
    );
    for refused in [
        &[("Content-Length", "5"), ("content-length", "5")][..],
        &[("Transfer-Encoding", "chunked"), ("CONTENT-LENGTH", "5")],
        &[("Content_LENGTH", "5")],
        &[("TRANSFER_encoding", "chunked")],
    ] {
        assert_eq!(read(refused), None, "{refused:?}");
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
