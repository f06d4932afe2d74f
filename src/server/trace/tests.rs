use std::convert::Infallible;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use bytes::Bytes;
use futures_util::FutureExt;
use http_body::Body as _;
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt};

use super::*;
use crate::server::test_logs::logged_while;

/// Answers with `status` and `body`, logging inside the request.
fn answering(
    status: StatusCode,
    body: &'static str,
) -> impl tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
       + Clone {
    tower::service_fn(move |_request: Request<Body>| async move {
        tracing::info!("inside the handler");
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        Ok::<_, Infallible>(response)
    })
}

/// The answer to `request` through the layer (the services here answer at
/// once).
fn traced<S>(service: S, request: Request<Body>) -> Response<Body>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    TraceRequestsLayer
        .layer(service)
        .oneshot(request)
        .now_or_never()
        .expect("ready")
        .unwrap()
}

/// Sends one request through the layer and reads the whole answer, in the
/// logging scope.
fn exchange<S>(service: S, uri: &str) -> (StatusCode, Result<Bytes, String>)
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let request = Request::post(uri)
        .header("x-request-id", "req-7")
        .body(Body::empty())
        .unwrap();
    let response = traced(service, request);
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .now_or_never()
        .expect("ready")
        .map(|collected| collected.to_bytes())
        .map_err(|e| e.to_string());
    (status, body)
}

#[test]
fn a_requests_logs_are_written_in_its_span_without_its_query() {
    let (answer, logs) = logged_while(tracing::Level::DEBUG, || {
        exchange(
            answering(StatusCode::OK, "fine"),
            "/mcp?code=secret-code&state=s",
        )
    });
    assert_eq!(answer, (StatusCode::OK, Ok(Bytes::from("fine"))));
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.len(), 4, "{logs}");
    for (line, event) in lines.iter().zip([
        "started processing request",
        "inside the handler",
        "finished processing request",
        "end of stream",
    ]) {
        assert!(line.contains(event), "{line}");
        assert!(
            line.contains(r#"request{method=POST path=/mcp request_id="req-7"}"#),
            "{line}"
        );
    }
    assert!(lines[2].contains("status=200") && lines[2].contains("latency="));
    assert!(
        !logs.contains("secret-code"),
        "a query never reaches a log: {logs}"
    );
}

#[test]
fn a_server_error_is_logged_as_a_failure_and_nothing_else_at_warn() {
    let (answer, logs) = logged_while(tracing::Level::WARN, || {
        exchange(answering(StatusCode::BAD_GATEWAY, "down"), "/mcp")
    });
    assert_eq!(answer.0, StatusCode::BAD_GATEWAY);
    assert_eq!(logs.lines().count(), 1, "{logs}");
    assert!(
        logs.contains("WARN") && logs.contains("response failed"),
        "{logs}"
    );
    assert!(logs.contains("Status code: 502 Bad Gateway"), "{logs}");

    let (answer, logs) = logged_while(tracing::Level::WARN, || {
        exchange(answering(StatusCode::FORBIDDEN, "no"), "/mcp")
    });
    assert_eq!(answer.0, StatusCode::FORBIDDEN);
    assert_eq!(logs, "", "a refusal is not the server failing");
}

#[test]
fn a_body_that_fails_reaches_its_caller_without_a_warning() {
    // An event stream closed for being idle ends with an error, every
    // time: a `warn` for each would be noise (tower-http's classifier did
    // not write one either).
    let failing = tower::service_fn(|_request: Request<Body>| async {
        let frames = futures_util::stream::iter([
            Ok(Bytes::from("part")),
            Err(std::io::Error::other("idle for 5m")),
        ]);
        Ok::<_, Infallible>(Response::new(Body::from_stream(frames)))
    });
    let ((status, body), logs) = logged_while(tracing::Level::WARN, || exchange(failing, "/mcp"));
    assert_eq!(status, StatusCode::OK);
    assert!(body.unwrap_err().contains("idle for 5m"));
    assert_eq!(logs, "");
}

#[test]
fn the_answers_body_keeps_its_length_and_end() {
    // Recorded, the body is wrapped to be polled in the span; at `warn`
    // the span is off and the body goes on as it is: both keep them.
    for level in [tracing::Level::DEBUG, tracing::Level::WARN] {
        let get = || Request::get("/").body(Body::empty()).unwrap();
        let ((body, empty), _) = logged_while(level, || {
            (
                traced(answering(StatusCode::OK, "twelve bytes"), get()).into_body(),
                traced(answering(StatusCode::NO_CONTENT, ""), get()).into_body(),
            )
        });
        assert_eq!(body.size_hint().exact(), Some(12), "{level}");
        assert!(!body.is_end_stream(), "{level}");
        assert!(empty.is_end_stream(), "{level}");
    }
}
