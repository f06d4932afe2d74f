//! Metrics, health and audit: the admin listener, label sets that never grow
//! with users or paths, and one audit event per MCP request.

mod common;

use std::collections::BTreeSet;

use common::downstream::Downstream;
use common::*;
use rand::Rng;
use serde_json::json;

async fn setup() -> (TestProxy, Downstream, String) {
    let downstream = Downstream::start().await;
    let proxy = TestProxy::start_with_options(&Options {
        downstream_url: Some(downstream.mcp_url()),
        server_extra: "admin_listen = \"127.0.0.1:0\"".into(),
        extra: "[metrics]\ntools = [\"whoami\"]\n".into(),
        ..Default::default()
    })
    .await;
    let admin = format!(
        "http://{}",
        proxy.running.admin_addr.expect("admin listener")
    );
    (proxy, downstream, admin)
}

async fn scrape(proxy: &TestProxy, admin: &str) -> String {
    proxy
        .http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Series names with their label sets, without values.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with("mcp_oauth_proxy_"))
        .map(|l| {
            l.rsplit_once(' ')
                .map(|(s, _)| s.to_string())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn admin_listener_serves_metrics_and_health_and_the_public_one_does_not() {
    let (proxy, _downstream, admin) = setup().await;
    let r = proxy
        .http
        .get(format!("{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = proxy
        .http
        .get(format!("{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = proxy
        .http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    for name in [
        "mcp_oauth_proxy_build_info",
        "process_resident_memory_bytes",
        "mcp_oauth_proxy_token_cache_entries",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = proxy
            .http
            .get(format!("{}{path}", proxy.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path} is served publicly");
    }
}

#[tokio::test]
async fn a_login_and_mcp_calls_show_up_in_the_metrics() {
    let (proxy, _downstream, admin) = setup().await;
    let client = proxy.public_client().await;
    let t = proxy.tokens_for(&client, &[]).await;
    let token = t["access_token"].as_str().unwrap();
    for _ in 0..2 {
        let r = proxy
            .http
            .post(format!("{}/mcp", proxy.url))
            .bearer_auth(token)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let text = scrape(&proxy, &admin).await;
    for expected in [
        "mcp_oauth_proxy_registrations_total{result=\"success\"} 1",
        "mcp_oauth_proxy_authorizations_total{result=\"consent_required\"} 1",
        "mcp_oauth_proxy_consents_total{decision=\"approve\"} 1",
        "mcp_oauth_proxy_callbacks_total{result=\"success\"} 1",
        "mcp_oauth_proxy_token_grants_total{grant_type=\"authorization_code\",result=\"success\"} 1",
        "mcp_oauth_proxy_mcp_requests_total{decision=\"allow\",method=\"tools/call\",tool=\"whoami\"} 2",
        "mcp_oauth_proxy_policy_decisions_total{decision=\"allow\"} 2",
        "mcp_oauth_proxy_token_cache_requests_total{result=\"miss\"} 1",
        "mcp_oauth_proxy_token_cache_requests_total{result=\"hit\"} 1",
        "mcp_oauth_proxy_downstream_requests_total{route=\"/mcp\",status_class=\"2xx\"} 2",
        "mcp_oauth_proxy_http_requests_total{method=\"POST\",route=\"/mcp\",status_class=\"2xx\"} 2",
        "mcp_oauth_proxy_upstream_request_duration_seconds_count{operation=\"token\",result=\"success\"} 1",
        "mcp_oauth_proxy_token_cache_entries 1",
    ] {
        assert!(text.contains(expected), "missing: {expected}\n{text}");
    }
    assert!(
        text.contains("mcp_oauth_proxy_store_operation_duration_seconds_count{operation=\"get\"}")
    );
}

#[tokio::test]
async fn label_sets_do_not_grow_with_users_clients_tokens_paths_or_tools() {
    let (proxy, _downstream, admin) = setup().await;
    let client = proxy.public_client().await;
    let t = proxy.tokens_for(&client, &[]).await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let random = || {
        let n: u64 = rand::thread_rng().gen();
        format!("rnd{n:016x}")
    };
    // One round of every kind first, so every series that can exist does.
    let round = |value: String| {
        let http = proxy.http.clone();
        let url = proxy.url.clone();
        let token = token.clone();
        async move {
            let _ = http.get(format!("{url}/{value}")).send().await;
            let _ = http
                .post(format!("{url}/mcp"))
                .bearer_auth(&value)
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
                .send()
                .await;
            let _ = http
                .post(format!("{url}/token"))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", value.as_str()),
                    ("client_id", value.as_str()),
                ])
                .send()
                .await;
            let _ = http
                .post(format!("{url}/mcp"))
                .bearer_auth(&token)
                .json(
                    &json!({"jsonrpc": "2.0", "id": 1, "method": value, "params": {"name": value}}),
                )
                .send()
                .await;
            let _ = http
                .post(format!("{url}/mcp"))
                .bearer_auth(&token)
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": value}}))
                .send()
                .await;
        }
    };
    round(random()).await;
    let before = series(&scrape(&proxy, &admin).await);
    let mut used = Vec::new();
    for _ in 0..200 {
        let value = random();
        used.push(value.clone());
        round(value).await;
    }
    let text = scrape(&proxy, &admin).await;
    let after = series(&text);
    let new: Vec<&String> = after.difference(&before).collect();
    // Histograms may gain a bucket series when a slower request lands in a
    // bucket no earlier one did; nothing else may appear.
    assert!(
        new.iter()
            .all(|s| s.contains("_bucket{") || s.contains("_sum") || s.contains("_count")),
        "new series: {new:?}"
    );
    assert!(new.len() <= 20, "{} new series: {new:?}", new.len());
    for value in &used {
        assert!(
            !text.contains(value.as_str()),
            "a request value became a label: {value}"
        );
    }
    assert!(!text.contains(&token));
    assert!(!text.contains(&client.client_id));
}

#[tokio::test]
async fn every_mcp_request_leaves_one_audit_event() {
    let (proxy, _downstream, _admin) = setup().await;
    let client = proxy.public_client().await;
    let t = proxy.tokens_for(&client, &[]).await;
    let marker = format!("audit-{}", rand::thread_rng().gen::<u32>());
    let r = proxy
        .http
        .post(format!("{}/mcp", proxy.url))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .header("x-request-id", &marker)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], marker.as_str());
    let logs = captured_logs();
    let events: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["audit"] == true && v["fields"]["request_id"] == marker.as_str())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let f = &events[0]["fields"];
    assert_eq!(f["sub"], "alice-sub-123");
    assert_eq!(f["email"], "alice@example.com");
    assert_eq!(f["client_id"], client.client_id.as_str());
    assert_eq!(f["mcp_method"], "tools/call");
    assert_eq!(f["tool"], "whoami");
    assert_eq!(f["decision"], "allow");
    assert_eq!(f["status"], 200);
    assert!(f["duration_ms"].as_f64().unwrap() >= 0.0);
}
