//! The proxy embedded as a library (`embed::Proxy`), with the layers of
//! `examples/tool_quota`: the per-user, per-tool quota refuses the call past
//! it before the downstream sees it, the tenant header comes from the
//! session; and the hooks sit where their names say, on the routes they
//! were registered for.

mod common;

#[path = "../examples/tool_quota/quota.rs"]
mod quota;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use common::downstream::Downstream;
use common::*;
use mcp_oauth_proxy::embed::{mcp_calls, session, Hook, Proxy, Running, StartError};
use serde_json::{json, Value};
use tower::util::MapRequestLayer;

/// Two tool calls per user and tool per hour.
const CALLS: u32 = 2;

/// Denies `run_sql`, so a test can tell what a layer after the policy sees.
const POLICY: &str = r#"
fn authorize(user, request) {
    if request.mcp.tool == "run_sql" { return deny(403, "no SQL"); }
    allow(#{ "X-User-Email": user.email })
}
"#;

struct Setup {
    endpoint: Endpoint,
    running: Running,
    main: Downstream,
    wiki: Downstream,
    client: Client,
    _dir: tempfile::TempDir,
}

/// A configuration file with the default route (to `main`) and a `wiki`
/// route (to `wiki`), both with `POLICY`.
async fn config_file(
    dir: &Path,
    provider: &Provider,
    main: &Downstream,
    wiki: &Downstream,
) -> PathBuf {
    let policy = dir.join("policy.rhai");
    std::fs::write(&policy, POLICY).unwrap();
    let toml = config_toml(
        free_port(),
        &provider.issuer,
        &dir.join("proxy.db"),
        &Options {
            downstream_url: Some(main.mcp_url()),
            extra: format!(
                r#"
[policy]
path = "{policy}"
[[routes]]
name = "wiki"
path = "/wiki/mcp"
[routes.downstream]
url = "{wiki}"
[routes.policy]
path = "{policy}"
"#,
                policy = policy.display(),
                wiki = wiki.mcp_url(),
            ),
            ..Default::default()
        },
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// The example's proxy, with `more` adding layers of the test's own.
async fn setup_with(more: impl FnOnce(Proxy) -> Proxy) -> Setup {
    init_logs();
    let provider = Provider::start().await;
    let (main, wiki) = (Downstream::start().await, Downstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &provider, &main, &wiki).await;
    let proxy = quota::proxy(&config, CALLS, Duration::from_secs(3600)).unwrap();
    let running = more(proxy).start().await.unwrap();
    let endpoint = Endpoint {
        url: format!("http://{}", running.addr),
        provider,
        http: http_client(),
    };
    let client = endpoint.public_client().await;
    Setup {
        endpoint,
        running,
        main,
        wiki,
        client,
        _dir: dir,
    }
}

async fn setup() -> Setup {
    setup_with(|proxy| proxy).await
}

impl Setup {
    async fn token(&self, who: Value) -> String {
        self.endpoint.access_token_as(&self.client, who).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        self.endpoint
            .http
            .post(format!("{}{path}", self.endpoint.url))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("x-tenant", "forged.example")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn call_tool(&self, path: &str, token: &str, id: i64, tool: &str) -> reqwest::Response {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {}}});
        self.post(path, token, body).await
    }
}

/// How many calls of `tool` reached a downstream.
fn calls_of(downstream: &Downstream, tool: &str) -> usize {
    downstream
        .requests()
        .iter()
        .flat_map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            match body {
                Value::Array(batch) => batch,
                single => vec![single],
            }
        })
        .filter(|m| m["method"] == "tools/call" && m["params"]["name"] == tool)
        .count()
}

fn person(sub: &str, email: &str) -> Value {
    json!({"sub": sub, "email": email, "email_verified": true, "name": sub, "groups": []})
}

