//! The MCP request path: Authenticate → EnforcePolicy → Forwarder, against a
//! downstream MCP server double. DESIGN.md invariants 6, 7 and 9.

mod common;

use std::time::Duration;

use common::downstream::Downstream;
use common::*;
use serde_json::{json, Value};

struct Setup {
    proxy: TestProxy,
    downstream: Downstream,
    client: Client,
}

async fn setup_with(opts: Options) -> Setup {
    let downstream = Downstream::start().await;
    let opts = Options {
        downstream_url: Some(downstream.mcp_url()),
        downstream_extra: format!(
            "sse_url = \"{}/sse\"\n{}",
            downstream.url, opts.downstream_extra
        ),
        ..opts
    };
    let proxy = TestProxy::start_with_options(&opts).await;
    let client = proxy.public_client().await;
    Setup {
        proxy,
        downstream,
        client,
    }
}

async fn setup() -> Setup {
    setup_with(Options::default()).await
}

impl Setup {
    async fn token(&self) -> String {
        let t = self.proxy.tokens_for(&self.client, &[]).await;
        t["access_token"].as_str().unwrap().to_string()
    }

    async fn token_for(&self, user: Value, resource: Option<&str>) -> String {
        self.proxy.provider.set_user(user);
        let extra: Vec<(&str, &str)> = resource.map(|r| vec![("resource", r)]).unwrap_or_default();
        let t = self.proxy.tokens_for(&self.client, &extra).await;
        self.proxy.provider.set_user(Value::Object(alice()));
        t["access_token"].as_str().unwrap().to_string()
    }

    fn post(&self, token: Option<&str>, body: Value) -> reqwest::RequestBuilder {
        let mut r = self
            .proxy
            .http
            .post(format!("{}/mcp", self.proxy.url))
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    }
}

fn call(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
}

