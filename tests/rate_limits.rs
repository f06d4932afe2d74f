//! DESIGN.md invariant 9, request rate: every route group answers 429 with
//! `Retry-After` in its own form past its limit, other callers keep their
//! budget, the budget comes back, refusals are counted, and limits that are
//! off never refuse.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::downstream::Downstream;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A client whose connections come from another loopback address.
fn client_from(address: Ipv4Addr) -> reqwest::Client {
    reqwest::ClientBuilder::new()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(IpAddr::V4(address))
        .build()
        .unwrap()
}

const OTHER_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn registration() -> Value {
    json!({
        "client_name": "Rate limit test",
        "redirect_uris": ["http://127.0.0.1:33418/callback"],
        "token_endpoint_auth_method": "none",
    })
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response
        .headers()
        .get("retry-after")
        .expect("a 429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds")
}

fn rate_limited_count(proxy: &TestProxy, limit: &str) -> u64 {
    let text = proxy.app().metrics.render();
    let series = format!("mcp_oauth_proxy_rate_limited_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn invariant_9_rate_limit_oauth_routes_answer_429_oauth_json_with_retry_after() {
    let proxy = TestProxy::start_with(
        "[limits.register]\nrequests = 2\nperiod = \"1h\"\n\
         [limits.token]\nrequests = 3\nperiod = \"1h\"\n",
    )
    .await;
    assert_eq!(rate_limited_count(&proxy, "register"), 0);
    for _ in 0..2 {
        let (status, body) = proxy.register(registration()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let r = proxy
        .http
        .post(format!("{}/register", proxy.url))
        .json(&registration())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Two registrations an hour: the next one in half an hour.
    let wait = retry_after(&r);
    assert!((1790..=1800).contains(&wait), "Retry-After {wait}");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("limits.register"),
        "{body}"
    );
    assert_eq!(rate_limited_count(&proxy, "register"), 1);

    // /token and /revoke share one budget, and its own, not /register's.
    for path in ["/token", "/revoke", "/token"] {
        let r = proxy
            .http
            .post(format!("{}{path}", proxy.url))
            .form(&[("grant_type", "refresh_token"), ("client_id", "nobody")])
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
    }
    for path in ["/token", "/revoke"] {
        let r = proxy
            .http
            .post(format!("{}{path}", proxy.url))
            .form(&[("token", "x"), ("client_id", "nobody")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert!(retry_after(&r) >= 1);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    }
    assert_eq!(rate_limited_count(&proxy, "token"), 2);

    // Another address has its own budget.
    let other = client_from(OTHER_ADDRESS);
    let r = other
        .post(format!("{}/register", proxy.url))
        .json(&registration())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn invariant_9_rate_limit_browser_routes_answer_429_as_a_page_with_retry_after() {
    let proxy =
        TestProxy::start_with("[limits.browser]\nrequests = 3\nperiod = \"1m\"\nburst = 3\n").await;
    // Bad requests spend the budget too: they cost the server all the same.
    let authorize = format!("{}/authorize?client_id=unknown", proxy.url);
    let consent = format!("{}/consent", proxy.url);
    let callback = format!("{}/callback?state=forged&code=x", proxy.url);
    let r = proxy.http.get(&authorize).send().await.unwrap();
    assert_ne!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = proxy
        .http
        .post(&consent)
        .form(&[("decision", "approve")])
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = proxy.http.get(&callback).send().await.unwrap();
    assert_ne!(r.status(), StatusCode::TOO_MANY_REQUESTS);

    for request in [
        proxy.http.get(&authorize),
        proxy.http.post(&consent).form(&[("decision", "approve")]),
        proxy.http.get(&callback),
    ] {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        // Three a minute: the next in 20 s.
        let wait = retry_after(&r);
        assert!((19..=20).contains(&wait), "Retry-After {wait}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{:?}",
            r.headers()
        );
        assert!(r.headers().get("location").is_none(), "never a redirect");
        let page = r.text().await.unwrap();
        assert!(page.contains("Too many requests"), "{page}");
    }
    assert_eq!(rate_limited_count(&proxy, "browser"), 3);

    let other = client_from(OTHER_ADDRESS);
    let r = other.get(&authorize).send().await.unwrap();
    assert_ne!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

struct Mcp {
    proxy: TestProxy,
    _downstream: Downstream,
}

async fn mcp_setup(limits: &str) -> Mcp {
    let downstream = Downstream::start().await;
    let proxy = TestProxy::start_with_options(&Options {
        downstream_url: Some(downstream.mcp_url()),
        downstream_extra: format!("sse_url = \"{}/sse\"", downstream.url),
        extra: limits.to_string(),
        ..Default::default()
    })
    .await;
    Mcp {
        proxy,
        _downstream: downstream,
    }
}

impl Mcp {
    async fn token_for(&self, client: &Client, user: Value) -> String {
        self.proxy.access_token_as(client, user).await
    }

    async fn call(&self, token: &str) -> reqwest::Response {
        self.proxy
            .http
            .post(format!("{}/mcp", self.proxy.url))
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(token)
            .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}))
            .send()
            .await
            .unwrap()
    }
}

async fn assert_json_rpc_429(r: reqwest::Response, limit: &str) {
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&r) >= 1);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    assert!(body["error"]["code"].is_i64(), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("limits.{limit}")),
        "{body}"
    );
}