#[tokio::test]
async fn the_quota_refuses_the_call_past_it_and_the_downstream_never_sees_it() {
    let s = setup().await;
    let alice = s.token(person("alice", "alice@example.com")).await;
    for id in 1..=i64::from(CALLS) {
        let r = s.call_tool("/mcp", &alice, id, "whoami").await;
        assert_eq!(r.status(), 200, "call {id}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["id"], id);
        assert!(body["result"].is_object(), "{body}");
    }
    let refused = s.call_tool("/mcp", &alice, 3, "whoami").await;
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&retry), "retry after {retry}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], 3, "the refusal answers the call");
    assert_eq!(body["error"]["code"], quota::QUOTA_EXCEEDED);
    assert_eq!(
        body["error"]["message"],
        format!("quota exceeded: at most 2 calls of whoami per 1h; retry in {retry} s")
    );
    assert_eq!(
        calls_of(&s.main, "whoami"),
        2,
        "the third call never arrived"
    );

    // Per tool, and only tool calls count.
    assert_eq!(s.call_tool("/mcp", &alice, 4, "deploy").await.status(), 200);
    let list = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"});
    assert_eq!(s.post("/mcp", &alice, list).await.status(), 200);
    // Per user.
    let bob = s.token(person("bob", "bob@example.com")).await;
    assert_eq!(s.call_tool("/mcp", &bob, 6, "whoami").await.status(), 200);
    assert_eq!(calls_of(&s.main, "whoami"), 3);
}

#[tokio::test]
async fn a_batch_counts_each_call_and_is_refused_whole_when_one_is_over() {
    let s = setup().await;
    let carol = s.token(person("carol", "carol@example.com")).await;
    assert_eq!(s.call_tool("/mcp", &carol, 1, "whoami").await.status(), 200);
    let call = |id: i64, tool: &str| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool}});
    // One whoami left: a batch asking for two is refused, and charges nothing.
    let batch = json!([call(2, "deploy"), call(3, "whoami"), call(4, "whoami")]);
    let refused = s.post("/mcp", &carol, batch).await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["id"], 3, "the first call over the quota");
    assert_eq!(
        calls_of(&s.main, "deploy"),
        0,
        "nothing of the batch arrived"
    );
    assert_eq!(calls_of(&s.main, "whoami"), 1);
    // What it would have used is still there.
    let batch = json!([call(5, "deploy"), call(6, "whoami")]);
    let passed = s.post("/mcp", &carol, batch).await;
    assert!(passed.status().is_success(), "{}", passed.status());
    assert_eq!(calls_of(&s.main, "whoami"), 2);
    assert_eq!(calls_of(&s.main, "deploy"), 1);
}

#[tokio::test]
async fn the_tenant_header_comes_from_the_session_never_from_the_client() {
    let s = setup().await;
    let dana = s.token(person("dana", "dana@Tenant-A.example")).await;
    assert_eq!(s.call_tool("/mcp", &dana, 1, "whoami").await.status(), 200);
    let arrived = s.main.last().headers;
    assert_eq!(
        arrived
            .get_all(quota::TENANT_HEADER)
            .iter()
            .collect::<Vec<_>>(),
        ["tenant-a.example"],
        "the session's tenant replaced the client's X-Tenant"
    );
    // An unverified email names no tenant: the client's header is removed.
    let mut unverified = person("erin", "erin@tenant-b.example");
    unverified["email_verified"] = json!(false);
    let erin = s.token(unverified).await;
    assert_eq!(s.call_tool("/mcp", &erin, 2, "whoami").await.status(), 200);
    assert!(s.main.last().headers.get(quota::TENANT_HEADER).is_none());
}

/// What each hook saw: (hook, sub, tools of the request).
type Seen = Arc<Mutex<Vec<(Hook, Option<String>, Vec<String>)>>>;

fn recording(
    hook: Hook,
    seen: &Seen,
) -> MapRequestLayer<impl Fn(http::Request<Body>) -> http::Request<Body> + Clone> {
    let seen = seen.clone();
    MapRequestLayer::new(move |request: http::Request<Body>| {
        let sub = session(&request).map(|s| s.sub.to_string());
        let tools = mcp_calls(&request)
            .iter()
            .filter_map(|c| c.tool().map(str::to_string))
            .collect();
        seen.lock().unwrap().push((hook, sub, tools));
        request
    })
}

