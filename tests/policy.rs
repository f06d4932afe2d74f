//! Operator policies on the request path: per-tool rules, filtered lists,
//! login-time denial, hot reload, and the sandbox.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::downstream::Downstream;
use common::*;
use serde_json::{json, Value};

const PER_TOOL: &str = include_str!("../policies/per-tool.rhai");

struct Setup {
    proxy: TestProxy,
    downstream: Downstream,
    client: Client,
    policy: PathBuf,
    _dir: tempfile::TempDir,
}

async fn setup(policy_source: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.rhai");
    std::fs::write(&policy, policy_source).unwrap();
    let downstream = Downstream::start().await;
    let proxy = TestProxy::start_with_options(&Options {
        downstream_url: Some(downstream.mcp_url()),
        extra: format!(
            "[policy]\npath = \"{}\"\nwatch_interval = \"100ms\"\n",
            policy.display()
        ),
        ..Default::default()
    })
    .await;
    let client = proxy.public_client().await;
    Setup {
        proxy,
        downstream,
        client,
        policy,
        _dir: dir,
    }
}

fn user(sub: &str, groups: &[&str]) -> Value {
    json!({"sub": sub, "email": format!("{sub}@example.com"), "name": sub, "groups": groups})
}

impl Setup {
    async fn token_for(&self, user: Value) -> String {
        self.proxy.access_token_as(&self.client, user).await
    }

    async fn rpc(&self, token: &str, method: &str, params: Value, sse: bool) -> (u16, Value) {
        let mut request = self
            .proxy
            .http
            .post(format!("{}/mcp", self.proxy.url))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 3, "method": method, "params": params}));
        if sse {
            request = request.header("x-answer-sse", "1");
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let is_sse = r
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
        let text = r.text().await.unwrap();
        let body = if is_sse {
            let data = text
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("no data in {text:?}"));
            serde_json::from_str(data).unwrap()
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        (status, body)
    }
}

