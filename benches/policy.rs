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
//!
//! Issue 14 adds, next to `authorize/per-tool`: the same request with
//! nothing observing (`observe/off`: the one check the request path pays),
//! with the decision log on (`observe/decision-log`: the record's inputs
//! copied and queued; the writer thread's JSON and write are off the
//! path) and with a shadow policy (`observe/shadow`: queued for the shadow
//! thread), and the shadow thread's own work per request
//! (`shadow/evaluate`: the candidate run and compared).

use std::hint::black_box;
use std::path::Path;

use axum::http::{HeaderMap, Method};
use criterion::{criterion_group, criterion_main, Criterion};
use mcp_oauth_proxy::config::PolicyConfig;
use mcp_oauth_proxy::metrics::Metrics;
use mcp_oauth_proxy::policy::layer::{script_request, McpCall, RequestView};
use mcp_oauth_proxy::policy::observer::Outcome;
use mcp_oauth_proxy::policy::replay::{compare, run_candidate};
use mcp_oauth_proxy::policy::{user_value, PolicyEngine, UserFacts};
use mcp_oauth_proxy::store::UpstreamTokens;
use serde_json::json;

/// What a script sees for one `tools/call`: Alice, her provider tokens, the
/// request's headers and the call.
struct Inputs {
    user: rhai::Dynamic,
    tokens: UpstreamTokens,
    headers: HeaderMap,
    call: McpCall,
}

fn inputs() -> Inputs {
    let claims = json!({
        "sub": "00u1alice", "email": "alice@example.com", "name": "Alice Example",
        "groups": ["engineering", "admins"], "email_verified": true,
        "iss": "https://idp.example.com", "aud": "proxy", "iat": 1, "exp": 2,
    });
    let user = user_value(&UserFacts {
        sub: "00u1alice",
        email: Some("alice@example.com"),
        claims: claims.as_object().unwrap(),
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
    Inputs {
        user,
        tokens,
        headers,
        call,
    }
}

fn bench(c: &mut Criterion) {
    let Inputs {
        user,
        tokens,
        headers,
        call,
    } = inputs();

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

/// One request's policy run as `EnforcePolicy` does it, with whatever
/// observes the engine handed the decision.
fn observed_request(
    engine: &PolicyEngine,
    policy: &std::sync::Arc<mcp_oauth_proxy::policy::CompiledPolicy>,
    headers: &HeaderMap,
    call: &McpCall,
    user: &rhai::Dynamic,
    tokens: &UpstreamTokens,
) {
    let view = RequestView::new("default", &Method::POST, "/mcp", headers);
    let observe = engine.observe(&view);
    let decision = engine.authorize(policy, user.clone(), view.into_call(Some(call)), tokens);
    if let Some(observe) = &observe {
        observe.decided(tokens, || user.clone(), Some(call), policy, &decision);
    }
    black_box(decision);
}

fn bench_observers(c: &mut Criterion) {
    let Inputs {
        user,
        tokens,
        mut headers,
        call,
    } = inputs();
    // The observed request has no session yet.
    headers.remove("mcp-session-id");
    let per_tool = Path::new("policies/per-tool.rhai");
    let dir = std::env::temp_dir().join(format!("policy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let metrics = Metrics::disabled();
    let observed = |settings: PolicyConfig| {
        PolicyEngine::new(Some(per_tool), &[])
            .expect("the policy compiles")
            .with_observers(&settings, &metrics)
            .expect("the observers start")
    };
    let off = observed(PolicyConfig::default());
    let with = |set: &dyn Fn(&mut PolicyConfig)| {
        let mut settings = PolicyConfig::default();
        set(&mut settings);
        observed(settings)
    };
    let log_path = dir.join("decisions.jsonl").display().to_string();
    let log = with(&|c| c.decision_log = Some(log_path.clone()));
    let shadow = with(&|c| c.shadow_path = Some(per_tool.to_path_buf()));
    for (name, engine) in [("off", &off), ("decision-log", &log), ("shadow", &shadow)] {
        let policy = engine.current();
        c.bench_function(&format!("observe/{name}"), |b| {
            b.iter(|| observed_request(engine, &policy, &headers, &call, &user, &tokens))
        });
    }
    let candidate = PolicyEngine::new(Some(per_tool), &[]).expect("the policy compiles");
    let policy = candidate.current();
    let view = RequestView::new("default", &Method::POST, "/mcp", &headers);
    let logged: Outcome = serde_json::from_value(json!({"allow": true})).unwrap();
    c.bench_function("shadow/evaluate", |b| {
        b.iter(|| {
            let after = run_candidate(
                &candidate,
                &policy,
                1_767_258_000,
                user.clone(),
                view.for_call(Some(&call)),
                true,
            );
            black_box(after.map(|after| compare(&logged, &after)))
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench, bench_observers);
criterion_main!(benches);
