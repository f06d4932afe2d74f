use super::*;

#[test]
fn calls_name_their_target() {
    let calls = parse_calls(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#, 16).unwrap();
    assert_eq!(calls[0].tool(), Some("whoami"));
    let calls = parse_calls(br#"[{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#, 16).unwrap();
    assert_eq!(calls[0].resource(), Some("file:///a"));
    assert_eq!(
        calls[1].method.as_deref(),
        Some("notifications/initialized")
    );
    assert!(parse_calls(b"not json", 16).is_err());
    assert!(parse_calls(b"[]", 16).is_err());
}

#[test]
fn routing_headers_must_agree_with_the_body() {
    let calls = parse_calls(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}}"#,
        16,
    )
    .unwrap();
    let mut h = HeaderMap::new();
    h.insert("mcp-method", "tools/call".parse().unwrap());
    h.insert("mcp-name", "whoami".parse().unwrap());
    assert!(check_routing_headers(&h, &calls).is_ok());
    h.insert("mcp-name", "delete_everything".parse().unwrap());
    assert!(matches!(
        check_routing_headers(&h, &calls),
        Err(ProxyError::BadRequest(_))
    ));
    h.remove("mcp-name");
    h.insert("mcp-method", "tools/list".parse().unwrap());
    assert!(check_routing_headers(&h, &calls).is_err());
}

#[test]
fn invariant_6_the_policy_never_sees_what_a_client_claims_about_its_connection() {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("x-forwarded-for", "10.0.0.1"),
        ("x_forwarded_for", "10.0.0.1"),
        ("x-real-ip", "10.0.0.1"),
        ("forwarded", "for=10.0.0.1"),
        ("true-client-ip", "10.0.0.1"),
        ("x-original-url", "/admin"),
        ("authorization", "Bearer t"),
        ("cookie", "a=1"),
        ("x-custom", "seen"),
    ] {
        h.append(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let view = script_request("default", &Method::POST, "/mcp", &h, None).cast::<Map>();
    let headers = view["headers"].clone().cast::<Map>();
    let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, vec!["x-custom"]);
}

#[test]
fn invariant_10_routing_headers_are_read_one_way_only() {
    let calls = parse_calls(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}}"#,
        16,
    )
    .unwrap();
    // A second value, which a downstream may read instead of the first.
    let mut h = HeaderMap::new();
    h.append("mcp-name", "whoami".parse().unwrap());
    h.append("mcp-name", "deploy".parse().unwrap());
    assert!(check_routing_headers(&h, &calls).is_err());
    // A value that is not visible ASCII is still compared.
    let mut h = HeaderMap::new();
    h.insert("mcp-name", HeaderValue::from_bytes(b"d\xe9ploy").unwrap());
    assert!(check_routing_headers(&h, &calls).is_err());
    let batch = parse_calls(
        br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping"}]"#,
        16,
    )
    .unwrap();
    assert!(check_routing_headers(&h, &batch).is_err());
}

mod enforce_policy {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use axum::http::{Response, StatusCode};
    use http_body_util::BodyExt;
    use tower::util::BoxCloneSyncService;
    use tower::{Layer, ServiceExt};

    use super::super::test_support::{engine, session};
    use super::*;

    /// What the service behind the policy saw of the request.
    #[derive(Default)]
    struct Seen {
        calls: AtomicUsize,
        headers: Mutex<Vec<(String, String)>>,
        single_call: Mutex<Option<McpCall>>,
        body: Mutex<Vec<u8>>,
    }