fn names(body: &Value, field: &str, key: &str) -> Vec<String> {
    body["result"][field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {body}"))
        .iter()
        .map(|i| i[key].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn per_tool_rules_deny_the_call_and_hide_the_tool() {
    let s = setup(PER_TOOL).await;
    let dev = s.token_for(user("dev", &["engineering"])).await;
    let ops = s.token_for(user("ops", &["ops", "admins"])).await;

    let (status, body) = s
        .rpc(&dev, "tools/call", json!({"name": "deploy"}), false)
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        body["error"]["message"],
        "the tool deploy is not available to you"
    );
    assert_eq!(body["id"], 3);
    assert!(
        s.downstream.requests().is_empty(),
        "a denied call reached the downstream"
    );
    let (status, _) = s
        .rpc(&ops, "tools/call", json!({"name": "deploy"}), false)
        .await;
    assert_eq!(status, 200);

    for sse in [false, true] {
        let (_, body) = s.rpc(&dev, "tools/list", json!({}), sse).await;
        assert_eq!(
            names(&body, "tools", "name"),
            vec!["whoami", "run_sql"],
            "sse={sse}"
        );
        let (_, body) = s.rpc(&ops, "tools/list", json!({}), sse).await;
        assert_eq!(
            names(&body, "tools", "name"),
            vec!["whoami", "deploy", "run_sql"],
            "sse={sse}"
        );
        let (_, body) = s.rpc(&dev, "resources/list", json!({}), sse).await;
        assert_eq!(
            names(&body, "resources", "uri"),
            vec!["file:///docs/readme.md"],
            "sse={sse}"
        );
        let (_, body) = s.rpc(&ops, "resources/list", json!({}), sse).await;
        assert_eq!(names(&body, "resources", "uri").len(), 2);
        let (_, body) = s.rpc(&dev, "prompts/list", json!({}), sse).await;
        assert_eq!(
            names(&body, "prompts", "name"),
            vec!["greeting"],
            "sse={sse}"
        );
        let (_, body) = s.rpc(&ops, "prompts/list", json!({}), sse).await;
        assert_eq!(
            names(&body, "prompts", "name"),
            vec!["greeting", "incident_report"]
        );
    }
    let (status, _) = s
        .rpc(
            &dev,
            "resources/read",
            json!({"uri": "secret://db-password"}),
            false,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = s
        .rpc(
            &dev,
            "prompts/get",
            json!({"name": "incident_report"}),
            false,
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn deny_by_group_reaches_nothing() {
    let s = setup(include_str!("../policies/group-allowlist.rhai")).await;
    // Sales cannot even sign in: the login policy stops it.
    s.proxy.provider.set_user(user("bob", &["sales"]));
    let mut browser = Browser::new();
    let url = s.proxy.authorize_url(&s.client, &Pkce::new(), "st", &[]);
    let r = browser.get(&url).await;
    let r = browser
        .post_form(
            &format!("{}/consent", s.proxy.url),
            &with_decision(r.form_fields(), "approve"),
        )
        .await;
    let r = browser.get(&r.location()).await;
    let r = browser.get(&r.location()).await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("Sign-in not allowed"), "{}", r.body);
    assert!(
        r.body
            .contains("bob@example.com is not in an allowed group"),
        "{}",
        r.body
    );
    assert!(
        r.headers.get("location").is_none(),
        "no code may reach the client"
    );
    // Engineering can.
    let token = s.token_for(user("alice", &["engineering"])).await;
    let (status, _) = s.rpc(&token, "tools/list", json!({}), false).await;
    assert_eq!(status, 200);
}

async fn wait_for<F: Fn() -> bool>(what: &str, f: F) {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write_atomically(path: &Path, text: &str) {
    // Editors and ConfigMaps replace the file; do the same.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn hot_reload_applies_good_edits_and_keeps_the_last_good_one() {
    let allow_all = "fn authorize(user, request) { allow(#{ \"X-User-Email\": user.email, \"X-Version\": \"1\" }) }";
    let s = setup(allow_all).await;
    let token = s.token_for(user("alice", &["engineering"])).await;
    let (status, _) = s.rpc(&token, "ping", json!({}), false).await;
    assert_eq!(status, 200);
    assert_eq!(s.downstream.last().headers["x-version"], "1");

    // A good edit applies without a restart.
    write_atomically(&s.policy, &allow_all.replace("\"1\"", "\"2\" "));
    let engine = s.proxy.app().routes[0].policy.clone();
    wait_for("the reload", || {
        engine
            .reloads
            .succeeded
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    })
    .await;
    s.rpc(&token, "ping", json!({}), false).await;
    assert_eq!(s.downstream.last().headers["x-version"], "2");

    // A broken edit is refused; version 2 keeps serving.
    write_atomically(
        &s.policy,
        "fn authorize(user, request) { allow(#{ \"X-Version\": \"3\" }",
    );
    wait_for("the failed reload", || {
        engine
            .reloads
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    })
    .await;
    let error = engine.reloads.last_error.lock().unwrap().clone().unwrap();
    assert!(
        error.starts_with(&format!("{}:1:", s.policy.display())),
        "{error}"
    );
    let (status, _) = s.rpc(&token, "ping", json!({}), false).await;
    assert_eq!(status, 200);
    assert_eq!(s.downstream.last().headers["x-version"], "2");
    let logs = captured_logs();
    assert!(
        logs.contains("policy reload failed"),
        "the failure was not logged"
    );

    // SIGHUP-style explicit reload of a fixed file.
    write_atomically(&s.policy, &allow_all.replace("\"1\"", "\"4\""));
    engine.reload().unwrap();
    s.rpc(&token, "ping", json!({}), false).await;
    assert_eq!(s.downstream.last().headers["x-version"], "4");
}

#[tokio::test]
async fn runaway_policies_deny_quickly_while_other_requests_flow() {
    let policy = r#"
fn grow(s) { grow(s + s) }
fn authorize(user, request) {
    let tool = request.mcp.tool;
    if tool == "loop" { loop { } }
    if tool == "string" { let s = "x"; loop { s += s; } }
    if tool == "recurse" { return grow("y"); }
    allow(#{ "X-User-Email": user.email })
}"#;
    let s = setup(policy).await;
    let token = s.token_for(user("alice", &["engineering"])).await;
    let mut bad = Vec::new();
    for tool in ["loop", "string", "recurse"] {
        for _ in 0..3 {
            let started = Instant::now();
            let (status, body) = s
                .rpc(&token, "tools/call", json!({"name": tool}), false)
                .await;
            assert_eq!(status, 403, "{tool}: {body}");
            bad.push((tool, started.elapsed()));
        }
    }
    for (tool, took) in &bad {
        assert!(*took < Duration::from_secs(1), "{tool} took {took:?}");
    }
    // Meanwhile, while runaways run, good requests keep being answered.
    let runaway = {
        let http = s.proxy.http.clone();
        let url = format!("{}/mcp", s.proxy.url);
        let token = token.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                let _ = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "loop"}}))
                    .send()
                    .await;
            }
        })
    };
    for _ in 0..10 {
        let (status, _) = s
            .rpc(&token, "tools/call", json!({"name": "fine"}), false)
            .await;
        assert_eq!(status, 200);
    }
    runaway.await.unwrap();
    assert!(s
        .downstream
        .requests()
        .iter()
        .all(|r| !String::from_utf8_lossy(&r.body).contains("\"loop\"")));
}

