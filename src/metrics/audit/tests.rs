use std::convert::Infallible;

use axum::body::Body;
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt};

use super::*;
use crate::error::ProxyError;
use crate::metrics::Metrics;

fn counted(metrics: &Metrics, labels: [&str; 4]) -> u64 {
    metrics.mcp_requests.with_label_values(&labels).get()
}

#[tokio::test]
async fn an_answered_request_is_counted_with_the_facts_the_layers_below_found() {
    let metrics = Metrics::new(&["whoami".into()]);
    let labels = metrics
        .route("default")
        .mcp_labels(Some("tools/call"), Some("whoami"));
    let stub = tower::service_fn(move |request: Request<Body>| async move {
        let slot = request
            .extensions()
            .get::<AuditSlot>()
            .cloned()
            .expect("a slot for the layers below");
        slot.update(|facts| {
            facts.sub = Some("alice".into());
            facts.mcp_labels = labels;
            facts.mcp_method = Some("tools/call".into());
            facts.tool = Some("whoami".into());
            facts.decision = Some("allow");
        });
        let mut response = Response::new(Body::from("the answer"));
        *response.status_mut() = StatusCode::ACCEPTED;
        Ok::<_, Infallible>(response)
    });
    let service = Audit::layer(metrics.route("default"), true).layer(stub);
    let response = service
        .oneshot(Request::new(Body::empty()))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"the answer", "the answer passes unchanged");
    assert_eq!(
        counted(&metrics, ["default", "tools/call", "whoami", "allow"]),
        1
    );
}

#[tokio::test]
async fn without_a_verdict_the_status_speaks_and_an_error_without_an_answer_is_not_counted() {
    let metrics = Metrics::new(&[]);
    let unauthorized = tower::service_fn(|_request: Request<Body>| async {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        Ok::<_, ProxyError>(response)
    });
    let service = Audit::layer(metrics.route("default"), false).layer(unauthorized);
    let response = service
        .oneshot(Request::new(Body::empty()))
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        counted(&metrics, ["default", "none", "", "unauthenticated"]),
        1
    );

    let failing = tower::service_fn(|_request: Request<Body>| async {
        Err::<Response<Body>, _>(ProxyError::SessionNotFound)
    });
    let service = Audit::layer(metrics.route("default"), false).layer(failing);
    let failed = service.oneshot(Request::new(Body::empty())).await;
    assert!(matches!(failed, Err(ProxyError::SessionNotFound)));
    assert_eq!(counted(&metrics, ["default", "none", "", "error"]), 0);
}

#[tokio::test]
async fn with_neither_metrics_nor_the_log_a_request_passes_untouched() {
    let stub = tower::service_fn(|request: Request<Body>| async move {
        assert!(request.extensions().get::<AuditSlot>().is_none());
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    let response = Audit::layer(crate::metrics::Metrics::disabled().route("default"), false)
        .layer(stub)
        .oneshot(Request::new(Body::empty()))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn each_route_counts_its_own_requests_and_an_unknown_route_counts_none() {
    let metrics = Metrics::with_routes(&[], &["wiki", "github"]);
    let answered = || {
        tower::service_fn(|_request: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        })
    };
    for route in ["wiki", "wiki", "github", "not-configured"] {
        let response = Audit::layer(metrics.route(route), false)
            .layer(answered())
            .oneshot(Request::new(Body::empty()))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(counted(&metrics, ["wiki", "none", "", "allow"]), 2);
    assert_eq!(counted(&metrics, ["github", "none", "", "allow"]), 1);
    let text = metrics.render();
    assert!(!text.contains("not-configured"), "{text}");
}

#[tokio::test]
async fn an_unknown_route_without_the_log_passes_untouched() {
    let metrics = Metrics::with_routes(&[], &["wiki"]);
    let stub = tower::service_fn(|request: Request<Body>| async move {
        assert!(request.extensions().get::<AuditSlot>().is_none());
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    let response = Audit::layer(metrics.route("elsewhere"), false)
        .layer(stub)
        .oneshot(Request::new(Body::empty()))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
}
