use axum::http::{HeaderValue, StatusCode};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

use super::*;
use crate::policy::layer::test_support::{engine, session};

const TOOLS: &str =
    r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"whoami"},{"name":"deploy"}]}}"#;
const FILTERED: &str = r#"{"id":1,"jsonrpc":"2.0","result":{"tools":[{"name":"whoami"}]}}"#;

/// A downstream that answers `body` as `content_type` with `status`.
fn answering(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> BoxCloneSyncService<Request<Body>, Response<Body>, ProxyError> {
    let body: Bytes = body.into();
    BoxCloneSyncService::new(tower::service_fn(move |_request: Request<Body>| {
        let mut response = Response::new(Body::from(body.clone()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        std::future::ready(Ok::<_, ProxyError>(response))
    }))
}

/// A request as EnforcePolicy hands it on: session, policy version, call.
fn list_call(engine: &PolicyEngine, method: &str) -> Request<Body> {
    let mut request = Request::post("/mcp").body(Body::empty()).expect("request");
    let extensions = request.extensions_mut();
    extensions.insert(session());
    extensions.insert(engine.current());
    extensions.insert(McpCall {
        method: Some(method.into()),
        id: Some(1.into()),
        target: None,
    });
    request
}

async fn text_of(response: Response<Body>) -> String {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

#[tokio::test]
async fn a_list_answer_loses_what_the_policy_would_deny() {
    let (_dir, engine) = engine();
    let service = FilterLists::layer(engine.clone(), "https://issuer").layer(answering(
        StatusCode::OK,
        "application/json",
        TOOLS,
    ));
    let response = service
        .oneshot(list_call(&engine, "tools/list"))
        .await
        .expect("filtered");
    assert!(response.headers().get(header::CONTENT_LENGTH).is_none());
    let filtered: Value = serde_json::from_str(&text_of(response).await).expect("json");
    assert_eq!(
        filtered,
        serde_json::from_str::<Value>(FILTERED).expect("json")
    );

    let stream = format!("event: message\ndata: {TOOLS}\n\n");
    let service = FilterLists::layer(engine.clone(), "https://issuer").layer(answering(
        StatusCode::OK,
        "text/event-stream",
        stream,
    ));
    let response = service
        .oneshot(list_call(&engine, "tools/list"))
        .await
        .expect("filtered");
    let text = text_of(response).await;
    assert!(
        text.contains(FILTERED) && !text.contains("deploy"),
        "{text}"
    );
}

#[tokio::test]
async fn other_answers_pass_untouched() {
    let (_dir, engine) = engine();
    for (status, method) in [
        (StatusCode::OK, "tools/call"),
        (StatusCode::BAD_GATEWAY, "tools/list"),
    ] {
        let service = FilterLists::layer(engine.clone(), "https://issuer").layer(answering(
            status,
            "application/json",
            TOOLS,
        ));
        let response = service
            .oneshot(list_call(&engine, method))
            .await
            .expect("passed");
        assert_eq!(response.status(), status);
        assert!(response.headers().get(header::CONTENT_LENGTH).is_some());
        assert_eq!(text_of(response).await, TOOLS);
    }
    // Without the policy's verdict (EnforcePolicy did not run) nothing is
    // filtered either.
    let service = FilterLists::layer(engine.clone(), "https://issuer").layer(answering(
        StatusCode::OK,
        "application/json",
        TOOLS,
    ));
    let response = service
        .oneshot(Request::new(Body::empty()))
        .await
        .expect("passed");
    assert_eq!(text_of(response).await, TOOLS);
}

#[tokio::test]
async fn a_downstream_error_passes_as_it_came() {
    let (_dir, engine) = engine();
    let failing = tower::service_fn(|_request: Request<Body>| async {
        Err::<Response<Body>, _>(ProxyError::DownstreamUnreachable("refused".into()))
    });
    let failed = FilterLists::layer(engine.clone(), "https://issuer")
        .layer(failing)
        .oneshot(list_call(&engine, "tools/list"))
        .await;
    assert!(matches!(failed, Err(ProxyError::DownstreamUnreachable(_))));
}

#[tokio::test]
async fn a_list_call_without_the_policys_decision_is_refused_not_passed_unfiltered() {
    let (_dir, engine) = engine();
    let forwarded = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = forwarded.clone();
    let downstream = tower::service_fn(move |_request: Request<Body>| {
        seen.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut response = Response::new(Body::from(TOOLS));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        std::future::ready(Ok::<_, ProxyError>(response))
    });
    // A list call whose session or policy version is missing: a stack
    // without Authenticate or EnforcePolicy above the filter.
    for missing in ["session", "policy"] {
        let mut request = list_call(&engine, "tools/list");
        if missing == "session" {
            request.extensions_mut().remove::<Arc<Session>>();
        } else {
            request.extensions_mut().remove::<Arc<CompiledPolicy>>();
        }
        let refused = FilterLists::layer(engine.clone(), "https://issuer")
            .layer(downstream.clone())
            .oneshot(request)
            .await;
        assert!(
            matches!(refused, Err(ProxyError::Forbidden(_))),
            "without the {missing}: {:?}",
            refused.map(|r| r.status())
        );
    }
    assert!(
        !forwarded.load(std::sync::atomic::Ordering::SeqCst),
        "nothing reaches the downstream"
    );
}