#[tokio::test]
async fn without_a_token_the_client_is_sent_to_the_resource_metadata() {
    let s = setup().await;
    let r = s
        .post(None, call("tools/list", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        format!(
            "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
            s.proxy.url
        )
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["jsonrpc"], "2.0");
    let r = s
        .proxy
        .http
        .get(format!("{}/sse", s.proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .ends_with("/.well-known/oauth-protected-resource/sse\""));
    let r = s
        .post(Some("made-up"), call("tools/list", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer error=\"invalid_token\""));
    assert!(s.downstream.requests().is_empty());
}

#[tokio::test]
async fn the_downstream_receives_the_original_workers_identity_headers() {
    let s = setup().await;
    let token = s.token().await;
    let r = s
        .post(Some(&token), call("tools/call", json!({"name": "whoami"})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = s.downstream.last().headers;
    assert_eq!(seen["x-user-email"], "alice@example.com");
    assert_eq!(seen["x-user-name"], "Alice Example");
    assert_eq!(seen["x-user-sub"], "alice-sub-123");
    assert_eq!(seen["x-user-groups"], "engineering,admins");
    let bearer = seen["authorization"].to_str().unwrap();
    assert!(bearer.starts_with("Bearer upstream-access-"), "{bearer}");
    assert!(seen.get("x-request-id").is_some());
}

#[tokio::test]
async fn invariant_6_client_identity_headers_never_reach_the_downstream() {
    let s = setup().await;
    let token = s.token().await;
    let r = s
        .post(Some(&token), call("tools/list", json!({})))
        .header("x-user-email", "evil@example.com")
        .header("X_User_Groups", "admins")
        .header("x-user-role", "root")
        .header("connection", "x-private-hop")
        .header("x-private-hop", "1")
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = s.downstream.last().headers;
    assert_eq!(
        seen.get_all("x-user-email").iter().collect::<Vec<_>>(),
        vec!["alice@example.com"]
    );
    assert_eq!(seen.get_all("x-user-groups").iter().count(), 1);
    assert!(seen.get("x_user_groups").is_none());
    assert!(seen.get("x-user-role").is_none());
    assert!(seen.get("x-private-hop").is_none());
    assert_eq!(seen["mcp-protocol-version"], "2025-06-18");
    // The client's own bearer (our token) never travels on.
    assert!(!seen["authorization"].to_str().unwrap().contains(&token));
}

#[tokio::test]
async fn invariant_7_tokens_only_from_the_authorization_header_and_only_ours() {
    let s = setup().await;
    let token = s.token().await;
    // In the query string: not accepted, and said so (RFC 6750 §3.1
    // invalid_request) rather than sending the client to log in again.
    let r = s
        .proxy
        .http
        .post(format!("{}/mcp?access_token={token}", s.proxy.url))
        .json(&call("tools/list", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(s.downstream.requests().is_empty());
    // The provider's own tokens are not ours.
    for upstream in s.proxy.provider.issued_tokens() {
        let r = s
            .post(Some(&upstream), call("tools/list", json!({})))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{upstream}");
    }
    // A token for /sse does not open /mcp.
    let sse_token = s
        .token_for(
            Value::Object(alice()),
            Some(&format!("{}/sse", s.proxy.url)),
        )
        .await;
    let r = s
        .post(Some(&sse_token), call("tools/list", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let mcp_token = s
        .token_for(
            Value::Object(alice()),
            Some(&format!("{}/mcp", s.proxy.url)),
        )
        .await;
    let r = s
        .post(Some(&mcp_token), call("tools/list", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.downstream.requests().len(), 1);
}

#[tokio::test]
async fn revocation_takes_effect_at_once_despite_the_cache() {
    let s = setup().await;
    let t = s.proxy.tokens_for(&s.client, &[]).await;
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(
        s.post(Some(token), call("ping", json!({})))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = s
        .proxy
        .http
        .post(format!("{}/revoke", s.proxy.url))
        .form(&[
            ("token", t["refresh_token"].as_str().unwrap()),
            ("client_id", &s.client.client_id),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The eviction runs on a task; give it a tick, far below a second.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        s.post(Some(token), call("ping", json!({})))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn a_session_belongs_to_the_user_who_created_it() {
    let s = setup().await;
    let alice_token = s.token().await;
    let bob_token = s.token_for(bob(), None).await;
    let r = s
        .post(Some(&alice_token), call("initialize", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let before = s.downstream.requests().len();
    let r = s
        .post(Some(&bob_token), call("tools/list", json!({})))
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        s.downstream.requests().len(),
        before,
        "bob's request reached the downstream"
    );
    let r = s
        .post(Some(&alice_token), call("tools/list", json!({})))
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.downstream.last().headers["mcp-session-id"],
        session.as_str()
    );
    // A session nobody created here is not forwarded either.
    let r = s
        .post(Some(&alice_token), call("tools/list", json!({})))
        .header("mcp-session-id", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // DELETE ends it.
    let r = s
        .proxy
        .http
        .delete(format!("{}/mcp", s.proxy.url))
        .bearer_auth(&alice_token)
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .post(Some(&alice_token), call("tools/list", json!({})))
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn an_sse_event_reaches_the_client_before_the_downstream_writes_the_next() {
    let s = setup().await;
    let token = s.token().await;
    let mut r = s
        .post(Some(&token), call("tools/call", json!({"name": "stream"})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // The first event arrives while the downstream is still holding the second.
    let first = tokio::time::timeout(Duration::from_secs(5), r.chunk())
        .await
        .expect("first event held back")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("notifications/progress"));
    s.downstream.state.release.notify_waiters();
    let second = tokio::time::timeout(Duration::from_secs(5), r.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&second).contains("\"result\""));
}

#[tokio::test]
async fn the_downstream_sees_the_close_when_the_client_disconnects() {
    let s = setup().await;
    let token = s.token().await;
    let mut r = s
        .proxy
        .http
        .get(format!("{}/mcp", s.proxy.url))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("notifications/hello"));
    let closed = s.downstream.state.stream_closed.notified();
    drop(r);
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the downstream stream stayed open");
}

#[tokio::test]
async fn legacy_sse_endpoint_is_rewritten_and_messages_are_bound_to_the_user() {
    let s = setup().await;
    let token = s.token().await;
    let bob_token = s.token_for(bob(), None).await;
    let mut r = s
        .proxy
        .http
        .get(format!("{}/sse", s.proxy.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = String::from_utf8(r.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(
        first.starts_with("event: endpoint\ndata: /sse/message?sid="),
        "{first}"
    );
    let endpoint = first
        .lines()
        .nth(1)
        .unwrap()
        .trim_start_matches("data: ")
        .to_string();
    assert!(s.downstream.last().headers["x-user-email"] == "alice@example.com");
    let post = |t: &str| {
        s.proxy
            .http
            .post(format!("{}{endpoint}", s.proxy.url))
            .bearer_auth(t)
            .json(&call("tools/list", json!({})))
            .send()
    };
    assert_eq!(post(&bob_token).await.unwrap().status(), 404);
    assert_eq!(post(&token).await.unwrap().status(), 202);
    let arrived = s.downstream.last();
    assert_eq!(arrived.uri.to_string(), "/messages?sessionId=legacy-1");
    assert_eq!(arrived.headers["x-user-sub"], "alice-sub-123");
    // Events after the endpoint pass through as they come.
    s.downstream.state.release.notify_waiters();
    let next = String::from_utf8(r.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(next.contains("\"result\""), "{next}");
}

#[tokio::test]
async fn unreachable_downstream_is_502_and_a_slow_one_504() {
    let s = setup_with(Options {
        downstream_extra: "response_timeout = \"300ms\"".into(),
        ..Default::default()
    })
    .await;
    let token = s.token().await;
    s.downstream.set_delay(Duration::from_secs(2));
    let r = s
        .post(Some(&token), call("tools/list", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["jsonrpc"], "2.0");

    // A downstream nobody listens on.
    let port = free_port();
    let p = TestProxy::start_with_options(&Options {
        downstream_url: Some(format!("http://127.0.0.1:{port}/mcp")),
        ..Default::default()
    })
    .await;
    let client = p.public_client().await;
    let t = p.tokens_for(&client, &[]).await;
    let r = p
        .http
        .post(format!("{}/mcp", p.url))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .json(&call("tools/list", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Failed to connect to downstream MCP server"),
        "{body}"
    );
}

#[tokio::test]
async fn foreign_origins_are_refused() {
    let s = setup().await;
    let token = s.token().await;
    let r = s
        .post(Some(&token), call("tools/list", json!({})))
        .header("origin", "http://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = s
        .post(Some(&token), call("tools/list", json!({})))
        .header("origin", s.proxy.url.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.downstream.requests().len(), 1);
}

#[tokio::test]
async fn allow_listed_origins_pass_and_get_cors() {
    let s = setup_with(Options {
        server_extra: "allowed_origins = [\"http://localhost:6274\"]".into(),
        ..Default::default()
    })
    .await;
    let token = s.token().await;
    let r = s
        .proxy
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/mcp", s.proxy.url))
        .header("origin", "http://localhost:6274")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,mcp-session-id",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:6274"
    );
    let r = s
        .post(Some(&token), call("tools/list", json!({})))
        .header("origin", "http://localhost:6274")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:6274"
    );
    assert!(r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("mcp-session-id"));
    let r = s
        .post(Some(&token), call("tools/list", json!({})))
        .header("origin", "http://localhost:9999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn mcp_routing_headers_that_disagree_with_the_body_are_400() {
    let s = setup().await;
    let token = s.token().await;
    let r = s
        .post(Some(&token), call("tools/call", json!({"name": "whoami"})))
        .header("mcp-method", "tools/call")
        .header("mcp-name", "delete_everything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .post(Some(&token), call("tools/call", json!({"name": "whoami"})))
        .header("mcp-method", "tools/call")
        .header("mcp-name", "whoami")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // MCP 2026-07-28 headers pass intact.
    let seen = s.downstream.last().headers;
    assert_eq!(seen["mcp-method"], "tools/call");
    assert_eq!(seen["mcp-name"], "whoami");
    assert_eq!(s.downstream.requests().len(), 1);
}

#[tokio::test]
async fn invariant_9_request_bodies_are_bounded() {
    let s = setup_with(Options {
        downstream_extra: "max_request_bytes = 4096".into(),
        ..Default::default()
    })
    .await;
    let token = s.token().await;
    let big = call(
        "tools/call",
        json!({"name": "x", "arguments": {"blob": "a".repeat(10_000)}}),
    );
    let r = s.post(Some(&token), big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let r = s
        .proxy
        .http
        .post(format!("{}/mcp", s.proxy.url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(s.downstream.requests().is_empty());
}

#[tokio::test]
async fn a_policy_denial_is_403_and_reaches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.rhai");
    std::fs::write(
        &policy,
        r#"fn authorize(user, request) {
    if "sales" in user.groups { return deny(403, "sales may not use this server"); }
    allow(#{ "X-User-Email": user.email })
}"#,
    )
    .unwrap();
    let s = setup_with(Options {
        extra: format!("[policy]\npath = \"{}\"\n", policy.display()),
        ..Default::default()
    })
    .await;
    let bob_token = s.token_for(bob(), None).await;
    let r = s
        .post(Some(&bob_token), call("tools/list", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], 1);
    assert_eq!(body["error"]["message"], "sales may not use this server");
    assert!(s.downstream.requests().is_empty());
    let alice_token = s.token().await;
    assert_eq!(
        s.post(Some(&alice_token), call("tools/list", json!({})))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The policy names no Authorization header: the downstream gets none.
    assert!(s.downstream.last().headers.get("authorization").is_none());
}

#[tokio::test]
async fn http2_clients_are_served() {
    let s = setup().await;
    let token = s.token().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .post(format!("{}/mcp", s.proxy.url))
        .bearer_auth(&token)
        .json(&call("tools/list", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn graceful_shutdown_lets_open_streams_run_until_the_grace_period_ends() {
    // The test configuration sets server.shutdown_grace = "1s".
    let s = setup().await;
    let token = s.token().await;
    let mut r = s
        .post(Some(&token), call("tools/call", json!({"name": "stream"})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("notifications/progress"));

    let stop = s.proxy.running.shutdown_handle();
    stop.send(true).unwrap();
    let stopped_at = std::time::Instant::now();
    // New connections are no longer accepted...
    let mut refused = false;
    for _ in 0..40 {
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        if fresh
            .get(format!(
                "{}/.well-known/oauth-authorization-server",
                s.proxy.url
            ))
            .send()
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        refused,
        "the proxy kept accepting connections after shutdown"
    );
    // ...while the open stream still delivers what the downstream sends.
    s.downstream.state.release.notify_waiters();
    let second = tokio::time::timeout(Duration::from_secs(2), r.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&second).contains("\"result\""));
    // The grace period over, the stream is closed.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = r.chunk().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream outlived the grace period");
    assert!(
        stopped_at.elapsed() >= Duration::from_millis(900),
        "closed before the grace period ended"
    );
}
