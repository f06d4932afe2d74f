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
        "mcp_oauth_proxy_mcp_requests_total{decision=\"allow\",method=\"tools/call\",route=\"default\",tool=\"whoami\"} 2",
        "mcp_oauth_proxy_policy_decisions_total{decision=\"allow\",route=\"default\"} 2",
        "mcp_oauth_proxy_token_cache_requests_total{result=\"miss\"} 1",
        "mcp_oauth_proxy_token_cache_requests_total{result=\"hit\"} 1",
        "mcp_oauth_proxy_downstream_requests_total{endpoint=\"/mcp\",route=\"default\",status_class=\"2xx\"} 2",
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
    // Lines written while the request is served carry its id in the
    // request's span too.
    assert_eq!(
        events[0]["span"]["request_id"],
        marker.as_str(),
        "{events:?}"
    );
    let f = &events[0]["fields"];
    assert_eq!(f["route"], "default");
    assert_eq!(f["sub"], "alice-sub-123");
    assert_eq!(f["email"], "alice@example.com");
    assert_eq!(f["client_id"], client.client_id.as_str());
    assert_eq!(f["mcp_method"], "tools/call");
    assert_eq!(f["tool"], "whoami");
    assert_eq!(f["decision"], "allow");
    assert_eq!(f["status"], 200);
    assert!(f["duration_ms"].as_f64().unwrap() >= 0.0);
}

/// Every value the `route` label takes on the MCP metrics (not
/// `http_requests_*`, whose `route` is the matched path template).
fn route_label_values(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with("mcp_oauth_proxy_") && !l.starts_with("mcp_oauth_proxy_http_"))
        .filter_map(|l| l.split_once("route=\"").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once('"').map(|(v, _)| v.to_string()))
        .collect()
}

/// The audit event of the request with this id.
fn audit_event(request_id: &str) -> serde_json::Value {
    let events: Vec<serde_json::Value> = captured_logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["audit"] == true && v["fields"]["request_id"] == request_id)
        .collect();
    assert_eq!(events.len(), 1, "{request_id}: {events:?}");
    events[0]["fields"].clone()
}

#[tokio::test]
async fn two_routes_are_counted_and_audited_each_under_its_configured_name() {
    let main = Downstream::start().await;
    let wiki = Downstream::start().await;
    let proxy = TestProxy::start_with_options(&Options {
        downstream_url: Some(main.mcp_url()),
        server_extra: "admin_listen = \"127.0.0.1:0\"".into(),
        extra: format!(
            "[metrics]\ntools = [\"whoami\"]\n\n[[routes]]\nname = \"wiki\"\npath = \"/wiki/mcp\"\n[routes.downstream]\nurl = \"{}\"\n",
            wiki.mcp_url()
        ),
        ..Default::default()
    })
    .await;
    let admin = format!(
        "http://{}",
        proxy.running.admin_addr.expect("admin listener")
    );

    // Before any request each route has its series, at zero, so a
    // dashboard's route variable lists both from the start.
    let text = scrape(&proxy, &admin).await;
    for route in ["default", "wiki"] {
        for expected in [
            format!("mcp_oauth_proxy_mcp_requests_total{{decision=\"unauthenticated\",method=\"none\",route=\"{route}\",tool=\"\"}} 0"),
            format!("mcp_oauth_proxy_policy_decisions_total{{decision=\"deny\",route=\"{route}\"}} 0"),
            format!("mcp_oauth_proxy_downstream_timeouts_total{{route=\"{route}\"}} 0"),
        ] {
            assert!(text.contains(&expected), "missing before traffic: {expected}\n{text}");
        }
    }
    assert_eq!(
        route_label_values(&text),
        BTreeSet::from(["default".to_string(), "wiki".to_string()])
    );

    // A token for the whole proxy (no resource) works on both routes.
    let client = proxy.public_client().await;
    let t = proxy.tokens_for(&client, &[]).await;
    let token = t["access_token"].as_str().unwrap();
    let call =
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami"}});
    let marker = format!("routes-{}", rand::thread_rng().gen::<u32>());
    let mut sent = Vec::new();
    for (i, path) in ["/mcp", "/mcp", "/wiki/mcp"].iter().enumerate() {
        let id = format!("{marker}-{i}");
        let r = proxy
            .http
            .post(format!("{}{path}", proxy.url))
            .bearer_auth(token)
            .header("x-request-id", &id)
            .json(&call)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        sent.push((id, *path));
    }
    let anonymous = format!("{marker}-anonymous");
    let r = proxy
        .http
        .post(format!("{}/wiki/mcp", proxy.url))
        .header("x-request-id", &anonymous)
        .json(&call)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(main.requests().len(), 2, "the default route's downstream");
    assert_eq!(wiki.requests().len(), 1, "the wiki route's downstream");

    let text = scrape(&proxy, &admin).await;
    for expected in [
        "mcp_oauth_proxy_mcp_requests_total{decision=\"allow\",method=\"tools/call\",route=\"default\",tool=\"whoami\"} 2",
        "mcp_oauth_proxy_mcp_requests_total{decision=\"allow\",method=\"tools/call\",route=\"wiki\",tool=\"whoami\"} 1",
        "mcp_oauth_proxy_mcp_requests_total{decision=\"unauthenticated\",method=\"none\",route=\"wiki\",tool=\"\"} 1",
        "mcp_oauth_proxy_mcp_requests_total{decision=\"unauthenticated\",method=\"none\",route=\"default\",tool=\"\"} 0",
        "mcp_oauth_proxy_policy_decisions_total{decision=\"allow\",route=\"default\"} 2",
        "mcp_oauth_proxy_policy_decisions_total{decision=\"allow\",route=\"wiki\"} 1",
        "mcp_oauth_proxy_policy_evaluation_seconds_count{route=\"wiki\"} 1",
        "mcp_oauth_proxy_downstream_requests_total{endpoint=\"/mcp\",route=\"default\",status_class=\"2xx\"} 2",
        "mcp_oauth_proxy_downstream_requests_total{endpoint=\"/mcp\",route=\"wiki\",status_class=\"2xx\"} 1",
        "mcp_oauth_proxy_downstream_request_duration_seconds_count{endpoint=\"/mcp\",route=\"wiki\"} 1",
        // Path templates: an MCP route's configured path.
        "mcp_oauth_proxy_http_requests_total{method=\"POST\",route=\"/wiki/mcp\",status_class=\"2xx\"} 1",
        "mcp_oauth_proxy_http_requests_total{method=\"POST\",route=\"/mcp\",status_class=\"2xx\"} 2",
    ] {
        assert!(text.contains(expected), "missing: {expected}\n{text}");
    }
    assert_eq!(
        route_label_values(&text),
        BTreeSet::from(["default".to_string(), "wiki".to_string()]),
        "route values come from the configuration only"
    );

    for (id, path) in &sent {
        let f = audit_event(id);
        let route = if *path == "/wiki/mcp" {
            "wiki"
        } else {
            "default"
        };
        assert_eq!(f["route"], route, "{path}: {f}");
        assert_eq!(f["decision"], "allow");
        assert_eq!(f["tool"], "whoami");
    }
    let f = audit_event(&anonymous);
    assert_eq!(f["route"], "wiki");
    assert_eq!(f["decision"], "unauthenticated");
    assert_eq!(f["status"], 401);
}
