//! What reaches the downstream, and what comes back from it (DESIGN.md
//! invariant 6): forwarding headers are the proxy's own, cookies cross only
//! by name, credentials and session ids are read one way only.

mod common;

use common::downstream::{Downstream, ANSWER_HEADER};
use common::*;
use reqwest::header::HeaderValue;
use serde_json::{json, Value};

struct Setup {
    proxy: TestProxy,
    downstream: Downstream,
    token: String,
}

async fn setup_with(server_extra: &str, downstream_extra: &str) -> Setup {
    let downstream = Downstream::start().await;
    let proxy = TestProxy::start_with_options(&Options {
        downstream_url: Some(downstream.mcp_url()),
        server_extra: server_extra.to_string(),
        downstream_extra: format!("sse_url = \"{}/sse\"\n{downstream_extra}", downstream.url),
        ..Default::default()
    })
    .await;
    let client = proxy.public_client().await;
    let tokens = proxy.tokens_for(&client, &[]).await;
    let token = tokens["access_token"].as_str().unwrap().to_string();
    Setup {
        proxy,
        downstream,
        token,
    }
}

async fn setup() -> Setup {
    setup_with("", "").await
}

fn call(method: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": "whoami"}})
}

impl Setup {
    /// A POST /mcp with our token.
    fn post(&self, method: &str) -> reqwest::RequestBuilder {
        self.post_to("/mcp", method).bearer_auth(&self.token)
    }

    fn post_to(&self, path: &str, method: &str) -> reqwest::RequestBuilder {
        self.proxy
            .http
            .post(format!("{}{path}", self.proxy.url))
            .header("accept", "application/json, text/event-stream")
            .json(&call(method))
    }

    async fn initialize(&self) -> String {
        let r = self.post("initialize").send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["mcp-session-id"].to_str().unwrap().to_string()
    }

    /// Sends, expects a JSON-RPC error with `status`, and that the
    /// downstream received nothing new.
    async fn refused(&self, request: reqwest::RequestBuilder, status: u16) -> Value {
        let before = self.downstream.requests().len();
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), status);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["jsonrpc"], "2.0", "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
        assert_eq!(
            self.downstream.requests().len(),
            before,
            "the refused request reached the downstream"
        );
        body
    }
}