    fn downstream(
        seen: Arc<Seen>,
    ) -> BoxCloneSyncService<Request<Body>, Response<Body>, ProxyError> {
        BoxCloneSyncService::new(tower::service_fn(move |request: Request<Body>| {
            let seen = seen.clone();
            async move {
                seen.calls.fetch_add(1, Ordering::SeqCst);
                let outcome = request.extensions().get::<PolicyOutcome>().cloned();
                let outcome = outcome.expect("the outcome travels with the request");
                assert!(
                    (outcome.strip)(&HeaderName::from_static("x-user-sub")),
                    "a header the policy sets is stripped"
                );
                assert!(!(outcome.strip)(&HeaderName::from_static("accept")));
                assert!(
                    (outcome.strip)(&HeaderName::from_static("x_user_sub")),
                    "a name a lenient server reads as one the policy sets is stripped"
                );
                assert!(request.extensions().get::<Arc<CompiledPolicy>>().is_some());
                if let Ok(mut headers) = seen.headers.lock() {
                    *headers = outcome
                        .headers
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
                        .collect();
                }
                if let Ok(mut call) = seen.single_call.lock() {
                    *call = request.extensions().get::<McpCall>().cloned();
                }
                let body = request
                    .into_body()
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes();
                if let Ok(mut seen_body) = seen.body.lock() {
                    *seen_body = body.to_vec();
                }
                Ok(Response::new(Body::empty()))
            }
        }))
    }

    fn post(body: impl Into<String>, session: Option<Arc<Session>>) -> Request<Body> {
        let mut request = Request::post("/mcp")
            .body(Body::from(body.into()))
            .expect("request");
        if let Some(session) = session {
            request.extensions_mut().insert(session);
        }
        request
    }