#[tokio::test]
async fn claims_that_look_like_script_code_are_data() {
    let s = setup(include_str!("../policies/default.rhai")).await;
    let sneaky = json!({
        "sub": "x\"); deny(403, \"pwned\"); (\"",
        "email": "a@example.com\"; allow() //",
        "name": "${user.sub} `#{}`",
        "groups": ["} fn authorize(user, request) { deny(1, \"\") } {"],
    });
    let token = s.token_for(sneaky).await;
    let (status, _) = s.rpc(&token, "tools/list", json!({}), false).await;
    assert_eq!(status, 200);
    let seen = s.downstream.last().headers;
    assert_eq!(seen["x-user-sub"], "x\"); deny(403, \"pwned\"); (\"");
    assert_eq!(seen["x-user-name"], "${user.sub} `#{}`");
    // Commas and quotes inside a list item are encoded (policies/README.md).
    assert_eq!(
        seen["x-user-groups"],
        "} fn authorize(user%2C request) { deny(1%2C %22%22) } {"
    );
}

#[tokio::test]
async fn a_group_named_with_a_comma_never_reaches_the_downstream_as_two_groups() {
    let s = setup(include_str!("../policies/default.rhai")).await;
    let mut person = user("carol", &["eng,admins", "users"]);
    person["name"] = json!("Carol Müller");
    let token = s.token_for(person).await;
    let (status, _) = s.rpc(&token, "ping", json!({}), false).await;
    assert_eq!(status, 200);
    let headers = s.downstream.last().headers;
    let groups: Vec<&str> = headers
        .get_all("x-user-groups")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(groups, vec!["eng%2Cadmins,users"]);
    let split: Vec<&str> = groups[0].split(',').map(str::trim).collect();
    assert_eq!(split.len(), 2, "{split:?}");
    assert!(!split.contains(&"admins"), "{split:?}");
    assert_eq!(headers["x-user-name"], "Carol M%C3%BCller");

    // A claim that would break the header line denies: no half-set identity.
    let mut mallory = user("mallory", &["users"]);
    mallory["name"] = json!("Mallory\r\nX-User-Groups: admins");
    let token = s.token_for(mallory).await;
    let before = s.downstream.requests().len();
    let (status, body) = s.rpc(&token, "ping", json!({}), false).await;
    assert_eq!(status, 403);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("X-User-Name")),
        "{body}"
    );
    assert_eq!(
        s.downstream.requests().len(),
        before,
        "a denied request reached the downstream"
    );
}