#[tokio::test]
async fn invariant_6_client_forwarding_headers_never_reach_the_downstream() {
    let s = setup().await;
    let mut request = s.post("tools/call");
    for (name, value) in [
        ("forwarded", "for=6.6.6.6;host=evil.example;proto=http"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x_forwarded_for", "6.6.6.6"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-uri", "/admin"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-prefix", "/admin"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-real-ip", "6.6.6.6"),
        ("x-client-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("cf-connecting-ip", "6.6.6.6"),
        ("x-cluster-client-ip", "6.6.6.6"),
        ("x-http-method-override", "DELETE"),
        ("via", "1.1 evil"),
        ("x-custom", "kept"),
    ] {
        request = request.header(name, value);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = s.downstream.last().headers;
    for (name, value) in &seen {
        let n = name.as_str();
        let speaks_for_the_connection = n.contains('_')
            || n == "forwarded"
            || n.starts_with("x-forwarded-")
            || n.starts_with("x-original-")
            || n.ends_with("-ip")
            || n == "x-rewrite-url"
            || n == "x-http-method-override"
            || n == "via";
        if speaks_for_the_connection {
            assert!(
                [
                    "x-forwarded-for",
                    "x-forwarded-host",
                    "x-forwarded-proto",
                    "via"
                ]
                .contains(&n),
                "the client's {n} reached the downstream"
            );
        }
        assert_ne!(value, "6.6.6.6", "{n}");
    }
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    let port = s.proxy.url.rsplit(':').next().unwrap();
    assert_eq!(seen["x-forwarded-host"], format!("127.0.0.1:{port}"));
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["via"], "1.1 mcp-oauth-proxy");
    assert_eq!(seen["x-custom"], "kept");
}

#[tokio::test]
async fn invariant_6_a_trusted_load_balancers_forwarded_for_is_appended_to() {
    let s = setup_with("trusted_proxies = [\"127.0.0.0/8\"]", "").await;
    let r = s
        .post("tools/call")
        .header("x-forwarded-for", "198.51.100.7")
        .header("x-real-ip", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = s.downstream.last().headers;
    assert_eq!(seen["x-forwarded-for"], "198.51.100.7, 127.0.0.1");
    assert!(seen.get("x-real-ip").is_none());
}

#[tokio::test]
async fn a_bad_trusted_proxy_entry_is_a_config_error_naming_the_key() {
    let config: mcp_oauth_proxy::config::Config =
        figment::Figment::from(figment::providers::Serialized::defaults(
            toml::from_str::<toml::Value>(&config_toml(
                1,
                "https://issuer.example",
                std::path::Path::new("/tmp/unused.db"),
                &Options {
                    server_extra: "trusted_proxies = [\"10.0.0.0/33\"]".into(),
                    downstream_extra: "pass_cookies = [\"__Host-mcp-browser\"]".into(),
                    ..Default::default()
                },
            ))
            .unwrap(),
        ))
        .extract()
        .unwrap();
    let e = config.clone().validate().unwrap_err().to_string();
    assert!(e.starts_with("server.trusted_proxies:"), "{e}");
    let mut config = config;
    config.server.trusted_proxies.clear();
    let e = config.validate().unwrap_err().to_string();
    assert!(e.starts_with("downstream.pass_cookies:"), "{e}");
}

#[tokio::test]
async fn client_cookies_reach_the_downstream_only_when_the_operator_lists_them() {
    let cookies = "__Host-mcp-browser=signed; theirs=1; tracking=2";
    let s = setup().await;
    let r = s
        .post("tools/call")
        .header("cookie", cookies)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(s.downstream.last().headers.get("cookie").is_none());

    let s = setup_with("", "pass_cookies = [\"theirs\"]").await;
    let r = s
        .post("tools/call")
        .header("cookie", cookies)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.downstream.last().headers["cookie"], "theirs=1");
}

#[tokio::test]
async fn a_downstream_cannot_set_the_proxys_cookies_or_clear_its_origin() {
    let s = setup_with("", "pass_cookies = [\"app\"]").await;
    let mut request = s.post("tools/call");
    for answer in [
        "set-cookie: __Host-mcp-browser=evil; Path=/; Secure",
        "set-cookie: mcp-browser=evil; Path=/",
        "set-cookie: unlisted=1; Path=/",
        "set-cookie: app=1; Path=/",
        "clear-site-data: \"cookies\"",
    ] {
        request = request.header(ANSWER_HEADER, answer);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let set: Vec<&str> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(set, vec!["app=1; Path=/"]);
    assert!(r.headers().get("clear-site-data").is_none());
}

#[tokio::test]
async fn invariant_7_ambiguous_credentials_are_400_in_the_routes_error_form() {
    let s = setup().await;
    let valid = format!("Bearer {}", s.token);
    // One valid, one junk, in either order: neither wins.
    for pair in [
        [valid.as_str(), "Bearer junk"],
        ["Bearer junk", valid.as_str()],
    ] {
        let request = s
            .post_to("/mcp", "tools/list")
            .header("authorization", pair[0])
            .header("authorization", pair[1]);
        let body = s.refused(request, 400).await;
        assert_eq!(body["error"]["code"], -32600);
    }
    let request = s
        .proxy
        .http
        .get(format!("{}/sse", s.proxy.url))
        .header("authorization", valid.as_str())
        .header("authorization", "Bearer junk");
    s.refused(request, 400).await;
    // A token with extra parameters, or in the query as well.
    let request = s
        .post_to("/mcp", "tools/list")
        .header("authorization", format!("{valid}, realm=\"x\""));
    s.refused(request, 400).await;
    let request = s
        .post_to(&format!("/mcp?access_token={}", s.token), "tools/list")
        .bearer_auth(&s.token);
    s.refused(request, 400).await;
    // The scheme is case-insensitive (RFC 6750).
    let r = s
        .post_to("/mcp", "tools/list")
        .header("authorization", format!("bEaReR {}", s.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn an_mcp_session_id_is_one_visible_ascii_value_or_400() {
    let s = setup().await;
    let session = s.initialize().await;
    // Ours first, then another: the other used to travel unchecked.
    let request = s
        .post("tools/list")
        .header("mcp-session-id", session.as_str())
        .header("mcp-session-id", "someone-elses");
    s.refused(request, 400).await;
    // Not visible ASCII: the ownership check used to be skipped.
    for bad in [&b"\xffsomeone-elses"[..], b"has space"] {
        let request = s
            .post("tools/list")
            .header("mcp-session-id", HeaderValue::from_bytes(bad).unwrap());
        s.refused(request, 400).await;
    }
    let r = s
        .post("tools/list")
        .header("mcp-session-id", session.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.downstream
            .last()
            .headers
            .get_all("mcp-session-id")
            .iter()
            .collect::<Vec<_>>(),
        vec![session.as_str()]
    );
}

#[tokio::test]
async fn invariant_10_headers_the_proxy_reads_are_refused_when_repeated() {
    let s = setup().await;
    for name in ["mcp-protocol-version", "last-event-id", "mcp-method"] {
        let request = s
            .post("tools/call")
            .header(name, "2025-06-18")
            .header(name, "2025-11-25");
        let body = s.refused(request, 400).await;
        assert!(
            body["error"]["message"].as_str().unwrap().contains(name),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_downstream_session_id_that_is_not_one_visible_ascii_value_is_502() {
    let s = setup().await;
    for answer in [
        vec!["mcp-session-id: a", "mcp-session-id: b"],
        vec!["mcp-session-id: has space"],
    ] {
        let mut request = s.post("tools/call");
        for a in &answer {
            request = request.header(ANSWER_HEADER, *a);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 502, "{answer:?}");
        assert!(r.headers().get("mcp-session-id").is_none());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["jsonrpc"], "2.0");
    }
}

#[tokio::test]
async fn the_audit_event_names_the_client_behind_a_trusted_load_balancer() {
    let s = setup_with("trusted_proxies = [\"127.0.0.1\"]", "").await;
    let marker = format!("audit-client-{}", std::process::id());
    let r = s
        .post("tools/call")
        .header("x-request-id", &marker)
        .header("x-forwarded-for", "6.6.6.6, 198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events: Vec<Value> = captured_logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["audit"] == true && v["fields"]["request_id"] == marker.as_str())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["fields"]["client_address"], "198.51.100.7");
}

#[tokio::test]
async fn a_session_id_reaches_the_downstream_only_where_its_owner_is_checked() {
    let s = setup().await;
    let r = s
        .proxy
        .http
        .get(format!("{}/sse", s.proxy.url))
        .bearer_auth(&s.token)
        .header("mcp-session-id", "someone-elses")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = s.downstream.last();
    assert_eq!(seen.uri.path(), "/sse");
    assert!(seen.headers.get("mcp-session-id").is_none());
}