#[tokio::test]
async fn invariant_9_rate_limit_mcp_per_user_answers_json_rpc_and_spares_other_users() {
    let s = mcp_setup("[limits.mcp_user]\nrequests = 3\nperiod = \"1h\"\n").await;
    let client = s.proxy.public_client().await;
    let alice_token = s.token_for(&client, Value::Object(alice())).await;
    let bob_token = s.token_for(&client, bob()).await;
    for _ in 0..3 {
        assert_eq!(s.call(&alice_token).await.status(), StatusCode::OK);
    }
    assert_json_rpc_429(s.call(&alice_token).await, "mcp_user").await;
    // The event stream and the legacy message endpoint share the user's budget.
    let r = s
        .proxy
        .http
        .get(format!("{}/sse", s.proxy.url))
        .header("accept", "text/event-stream")
        .bearer_auth(&alice_token)
        .send()
        .await
        .unwrap();
    assert_json_rpc_429(r, "mcp_user").await;
    let r = s
        .proxy
        .http
        .post(format!("{}/sse/message?sessionId=x", s.proxy.url))
        .bearer_auth(&alice_token)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_json_rpc_429(r, "mcp_user").await;
    // Alice signed in again (another token, another session): the same
    // user, the same budget.
    let alice_again = s.token_for(&client, Value::Object(alice())).await;
    assert_ne!(alice_again, alice_token);
    assert_json_rpc_429(s.call(&alice_again).await, "mcp_user").await;

    // Bob, on the same client and address, is untouched.
    assert_eq!(s.call(&bob_token).await.status(), StatusCode::OK);
    assert_eq!(rate_limited_count(&s.proxy, "mcp_user"), 4);

    // The audit event says why.
    let logs = captured_logs();
    assert!(
        logs.lines().any(|line| line.contains("\"audit\":true")
            && line.contains("alice-sub-123")
            && line.contains("\"decision\":\"rate_limited\"")
            && line.contains("\"status\":429")),
        "no audit event for the refusal"
    );
}

#[tokio::test]
async fn invariant_9_rate_limit_mcp_per_client_spares_other_clients() {
    let s = mcp_setup("[limits.mcp_client]\nrequests = 2\nperiod = \"1h\"\n").await;
    let first = s.proxy.public_client().await;
    let second = s.proxy.public_client().await;
    let first_token = s.token_for(&first, Value::Object(alice())).await;
    let second_token = s.token_for(&second, Value::Object(alice())).await;
    for _ in 0..2 {
        assert_eq!(s.call(&first_token).await.status(), StatusCode::OK);
    }
    assert_json_rpc_429(s.call(&first_token).await, "mcp_client").await;
    assert_eq!(s.call(&second_token).await.status(), StatusCode::OK);
    assert_eq!(rate_limited_count(&s.proxy, "mcp_client"), 1);
}

