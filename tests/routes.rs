//! Several MCP servers behind one proxy: each route's metadata, token
//! binding (RFC 8707), its own policy (`login()` at sign-in and on use,
//! `request.route`), its own sessions, and path matching that never lets
//! one route's request reach another's downstream.

mod common;

use std::path::PathBuf;

use common::downstream::Downstream;
use common::*;
use serde_json::{json, Value};

/// The wiki route lets in only the `wiki` group (at sign-in and on use),
/// and tells its downstream which route the policy saw.
const WIKI_POLICY: &str = r#"
fn login(user) {
    if !user.groups.contains("wiki") { return deny(403, "the wiki is for the wiki group"); }
    allow()
}
fn authorize(user, request) {
    allow(#{ "X-User-Email": user.email, "X-Route": request.route })
}
"#;

struct Setup {
    proxy: TestProxy,
    main: Downstream,
    wiki: Downstream,
    client: Client,
    policy: PathBuf,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let policy: PathBuf = dir.path().join("wiki.rhai");
    std::fs::write(&policy, WIKI_POLICY).unwrap();
    let main = Downstream::start().await;
    let wiki = Downstream::start().await;
    let proxy = TestProxy::start_with_options(&Options {
        downstream_url: Some(main.mcp_url()),
        extra: format!(
            r#"
[[routes]]
name = "wiki"
path = "/wiki/mcp"
sse_path = "/wiki/sse"
[routes.downstream]
url = "{}"
sse_url = "{}/sse"
[routes.policy]
path = "{}"
identity_headers = ["X-Route"]
watch_interval = "100ms"
"#,
            wiki.mcp_url(),
            wiki.url,
            policy.display()
        ),
        ..Default::default()
    })
    .await;
    let client = proxy.public_client().await;
    Setup {
        proxy,
        main,
        wiki,
        client,
        policy,
        _dir: dir,
    }
}

fn person(sub: &str, groups: &[&str]) -> Value {
    json!({"sub": sub, "email": format!("{sub}@example.com"), "name": sub, "groups": groups})
}

impl Setup {
    async fn token(&self, who: Value, resource: Option<&str>) -> String {
        self.proxy.provider.set_user(who);
        let extra: Vec<(&str, &str)> = resource.map(|r| ("resource", r)).into_iter().collect();
        let t = self.proxy.tokens_for(&self.client, &extra).await;
        t["access_token"].as_str().unwrap().to_string()
    }

    fn resource(&self, path: &str) -> String {
        format!("{}{path}", self.proxy.url)
    }

    async fn call(&self, path: &str, token: &str) -> reqwest::Response {
        self.proxy
            .http
            .post(format!("{}{path}", self.proxy.url))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("x-user-email", "forged@evil.example")
            .header("x-route", "forged")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn each_route_has_its_own_protected_resource_metadata_and_challenge() {
    let s = setup().await;
    for (path, name) in [
        ("/mcp", "MCP server (via mcp-oauth-proxy)"),
        ("/sse", "MCP server (via mcp-oauth-proxy)"),
        ("/wiki/mcp", "wiki (via mcp-oauth-proxy)"),
        ("/wiki/sse", "wiki (via mcp-oauth-proxy)"),
    ] {
        let r = s
            .proxy
            .http
            .get(format!(
                "{}/.well-known/oauth-protected-resource{path}",
                s.proxy.url
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let doc: Value = r.json().await.unwrap();
        assert_eq!(doc["resource"], s.resource(path));
        assert_eq!(doc["resource_name"], name);
        assert_eq!(doc["authorization_servers"][0], s.proxy.url);
    }
    let r = s
        .proxy
        .http
        .post(format!("{}/wiki/mcp", s.proxy.url))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains(&format!(
            "{}/.well-known/oauth-protected-resource/wiki/mcp",
            s.proxy.url
        )),
        "{challenge}"
    );
    // A path no route has gets no metadata.
    let r = s
        .proxy
        .http
        .get(format!(
            "{}/.well-known/oauth-protected-resource/github/mcp",
            s.proxy.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_token_bound_to_one_route_is_refused_on_another() {
    let s = setup().await;
    let wiki_user = person("wendy", &["wiki"]);
    let for_main = s.token(wiki_user.clone(), Some(&s.resource("/mcp"))).await;
    let for_wiki = s.token(wiki_user, Some(&s.resource("/wiki/mcp"))).await;

    assert_eq!(s.call("/mcp", &for_main).await.status(), 200);
    let refused = s.call("/wiki/mcp", &for_main).await;
    assert_eq!(refused.status(), 401);
    assert!(refused.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    assert_eq!(s.call("/wiki/mcp", &for_wiki).await.status(), 200);
    assert_eq!(s.call("/mcp", &for_wiki).await.status(), 401);
    assert_eq!(
        s.main.requests().len(),
        1,
        "one request reached the main server"
    );
    assert_eq!(s.wiki.requests().len(), 1, "one request reached the wiki");
}

#[tokio::test]
async fn a_root_token_works_on_every_route_whose_policy_allows_the_person() {
    let s = setup().await;
    let wendy = s.token(person("wendy", &["wiki"]), None).await;
    let rooted = s
        .token(person("wendy", &["wiki"]), Some(&s.proxy.url))
        .await;
    let dave = s.token(person("dave", &["engineering"]), None).await;

    for token in [&wendy, &rooted] {
        assert_eq!(s.call("/mcp", token).await.status(), 200);
        assert_eq!(s.call("/wiki/mcp", token).await.status(), 200);
    }
    // Dave may use the main server, not the wiki: its login() refuses him
    // on first use, and nothing reaches the wiki.
    assert_eq!(s.call("/mcp", &dave).await.status(), 200);
    let denied = s.call("/wiki/mcp", &dave).await;
    assert_eq!(denied.status(), 403);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["error"]["message"], "the wiki is for the wiki group");
    assert_eq!(
        s.wiki.requests().len(),
        2,
        "only wendy's two calls reached the wiki"
    );
}

#[tokio::test]
async fn a_person_the_route_refuses_gets_no_token_for_it() {
    let s = setup().await;
    s.proxy.provider.set_user(person("dave", &["engineering"]));
    let pkce = Pkce::new();
    let mut browser = Browser::new();
    let wiki = s.resource("/wiki/mcp");
    let url = s
        .proxy
        .authorize_url(&s.client, &pkce, "st", &[("resource", wiki.as_str())]);
    let consent = browser.get(&url).await;
    assert_eq!(consent.status, 200);
    assert!(
        consent
            .body
            .contains("MCP server: <strong><code>wiki</code></strong>"),
        "the consent page names the server: {}",
        consent.body
    );
    let r = browser
        .post_form(
            &format!("{}/consent", s.proxy.url),
            &with_decision(consent.form_fields(), "approve"),
        )
        .await;
    let r = browser.get(&r.location()).await;
    let callback = browser.get(&r.location()).await;
    assert_eq!(callback.status, 403, "{}", callback.body);
    assert!(callback.body.contains("the wiki is for the wiki group"));
    assert!(callback.header("location").is_none(), "no code was sent");

    // The same person asking for the whole proxy gets in: the main route
    // lets him, and its consent page names both servers.
    let url = s.proxy.authorize_url(&s.client, &Pkce::new(), "st", &[]);
    let consent = Browser::new().get(&url).await;
    assert!(
        consent.body.contains(
            "MCP servers: <strong><code>default</code></strong>, <strong><code>wiki</code></strong>"
        ),
        "{}",
        consent.body
    );
}

#[tokio::test]
async fn identity_headers_are_the_routes_own_and_forged_ones_never_arrive() {
    let s = setup().await;
    let token = s.token(person("wendy", &["wiki"]), None).await;
    assert_eq!(s.call("/mcp", &token).await.status(), 200);
    assert_eq!(s.call("/wiki/mcp", &token).await.status(), 200);

    let main = s.main.last().headers;
    assert_eq!(main["x-user-email"], "wendy@example.com");
    // Which headers are identity headers is each route's own setting: on
    // the default route X-Route is nobody's, so the client's passes.
    assert_eq!(main["x-route"], "forged");
    let wiki = s.wiki.last().headers;
    assert_eq!(wiki["x-user-email"], "wendy@example.com");
    assert_eq!(wiki["x-route"], "wiki", "request.route is the route's name");
    assert_eq!(wiki.get_all("x-route").iter().count(), 1);
    assert_eq!(wiki.get_all("x-route").iter().count(), 1);
    for headers in [&main, &wiki] {
        assert_eq!(headers.get_all("x-user-email").iter().count(), 1);
        assert!(headers
            .get_all("x-user-email")
            .iter()
            .all(|v| v != "forged@evil.example"));
    }
}

#[tokio::test]
async fn an_mcp_session_of_one_route_is_unknown_on_another() {
    let s = setup().await;
    let token = s.token(person("wendy", &["wiki"]), None).await;
    let r = s
        .proxy
        .http
        .post(format!("{}/mcp", s.proxy.url))
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let r = s
        .proxy
        .http
        .post(format!("{}/wiki/mcp", s.proxy.url))
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(s.wiki.requests().is_empty());
}

#[tokio::test]
async fn paths_match_exactly_and_never_reach_another_route() {
    let s = setup().await;
    let token = s.token(person("wendy", &["wiki"]), None).await;
    for path in [
        "/wiki/mcp/",
        "/wiki/mcpx",
        "/wiki/mcp/extra",
        "/wiki",
        "/WIKI/mcp",
        "/wiki/%6Dcp",
        "/%77iki/mcp",
        "/wiki%2Fmcp",
        "/wiki/./mcp",
        "/wiki/../mcp",
        "/mcp/../wiki/mcp",
        "/x/../wiki/mcp",
        "/wiki//mcp",
        "//wiki/mcp",
        "/wiki/sse/message/x",
        "/mcp/",
    ] {
        // Sent as written: reqwest would normalise dot segments.
        let response = raw_post(&s.proxy.url, path, &token).await;
        assert!(
            response.starts_with("HTTP/1.1 404") || response.starts_with("HTTP/1.1 400"),
            "{path}: {}",
            response.lines().next().unwrap_or_default()
        );
    }
    assert!(s.main.requests().is_empty(), "{:?}", s.main.requests());
    assert!(s.wiki.requests().is_empty(), "{:?}", s.wiki.requests());
    // The exact paths do work.
    assert!(raw_post(&s.proxy.url, "/wiki/mcp", &token)
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(raw_post(&s.proxy.url, "/mcp", &token)
        .await
        .starts_with("HTTP/1.1 200"));
}

/// A POST of `tools/list` to `path`, byte for byte as written.
async fn raw_post(base: &str, path: &str, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = base.trim_start_matches("http://");
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn a_routes_legacy_sse_announces_its_own_message_endpoint() {
    let s = setup().await;
    let token = s.token(person("wendy", &["wiki"]), None).await;
    let mut r = s
        .proxy
        .http
        .get(format!("{}/wiki/sse", s.proxy.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = String::from_utf8(r.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(
        first.starts_with("event: endpoint\ndata: /wiki/sse/message?sid="),
        "{first}"
    );
    let endpoint = first.lines().nth(1).unwrap().trim_start_matches("data: ");
    let post = |path: String| {
        s.proxy
            .http
            .post(format!("{}{path}", s.proxy.url))
            .bearer_auth(&token)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
    };
    // The sid is the wiki's: the default route's message endpoint does not know it.
    let elsewhere = endpoint.replace("/wiki/sse/message", "/sse/message");
    assert_eq!(post(elsewhere).await.unwrap().status(), 404);
    assert_eq!(post(endpoint.to_string()).await.unwrap().status(), 202);
    let arrived = s.wiki.last();
    assert_eq!(arrived.uri.to_string(), "/messages?sessionId=legacy-1");
    assert_eq!(arrived.headers["x-route"], "wiki");
    assert!(s.main.requests().is_empty());
}

#[tokio::test]
async fn each_routes_policy_reloads_on_its_own_and_keeps_its_last_good_version() {
    let s = setup().await;
    let token = s.token(person("wendy", &["wiki"]), None).await;
    let edited = WIKI_POLICY.replace("\"X-Route\": request.route", "\"X-Route\": \"v2\"");
    let tmp = s.policy.with_extension("tmp");
    std::fs::write(&tmp, &edited).unwrap();
    std::fs::rename(&tmp, &s.policy).unwrap();
    let mut seen = String::new();
    for _ in 0..50 {
        assert_eq!(s.call("/wiki/mcp", &token).await.status(), 200);
        seen = s.wiki.last().headers["x-route"]
            .to_str()
            .unwrap()
            .to_string();
        if seen == "v2" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, "v2", "the wiki's policy was not reloaded");
    // A broken edit keeps v2 serving; the default route never changed.
    std::fs::write(&tmp, "fn authorize(user, request) { allow( }").unwrap();
    std::fs::rename(&tmp, &s.policy).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(s.call("/wiki/mcp", &token).await.status(), 200);
    assert_eq!(s.wiki.last().headers["x-route"], "v2");
    let wiki_engine = &s.proxy.app().routes[1].policy;
    assert_eq!(wiki_engine.route(), "wiki");
    assert!(wiki_engine.reloads.last_error.lock().unwrap().is_some());
    assert!(s.proxy.app().routes[0]
        .policy
        .reloads
        .last_error
        .lock()
        .unwrap()
        .is_none());
    assert_eq!(s.call("/mcp", &token).await.status(), 200);
}

/// A route with every optional layer off beside the default route with
/// them on: the list filter, the rate limits and the audit event are each
/// route's own choice; the policy's `authorize` runs on both.
#[tokio::test]
async fn optional_layers_are_switched_per_route() {
    let per_tool = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/per-tool.rhai");
    let main = Downstream::start().await;
    let open = Downstream::start().await;
    let proxy = TestProxy::start_with_options(&Options {
        downstream_url: Some(main.mcp_url()),
        extra: format!(
            r#"
[policy]
path = "{policy}"
[limits.mcp_user]
requests = 3
period = "1h"
[[routes]]
name = "open"
path = "/open/mcp"
[routes.downstream]
url = "{open}"
[routes.policy]
path = "{policy}"
[routes.layers]
filter_lists = false
rate_limits = false
audit = false
"#,
            policy = per_tool.display(),
            open = open.mcp_url(),
        ),
        ..Default::default()
    })
    .await;
    let client = proxy.public_client().await;
    let token = proxy
        .access_token_as(&client, person("dev", &["engineering"]))
        .await;
    let rpc = |path: &'static str, method: &'static str, marker: String| {
        proxy
            .http
            .post(format!("{}{path}", proxy.url))
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .header("x-request-id", marker)
            .json(
                &json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": "deploy"}}),
            )
            .send()
    };
    let tools = |body: Value| -> Vec<String> {
        body["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    let filtered = rpc("/mcp", "tools/list", "m-1".into()).await.unwrap();
    assert!(!tools(filtered.json().await.unwrap()).contains(&"deploy".to_string()));
    let unfiltered = rpc("/open/mcp", "tools/list", "o-1".into()).await.unwrap();
    assert!(tools(unfiltered.json().await.unwrap()).contains(&"deploy".to_string()));
    // authorize() still runs where the filter is off.
    let denied = rpc("/open/mcp", "tools/call", "o-2".into()).await.unwrap();
    assert_eq!(denied.status(), 403);

    // Three requests per user on the limited route: the fourth is 429
    // there, while the open route goes on.
    let mut statuses = Vec::new();
    for i in 0..3 {
        statuses.push(
            rpc("/mcp", "ping", format!("m-{}", i + 2))
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        statuses,
        [200, 200, 429],
        "the first tools/list counted too"
    );
    for i in 0..5 {
        let r = rpc("/open/mcp", "ping", format!("o-{}", i + 3))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    let logs = captured_logs();
    let audited = |marker: &str| {
        logs.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["audit"] == true && v["fields"]["request_id"] == marker)
            .count()
    };
    assert_eq!(
        audited("m-1"),
        1,
        "the default route writes its audit event"
    );
    for marker in ["o-1", "o-2", "o-3"] {
        assert_eq!(audited(marker), 0, "{marker}: the open route writes none");
    }
}

/// One consent per client covers the servers it named: approving a client
/// for the wiki does not approve it for the default route, and an approval
/// for the whole proxy covers both.
#[tokio::test]
async fn a_consent_covers_the_servers_it_named() {
    let s = setup().await;
    s.proxy.provider.set_user(person("wendy", &["wiki"]));
    let mut browser = Browser::new();
    let authorize = |resource: &str| {
        let extra: Vec<(&str, &str)> = if resource.is_empty() {
            vec![]
        } else {
            vec![("resource", resource)]
        };
        s.proxy.authorize_url(&s.client, &Pkce::new(), "st", &extra)
    };
    let wiki = s.resource("/wiki/mcp");
    let main = s.resource("/mcp");

    // First time for the wiki: the page, naming the wiki; approve.
    let page = browser.get(&authorize(&wiki)).await;
    assert_eq!(page.status, 200, "a consent page");
    assert!(page.body.contains("<code>wiki</code>"));
    let r = browser
        .post_form(
            &format!("{}/consent", s.proxy.url),
            &with_decision(page.form_fields(), "approve"),
        )
        .await;
    assert_eq!(r.status, 302);
    // The wiki again: remembered, straight to the provider.
    let again = browser.get(&authorize(&wiki)).await;
    assert_eq!(again.status, 302, "{}", again.body);
    assert!(again.location().starts_with(&s.proxy.provider.issuer));
    // The default route, and the whole proxy: not approved yet.
    for resource in [main.as_str(), ""] {
        let page = browser.get(&authorize(resource)).await;
        assert_eq!(page.status, 200, "{resource}: a consent page again");
        assert!(page.body.contains("<code>default</code>"), "{}", page.body);
    }
    // Approving the whole proxy covers every server from then on.
    let page = browser.get(&authorize("")).await;
    let r = browser
        .post_form(
            &format!("{}/consent", s.proxy.url),
            &with_decision(page.form_fields(), "approve"),
        )
        .await;
    assert_eq!(r.status, 302);
    for resource in [main.as_str(), wiki.as_str(), ""] {
        let r = browser.get(&authorize(resource)).await;
        assert_eq!(r.status, 302, "{resource}: remembered");
    }
}
