use std::sync::Mutex;

use axum::http::Method;
use tower::util::MapRequestLayer;

use super::*;

type Log = Arc<Mutex<Vec<String>>>;

/// A layer that notes `tag` (and the route it was built for) when a request
/// passes it.
fn noting(tag: &'static str, log: &Log) -> impl Fn(&RouteInfo<'_>) -> Wrap {
    let log = log.clone();
    move |route: &RouteInfo<'_>| {
        let log = log.clone();
        let seen = format!("{tag}@{}", route.name());
        wrap(MapRequestLayer::new(move |request: Request<Body>| {
            log.lock().unwrap().push(seen.clone());
            request
        }))
    }
}

fn answering_ok() -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = ProxyError,
    Future = impl Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(|_: Request<Body>| async {
        Ok::<_, ProxyError>(Response::new(Body::empty()))
    })
}

async fn body_json(response: Response<Body>) -> Value {
    let bytes = axum::body::to_bytes(response.into_body(), 10_000)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn without_registrations_no_hook_inserts_anything() {
    let hooks = Hooks::default().for_route(&RouteInfo::new("default", "/mcp", None));
    for hook in Hook::ALL {
        assert!(hooks.at(hook).is_none(), "{hook:?}");
    }
}

#[tokio::test]
async fn registrations_apply_at_their_hook_on_their_routes_in_order() {
    let log: Log = Default::default();
    let mut hooks = Hooks::default();
    hooks.push(Hook::AfterPolicy, None, Box::new(noting("first", &log)));
    hooks.push(
        Hook::AfterPolicy,
        Some("wiki".into()),
        Box::new(noting("wiki-only", &log)),
    );
    hooks.push(Hook::AfterPolicy, None, Box::new(noting("second", &log)));
    hooks.push(Hook::BeforeForwarding, None, Box::new(noting("late", &log)));
    assert_eq!(hooks.route_names().collect::<Vec<_>>(), ["wiki"]);

    for (route, expected) in [
        ("default", vec!["first@default", "second@default"]),
        ("wiki", vec!["first@wiki", "wiki-only@wiki", "second@wiki"]),
    ] {
        log.lock().unwrap().clear();
        let at = hooks.for_route(&RouteInfo::new(route, "/x/mcp", None));
        assert!(at.at(Hook::AfterAuthentication).is_none());
        let layer = at.at(Hook::AfterPolicy).expect("registered");
        let response = layer
            .layer(answering_ok())
            .oneshot(Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(*log.lock().unwrap(), expected, "on {route}");
    }
}

#[tokio::test]
async fn a_hook_layer_sees_refusals_below_it_as_json_rpc_responses() {
    let status_seen: Arc<Mutex<Option<StatusCode>>> = Default::default();
    let seen = status_seen.clone();
    let observer = tower::util::MapResponseLayer::new(move |response: Response<Body>| {
        *seen.lock().unwrap() = Some(response.status());
        response
    });
    let mut hooks = Hooks::default();
    let observed = wrap(observer);
    hooks.push(
        Hook::AfterAuthentication,
        None,
        Box::new(move |_| observed.clone()),
    );
    let denying = tower::service_fn(|_: Request<Body>| async {
        Err::<Response<Body>, _>(ProxyError::PolicyDenied {
            status: StatusCode::FORBIDDEN,
            reason: "not you".into(),
            id: Some(json!(7)),
        })
    });
    let layer = hooks
        .for_route(&RouteInfo::new("default", "/mcp", None))
        .at(Hook::AfterAuthentication)
        .expect("registered");
    let response = layer
        .layer(denying)
        .oneshot(Request::new(Body::empty()))
        .await
        .expect("a hook never fails the stack");
    assert_eq!(*status_seen.lock().unwrap(), Some(StatusCode::FORBIDDEN));
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        body_json(response).await,
        json!({"jsonrpc": "2.0", "error": {"code": -32003, "message": "not you"}, "id": 7})
    );
}

#[tokio::test]
async fn an_error_from_a_hook_layer_is_a_500_json_rpc_error_and_stops_the_request() {
    let reached: Arc<Mutex<bool>> = Default::default();
    let flag = reached.clone();
    let inner = tower::service_fn(move |_: Request<Body>| {
        *flag.lock().unwrap() = true;
        async { Ok::<_, ProxyError>(Response::new(Body::empty())) }
    });
    let failing = tower::layer::layer_fn(|_inner: HookService| {
        tower::service_fn(|_: Request<Body>| async {
            Err::<Response<Body>, _>(std::io::Error::other("quota store unreachable"))
        })
    });
    let mut hooks = Hooks::default();
    let failing = wrap(failing);
    hooks.push(
        Hook::BeforeForwarding,
        None,
        Box::new(move |_| failing.clone()),
    );
    let response = hooks
        .for_route(&RouteInfo::new("default", "/mcp", None))
        .at(Hook::BeforeForwarding)
        .expect("registered")
        .layer(inner)
        .oneshot(Request::new(Body::empty()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = body_json(response).await;
    assert_eq!(body["error"]["code"], -32000);
    assert!(
        !body.to_string().contains("quota store"),
        "the cause stays in the log: {body}"
    );
    assert!(!*reached.lock().unwrap());
}

#[test]
fn mcp_calls_reads_one_call_a_batch_or_none() {
    let call = |method: &str, id: i64, target: &str| McpCall {
        method: Some(method.into()),
        id: Some(json!(id)),
        target: Some(target.into()),
    };
    let mut request = Request::new(Body::empty());
    assert!(mcp_calls(&request).is_empty());
    assert!(session(&request).is_none());

    request
        .extensions_mut()
        .insert(call("tools/call", 1, "search"));
    assert_eq!(mcp_calls(&request).len(), 1);
    assert_eq!(mcp_calls(&request)[0].tool(), Some("search"));

    let mut batch = Request::builder()
        .method(Method::POST)
        .body(Body::empty())
        .unwrap();
    batch.extensions_mut().insert(Arc::<[McpCall]>::from(vec![
        call("tools/call", 1, "search"),
        call("prompts/get", 2, "greeting"),
    ]));
    let tools: Vec<Option<&str>> = mcp_calls(&batch).iter().map(McpCall::tool).collect();
    assert_eq!(tools, [Some("search"), None]);
}

#[tokio::test]
async fn json_rpc_error_has_the_proxy_s_form() {
    let response = json_rpc_error(
        StatusCode::TOO_MANY_REQUESTS,
        -32003,
        "quota exceeded",
        Some(&json!("req-1")),
    );
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(
        body_json(response).await,
        json!({"jsonrpc": "2.0", "error": {"code": -32003, "message": "quota exceeded"}, "id": "req-1"})
    );
    let anonymous = json_rpc_error(StatusCode::BAD_REQUEST, -32600, "no", None);
    assert_eq!(body_json(anonymous).await["id"], Value::Null);
}