#[tokio::test]
async fn invariant_9_rate_limit_mcp_per_address_stops_made_up_tokens_before_the_store() {
    let s = mcp_setup("[limits.mcp_address]\nrequests = 5\nperiod = \"1h\"\n").await;
    let misses = || {
        let text = s.proxy.app().metrics.render();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("mcp_oauth_proxy_token_cache_requests_total{result=\"miss\"} ")
            })
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let before = misses();
    let mut refused = 0;
    for i in 0..20 {
        let r = s.call(&format!("made-up-token-{i}")).await;
        match r.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert_json_rpc_429(r, "mcp_address").await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(refused, 15);
    assert_eq!(
        misses() - before,
        5,
        "refused requests never reach the store"
    );
    let other = client_from(OTHER_ADDRESS);
    let r = other
        .post(format!("{}/mcp", s.proxy.url))
        .bearer_auth("made-up")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn invariant_9_rate_limit_budget_comes_back_after_the_period() {
    let proxy =
        TestProxy::start_with("[limits.register]\nrequests = 1\nperiod = \"400ms\"\nburst = 1\n")
            .await;
    let (status, _) = proxy.register(registration()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = proxy.register(registration()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (status, body) = proxy.register(registration()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn invariant_9_rate_limits_switched_off_never_answer_429() {
    // Everything off at once, and one group off on its own.
    for limits in [
        "[limits]\nenabled = false\n[limits.register]\nrequests = 1\nperiod = \"1h\"\n",
        "[limits.register]\nenabled = false\nrequests = 1\nperiod = \"1h\"\n",
    ] {
        let proxy = TestProxy::start_with(limits).await;
        for _ in 0..10 {
            let (status, body) = proxy.register(registration()).await;
            assert_eq!(status, StatusCode::CREATED, "{limits}: {body}");
        }
        assert_eq!(rate_limited_count(&proxy, "register"), 0);
    }
}

/// Behind a trusted load balancer every client has its own budget (the
/// address comes from the balancer's `X-Forwarded-For`); from anyone else a
/// forged `X-Forwarded-For` changes nothing: the peer is the key.
#[tokio::test]
async fn invariant_9_rate_limit_counts_the_client_behind_a_trusted_proxy_never_a_forged_one() {
    let downstream = Downstream::start().await;
    let proxy = TestProxy::start_with_options(&Options {
        downstream_url: Some(downstream.mcp_url()),
        server_extra: "trusted_proxies = [\"127.0.0.1/32\"]".into(),
        extra: "[limits.mcp_address]\nrequests = 3\nperiod = \"1h\"\n".into(),
        ..Default::default()
    })
    .await;
    let call = |client: reqwest::Client, forwarded_for: &'static str| {
        let url = format!("{}/mcp", proxy.url);
        async move {
            client
                .post(url)
                .header("x-forwarded-for", forwarded_for)
                .bearer_auth("made-up")
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Through the trusted balancer (127.0.0.1): one budget per client.
    for client in ["203.0.113.7", "203.0.113.8"] {
        for _ in 0..3 {
            assert_eq!(
                call(proxy.http.clone(), client).await,
                StatusCode::UNAUTHORIZED
            );
        }
        assert_eq!(
            call(proxy.http.clone(), client).await,
            StatusCode::TOO_MANY_REQUESTS,
            "{client} has used its own budget"
        );
    }
    // From an untrusted peer (127.0.0.2) a new X-Forwarded-For per request
    // does not buy a new budget.
    let untrusted = client_from(OTHER_ADDRESS);
    let statuses = [
        call(untrusted.clone(), "198.51.100.1").await,
        call(untrusted.clone(), "198.51.100.2").await,
        call(untrusted.clone(), "198.51.100.3").await,
        call(untrusted.clone(), "198.51.100.4").await,
    ];
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    drop(downstream);
}