#[tokio::test]
async fn each_hook_runs_where_its_name_says() {
    let seen: Seen = Default::default();
    let recorded = seen.clone();
    let s = setup_with(move |proxy| {
        Hook::ALL.into_iter().fold(proxy, |proxy, hook| {
            proxy.layer(hook, recording(hook, &recorded))
        })
    })
    .await;
    let token = s.token(person("frank", "frank@example.com")).await;

    assert_eq!(s.call_tool("/mcp", &token, 1, "deploy").await.status(), 200);
    let frank = |hook, tools: &[&str]| {
        let tools = tools.iter().map(|t| t.to_string()).collect();
        (hook, Some("frank".to_string()), tools)
    };
    let expected = vec![
        frank(Hook::AfterAuthentication, &[]),
        frank(Hook::AfterPolicy, &["deploy"]),
        frank(Hook::BeforeForwarding, &["deploy"]),
    ];
    assert_eq!(*seen.lock().unwrap(), expected);

    // A call the policy denies is seen after authentication only.
    seen.lock().unwrap().clear();
    assert_eq!(
        s.call_tool("/mcp", &token, 2, "run_sql").await.status(),
        403
    );
    let hooks: Vec<Hook> = seen.lock().unwrap().iter().map(|(h, _, _)| *h).collect();
    assert_eq!(hooks, [Hook::AfterAuthentication]);
    // Without a token nothing is seen at all.
    seen.lock().unwrap().clear();
    let anonymous = s
        .endpoint
        .http
        .post(format!("{}/mcp", s.endpoint.url))
        .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_route_layer_runs_on_its_route_only_and_quotas_are_per_route() {
    let s = setup_with(|proxy| {
        proxy.route_layer(
            "wiki",
            Hook::BeforeForwarding,
            MapRequestLayer::new(|mut request: http::Request<Body>| {
                let headers = request.headers_mut();
                headers.insert("x-wiki-layer", http::HeaderValue::from_static("yes"));
                // Could pass for an identity header: the forwarder strips it.
                headers.insert("x-user-plan", http::HeaderValue::from_static("gold"));
                request
            }),
        )
    })
    .await;
    let gina = s.token(person("gina", "gina@example.com")).await;
    for id in 1..=i64::from(CALLS) {
        assert_eq!(s.call_tool("/mcp", &gina, id, "whoami").await.status(), 200);
    }
    assert_eq!(s.call_tool("/mcp", &gina, 3, "whoami").await.status(), 429);
    // The wiki's quota is its own.
    assert_eq!(
        s.call_tool("/wiki/mcp", &gina, 4, "whoami").await.status(),
        200
    );
    assert_eq!(s.wiki.last().headers["x-wiki-layer"], "yes");
    assert!(s.wiki.last().headers.get("x-user-plan").is_none());
    assert_eq!(s.wiki.last().headers[quota::TENANT_HEADER], "example.com");
    assert!(s
        .main
        .requests()
        .iter()
        .all(|r| !r.headers.contains_key("x-wiki-layer")));
    s.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_layer_for_a_route_that_does_not_exist_stops_the_start_naming_it() {
    init_logs();
    let provider = Provider::start().await;
    let (main, wiki) = (Downstream::start().await, Downstream::start().await);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &provider, &main, &wiki).await;
    let error = quota::proxy(&config, CALLS, Duration::from_secs(60))
        .unwrap()
        .route_layer(
            "wikki",
            Hook::AfterPolicy,
            tower::layer::util::Identity::new(),
        )
        .start()
        .await
        .err()
        .expect("an unknown route is an error");
    assert!(matches!(&error, StartError::UnknownRoute { route, .. } if route == "wikki"));
    assert_eq!(
        error.to_string(),
        "Proxy::route_layer: there is no route named \"wikki\" (the routes are: default, wiki)"
    );
    assert!(
        !dir.path().join("proxy.db").exists(),
        "nothing was opened before the check"
    );
}

#[tokio::test]
async fn a_bad_configuration_file_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        "[server]\npublic_url = \"http://127.0.0.1:1\"\nlisten = 8\n",
    )
    .unwrap();
    let error = Proxy::from_config_file(&path).expect_err("refused");
    assert!(matches!(error, StartError::Config(_)), "{error}");
    assert!(
        error
            .to_string()
            .starts_with("config error at `server.listen`"),
        "{error}"
    );

    // Read, but not valid: the key at fault is named once.
    let provider = Provider::start().await;
    let (main, wiki) = (Downstream::start().await, Downstream::start().await);
    let good = config_file(dir.path(), &provider, &main, &wiki).await;
    let text = std::fs::read_to_string(&good).unwrap();
    std::fs::write(&path, text.replace(ENCRYPTION_KEY, "not-hex")).unwrap();
    let invalid = Proxy::from_config_file(&path).expect_err("refused");
    assert!(
        invalid
            .to_string()
            .starts_with("config error: secrets.encryption_key: "),
        "{invalid}"
    );

    let missing = Proxy::from_config_file(dir.path().join("absent.toml")).expect_err("refused");
    assert!(missing.to_string().contains("absent.toml"), "{missing}");
}
