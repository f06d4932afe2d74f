//! Policy evaluation per request: `cargo bench --bench policy`.
//!
//! Targets (issue 4): the default policy ≤ 5 µs median per request, a
//! per-tool policy ≤ 15 µs. Each measurement is one `authorize(user,
//! request)` as the request path runs it: the user map is built once per
//! session (cached), the request map once per request.
//!
//! Issue 9 adds: a 16-message batch with the request view built once versus
//! once per message, and what moving one policy run to a blocking thread
//! costs (why a single call runs inline and only batches move).

use std::hint::black_box;
use std::path::Path;

use axum::http::{HeaderMap, Method};
use criterion::{criterion_group, criterion_main, Criterion};
use mcp_oauth_proxy::policy::layer::{script_request, McpCall, RequestView};
use mcp_oauth_proxy::policy::{user_value, PolicyEngine, UserFacts};
use mcp_oauth_proxy::store::UpstreamTokens;
use serde_json::json;

fn bench(c: &mut Criterion) {
    let claims = json!({
        "sub": "00u1alice", "email": "alice@example.com", "name": "Alice Example",
        "groups": ["engineering", "admins"], "email_verified": true,
        "iss": "https://idp.example.com", "aud": "proxy", "iat": 1, "exp": 2,
    });
    let claims = claims.as_object().unwrap();
    let user = user_value(&UserFacts {
        sub: "00u1alice",
        email: Some("alice@example.com"),
        claims,
        issuer: "https://idp.example.com",
        client_id: "client",
        client_name: Some("Claude"),
    });
    let tokens = UpstreamTokens {
        access_token: "upstream-access-token".into(),
        id_token: Some("upstream-id-token".into()),
        ..Default::default()
    };
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert(
        "accept",
        "application/json, text/event-stream".parse().unwrap(),
    );
    headers.insert("mcp-protocol-version", "2025-06-18".parse().unwrap());
    headers.insert("mcp-session-id", "0123456789abcdef".parse().unwrap());
    let call = McpCall {
        method: Some("tools/call".into()),
        id: Some(json!(7)),
        target: Some("run_sql".into()),
    };

    for (name, path) in [
        ("default", None),
        ("per-tool", Some(Path::new("policies/per-tool.rhai"))),
    ] {
        let engine = PolicyEngine::new(path, &[]).expect("the policy compiles");
        let policy = engine.current();
        c.bench_function(&format!("authorize/{name}"), |b| {
            b.iter(|| {
                let request =
                    script_request("default", &Method::POST, "/mcp", &headers, Some(&call));
                black_box(engine.authorize(&policy, user.clone(), request, &tokens))
            })
        });
    }

    let engine = std::sync::Arc::new(
        PolicyEngine::new(Some(Path::new("policies/per-tool.rhai")), &[])
            .expect("the policy compiles"),
    );
    let policy = engine.current();
    let batch: Vec<McpCall> = (0..16).map(|_| call.clone()).collect();
    c.bench_function("batch16/view-per-message", |b| {
        b.iter(|| {
            for call in &batch {
                let request =
                    script_request("default", &Method::POST, "/mcp", &headers, Some(call));
                black_box(engine.authorize(&policy, user.clone(), request, &tokens));
            }
        })
    });
    c.bench_function("batch16/view-once", |b| {
        b.iter(|| {
            let view = RequestView::new("default", &Method::POST, "/mcp", &headers);
            for call in &batch {
                let request = view.for_call(Some(call));
                black_box(engine.authorize(&policy, user.clone(), request, &tokens));
            }
        })
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("a runtime");
    c.bench_function("dispatch/inline", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let request =
                    script_request("default", &Method::POST, "/mcp", &headers, Some(&call));
                black_box(engine.authorize(&policy, user.clone(), request, &tokens))
            })
        })
    });
    c.bench_function("dispatch/spawn_blocking", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let (engine, policy, user, tokens, call) = (
                    engine.clone(),
                    policy.clone(),
                    user.clone(),
                    tokens.clone(),
                    call.clone(),
                );
                let view = RequestView::new("default", &Method::POST, "/mcp", &headers);
                tokio::task::spawn_blocking(move || {
                    black_box(engine.authorize(&policy, user, view.into_call(Some(&call)), &tokens))
                })
                .await
            })
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