    const WHOAMI: &str =
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}}"#;
    const DEPLOY: &str =
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"deploy"}}"#;
    const BATCH: &str = r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/list"}]"#;

    #[tokio::test]
    async fn an_allowed_call_goes_on_with_the_policys_headers_and_its_body_unchanged() {
        let (_dir, engine) = engine();
        let metrics = crate::metrics::Metrics::new(&[]);
        let seen = Arc::new(Seen::default());
        let service = EnforcePolicy::layer(engine, "https://issuer", 1024, 16, metrics.clone())
            .layer(downstream(seen.clone()));
        let slot = AuditSlot::default();
        let mut request = post(WHOAMI, Some(session()));
        request.extensions_mut().insert(slot.clone());
        let response = service.clone().oneshot(request).await.expect("allowed");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            *seen.headers.lock().expect("lock"),
            vec![("x-user-sub".to_string(), "alice".to_string())]
        );
        let call = seen
            .single_call
            .lock()
            .expect("lock")
            .clone()
            .expect("the call");
        assert_eq!(call.tool(), Some("whoami"));
        assert_eq!(&*seen.body.lock().expect("lock"), WHOAMI.as_bytes());
        let labels = metrics
            .route("default")
            .mcp_labels(Some("tools/call"), Some("whoami"));
        slot.update(|facts| {
            assert_eq!(facts.mcp_labels, labels);
            // Copied only for an audit line, which this request has not.
            assert_eq!(facts.mcp_method, None);
            assert_eq!(facts.tool, None);
            assert_eq!(facts.decision, Some("allow"));
        });
        assert_eq!(
            metrics
                .policy_decisions
                .with_label_values(&["default", "allow"])
                .get(),
            1
        );

        // A batch is judged call by call, off the runtime; no single call
        // travels on.
        let response = service.clone().oneshot(post(BATCH, Some(session()))).await;
        assert!(response.is_ok(), "{:?}", response.err());
        assert!(seen.single_call.lock().expect("lock").is_none());
        assert_eq!(seen.calls.load(Ordering::SeqCst), 2);

        // With an audit line to write, the names too.
        let written = AuditSlot::written();
        let mut request = post(WHOAMI, Some(session()));
        request.extensions_mut().insert(written.clone());
        service.oneshot(request).await.expect("allowed");
        written.update(|facts| {
            assert_eq!(facts.mcp_labels, labels);
            assert_eq!(facts.mcp_method.as_deref(), Some("tools/call"));
            assert_eq!(facts.tool.as_deref(), Some("whoami"));
        });
    }

    #[tokio::test]
    async fn a_remembered_decision_is_counted_as_taking_no_time() {
        let (_dir, engine) = engine();
        let metrics = crate::metrics::Metrics::new(&[]);
        let service = EnforcePolicy::layer(engine, "https://issuer", 1024, 16, metrics.clone())
            .layer(downstream(Arc::new(Seen::default())));
        let alice = session();
        let timed = metrics.policy_duration.with_label_values(&["default"]);
        service
            .clone()
            .oneshot(post(WHOAMI, Some(alice.clone())))
            .await
            .expect("allowed");
        let ran_for = timed.get_sample_sum();
        assert_eq!(timed.get_sample_count(), 1);
        assert!(ran_for > 0.0, "the script's run is timed");
        // The same call again: decided from the session's memory, no
        // script run, no clock read, counted with nothing added.
        service
            .oneshot(post(WHOAMI, Some(alice)))
            .await
            .expect("allowed");
        assert_eq!(timed.get_sample_count(), 2);
        assert_eq!(timed.get_sample_sum(), ran_for);
    }

    #[tokio::test]
    async fn a_remembered_login_refusal_is_counted_as_taking_no_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("login.rhai");
        std::fs::write(
            &path,
            r#"
fn login(user) { deny(403, "not this route") }
fn authorize(user, request) { allow() }
"#,
        )
        .expect("write the policy");
        let engine = Arc::new(PolicyEngine::new(Some(&path), &[]).expect("compiles"));
        let metrics = crate::metrics::Metrics::new(&[]);
        let service = EnforcePolicy::layer(engine, "https://issuer", 1024, 16, metrics.clone())
            .layer(downstream(Arc::new(Seen::default())));
        let alice = session();
        let timed = metrics.policy_duration.with_label_values(&["default"]);
        let refused = service
            .clone()
            .oneshot(post(WHOAMI, Some(alice.clone())))
            .await;
        assert!(matches!(refused, Err(ProxyError::PolicyDenied { .. })));
        let ran_for = timed.get_sample_sum();
        assert_eq!(timed.get_sample_count(), 1);
        assert!(ran_for > 0.0, "login()'s run is timed");
        let refused = service.oneshot(post(WHOAMI, Some(alice))).await;
        assert!(matches!(refused, Err(ProxyError::PolicyDenied { .. })));
        assert_eq!(timed.get_sample_count(), 2);
        assert_eq!(timed.get_sample_sum(), ran_for, "remembered: no time added");
    }

    #[tokio::test]
    async fn a_denied_unreadable_or_anonymous_request_never_reaches_the_downstream() {
        let (_dir, engine) = engine();
        let seen = Arc::new(Seen::default());
        let service = EnforcePolicy::layer(
            engine,
            "https://issuer",
            200,
            16,
            crate::metrics::Metrics::disabled(),
        )
        .layer(downstream(seen.clone()));
        let slot = AuditSlot::default();
        let mut request = post(DEPLOY, Some(session()));
        request.extensions_mut().insert(slot.clone());
        let denied = service.clone().oneshot(request).await;
        assert!(
            matches!(&denied, Err(ProxyError::PolicyDenied { status, id: Some(id), .. })
                if *status == StatusCode::FORBIDDEN && *id == serde_json::json!(7)),
            "{denied:?}"
        );
        slot.update(|facts| assert_eq!(facts.decision, Some("deny")));
        let batch_with_deploy = format!("[{WHOAMI},{DEPLOY}]");
        let denied = service
            .clone()
            .oneshot(post(batch_with_deploy, Some(session())))
            .await;
        assert!(
            matches!(denied, Err(ProxyError::PolicyDenied { .. })),
            "{denied:?}"
        );
        let too_large = "x".repeat(201);
        let refused = service
            .clone()
            .oneshot(post(too_large, Some(session())))
            .await;
        assert!(
            matches!(refused, Err(ProxyError::PayloadTooLarge(200))),
            "{refused:?}"
        );
        let refused = service
            .clone()
            .oneshot(post("not json", Some(session())))
            .await;
        assert!(refused.is_err());
        let refused = service.oneshot(post(WHOAMI, None)).await;
        assert!(
            matches!(refused, Err(ProxyError::Forbidden(_))),
            "{refused:?}"
        );
        assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
    }
}

