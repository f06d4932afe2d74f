use std::convert::Infallible;

use axum::body::Body;
use axum::http::StatusCode;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

use super::*;
use crate::error::ProxyError;

fn answering(status: StatusCode) -> BoxCloneSyncService<Request<Body>, Response<Body>, Infallible> {
    BoxCloneSyncService::new(tower::service_fn(
        move |_request: Request<Body>| async move {
            let mut response = Response::new(Body::from("kept"));
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        },
    ))
}

#[tokio::test]
async fn each_answer_is_counted_by_route_template_method_and_status_class() {
    let metrics = Metrics::new(&[]);
    // Outside a router there is no route template: never the raw path.
    let response = RecordHttp::layer(metrics.clone())
        .layer(answering(StatusCode::NOT_FOUND))
        .oneshot(
            Request::post("/items/secret-42")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "the answer is untouched"
    );
    let counted = |labels: [&str; 3]| metrics.http_requests.with_label_values(&labels).get();
    assert_eq!(counted(["unmatched", "POST", "4xx"]), 1);

    // Behind routing, the template the request matched.
    let router = axum::Router::new()
        .route_service("/items/{id}", answering(StatusCode::OK))
        .layer(RecordHttp::layer(metrics.clone()));
    let response = router
        .oneshot(
            Request::get("/items/secret-42")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(counted(["/items/{id}", "GET", "2xx"]), 1);
    assert_eq!(
        metrics
            .http_duration
            .with_label_values(&["/items/{id}", "GET"])
            .get_sample_count(),
        1
    );
}

#[tokio::test]
async fn a_failure_without_an_answer_is_not_counted() {
    let metrics = Metrics::new(&[]);
    let failing = tower::service_fn(|_request: Request<Body>| async {
        Err::<Response<Body>, _>(ProxyError::SessionNotFound)
    });
    let failed = RecordHttp::layer(metrics.clone())
        .layer(failing)
        .oneshot(Request::new(Body::empty()))
        .await;
    assert!(matches!(failed, Err(ProxyError::SessionNotFound)));
    for class in ["2xx", "4xx", "5xx"] {
        assert_eq!(
            metrics
                .http_requests
                .with_label_values(&["unmatched", "GET", class])
                .get(),
            0
        );
    }
}

/// A request to the endpoint at `/mcp`, with a query the label must not
/// show.
fn to_endpoint(method: Method) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri("/mcp?raw=1")
        .body(Body::empty())
        .expect("request")
}

#[tokio::test]
async fn a_route_templates_series_are_the_registrys_and_counted_each_time() {
    let metrics = Metrics::new(&[]);
    let template = RouteTemplate::new("/mcp");
    for (method, status) in [
        (Method::POST, StatusCode::OK),
        (Method::POST, StatusCode::OK),
        (Method::POST, StatusCode::FORBIDDEN),
        (Method::GET, StatusCode::OK),
    ] {
        RecordHttp::for_route(metrics.clone(), template.clone())
            .layer(answering(status))
            .oneshot(to_endpoint(method))
            .await
            .expect("infallible");
    }
    let counted = |labels: [&str; 3]| metrics.http_requests.with_label_values(&labels).get();
    assert_eq!(counted(["/mcp", "POST", "2xx"]), 2);
    assert_eq!(counted(["/mcp", "POST", "4xx"]), 1);
    assert_eq!(counted(["/mcp", "GET", "2xx"]), 1);
    let timed = |method: &str| {
        metrics
            .http_duration
            .with_label_values(&["/mcp", method])
            .get_sample_count()
    };
    assert_eq!((timed("POST"), timed("GET")), (3, 1));
    // What `/metrics` shows: the same series, never the raw path.
    let text = metrics.render();
    assert!(
        text.contains(r#"http_requests_total{method="POST",route="/mcp",status_class="2xx"} 2"#),
        "{text}"
    );
    assert!(!text.contains("raw=1"), "{text}");
}

#[tokio::test]
async fn a_route_template_counts_nothing_when_metrics_are_off() {
    let metrics = Metrics::disabled();
    let template = RouteTemplate::new("/mcp");
    RecordHttp::for_route(metrics.clone(), template.clone())
        .layer(answering(StatusCode::OK))
        .oneshot(to_endpoint(Method::POST))
        .await
        .expect("infallible");
    assert!(!metrics.render().contains("/mcp"));
}

#[test]
fn a_methods_label_is_its_name_or_other() {
    for method in [
        Method::GET,
        Method::POST,
        Method::DELETE,
        Method::OPTIONS,
        Method::HEAD,
        Method::PUT,
        Method::PATCH,
    ] {
        assert_eq!(METHODS[method_index(&method)], method.as_str());
    }
    for method in [
        Method::TRACE,
        Method::CONNECT,
        Method::from_bytes(b"PURGE").unwrap(),
    ] {
        assert_eq!(METHODS[method_index(&method)], "other");
    }
}