#[test]
fn a_policy_reading_only_the_call_decides_once_per_session_and_call() {
    use super::remembered::REMEMBERED_CALLS;
    use test_support::{engine, session};
    let (_dir, engine) = engine();
    let policy = engine.current();
    assert_eq!(policy.inputs, DecisionInputs::UserAndCall);
    let runs = std::cell::Cell::new(0);
    let call = |method: &str, target: &str| McpCall {
        method: Some(method.into()),
        id: Some(serde_json::json!(1)),
        target: Some(target.into()),
    };
    let decide_for = |session: &Session, call: Option<&McpCall>| {
        let decision = decide(
            &engine,
            &policy,
            session,
            call,
            || {
                runs.set(runs.get() + 1);
                script_user(session, "https://issuer")
            },
            || RequestView::default().into_call(call),
        );
        matches!(decision, Decision::Allow { .. })
    };
    let alice = session();
    for _ in 0..3 {
        assert!(decide_for(&alice, Some(&call("tools/call", "whoami"))));
        assert!(!decide_for(&alice, Some(&call("tools/call", "deploy"))));
        assert!(decide_for(&alice, None));
    }
    assert_eq!(runs.get(), 3, "each call's decision was made once");
    // The same name under another method is another call (the policy
    // denies the tool `deploy`, not the prompt), and another id the same.
    assert!(decide_for(&alice, Some(&call("prompts/get", "deploy"))));
    let mut again = call("tools/call", "deploy");
    again.id = Some(serde_json::json!("other"));
    assert!(!decide_for(&alice, Some(&again)));
    assert_eq!(runs.get(), 4);
    // Another session decides for itself.
    assert!(!decide_for(&session(), Some(&call("tools/call", "deploy"))));
    assert_eq!(runs.get(), 5);
    // Bounded: a client naming a new tool each time pushes the oldest out.
    for i in 0..REMEMBERED_CALLS {
        assert!(decide_for(
            &alice,
            Some(&call("tools/call", &format!("t{i}")))
        ));
    }
    let before = runs.get();
    assert!(!decide_for(&alice, Some(&call("tools/call", "deploy"))));
    assert_eq!(runs.get(), before + 1, "the deploy decision was forgotten");
}

#[test]
fn a_policy_that_cannot_read_the_headers_gets_a_view_without_them() {
    let view_keys = |policy: &str| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("p.rhai");
        std::fs::write(&path, policy).expect("write the policy");
        let engine = PolicyEngine::new(Some(&path), &[]).expect("compiles");
        let mut headers = HeaderMap::new();
        headers.insert("x-team", "blue".parse().expect("value"));
        let view =
            RequestView::when_read(&engine, &engine.current(), &Method::POST, "/mcp", &headers)
                .expect("a policy reading the route needs a view");
        let mut keys: Vec<String> = view.base.keys().map(|k| k.to_string()).collect();
        keys.sort();
        keys
    };
    let route_only =
        "fn authorize(u, r) { if r.route != \"default\" { return deny(403, \"no\"); } allow() }";
    assert_eq!(
        view_keys(route_only),
        ["method", "path", "protocol_version", "route"]
    );
    let headers_too = "fn authorize(u, r) { if r.headers[\"x-team\"] != \"blue\" { return deny(403, \"no\"); } allow() }";
    assert_eq!(
        view_keys(headers_too),
        ["headers", "method", "path", "protocol_version", "route"]
    );
}
