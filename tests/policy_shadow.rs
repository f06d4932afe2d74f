//! Shadow mode: a candidate policy evaluated beside the enforced one on
//! live traffic. Disagreements are counted and logged; responses are the
//! same as without it; a shadow that throws or loops changes no response
//! and no latency; the shadow file reloads keeping its last good version.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::downstream::Downstream;
use common::*;
use serde_json::{json, Value};

const ENFORCED: &str = r#"
fn authorize(user, request) {
    if request.mcp.tool == "deploy" && !in_any_group(user, ["ops"]) {
        return deny(403, "deploy is for ops");
    }
    allow(#{ "X-User-Email": user.email, "X-User-Dept": claim(user, "dept", "") })
}
"#;

/// Disagrees three ways: run_sql only for admins (allow → deny), deploy
/// open to engineering (deny → allow), the department upper-cased
/// (headers).
const CANDIDATE: &str = r#"
fn authorize(user, request) {
    let tool = request.mcp.tool;
    if tool == "run_sql" && !in_any_group(user, ["admins"]) {
        return deny(403, "run_sql is for admins");
    }
    if tool == "deploy" && !in_any_group(user, ["ops", "engineering"]) {
        return deny(403, "deploy is for ops");
    }
    let dept = claim(user, "dept", "");
    dept.make_upper();
    allow(#{ "X-User-Email": user.email, "X-User-Dept": dept })
}
"#;

/// Throws on every call, and loops (until its deadline) on run_sql.
const RUNAWAY: &str = r#"
fn authorize(user, request) {
    if request.mcp.tool == "run_sql" { loop { } }
    throw "the shadow is broken";
}
"#;

struct Proxy {
    proxy: TestProxy,
    downstream: Downstream,
    shadow_path: std::path::PathBuf,
    dev: String,
    ops: String,
    _dir: tempfile::TempDir,
}

fn user(sub: &str, groups: &[&str], dept: &str) -> Value {
    json!({"sub": sub, "email": format!("{sub}@example.com"), "name": sub, "groups": groups, "dept": dept})
}

async fn start(shadow: Option<&str>) -> Proxy {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.rhai");
    std::fs::write(&policy, ENFORCED).unwrap();
    let shadow_path = dir.path().join("shadow.rhai");
    let mut extra = format!(
        "[policy]\npath = \"{}\"\nwatch_interval = \"100ms\"\n",
        policy.display()
    );
    if let Some(source) = shadow {
        std::fs::write(&shadow_path, source).unwrap();
        extra.push_str(&format!("shadow_path = \"{}\"\n", shadow_path.display()));
    }
    let downstream = Downstream::start().await;
    let proxy = TestProxy::start_with_options(&Options {
        downstream_url: Some(downstream.mcp_url()),
        extra,
        ..Default::default()
    })
    .await;
    let client = proxy.public_client().await;
    let dev = proxy
        .access_token_as(&client, user("dev", &["engineering"], "eng"))
        .await;
    let ops = proxy
        .access_token_as(&client, user("ops", &["ops", "admins"], "sre"))
        .await;
    Proxy {
        proxy,
        downstream,
        shadow_path,
        dev,
        ops,
        _dir: dir,
    }
}

/// One call: its status, body, and the identity headers the downstream got.
async fn call(
    p: &Proxy,
    token: &str,
    method: &str,
    tool: Option<&str>,
) -> (u16, Value, Vec<String>) {
    let before = p.downstream.requests().len();
    let params = tool.map_or(json!({}), |t| json!({"name": t}));
    let r = p
        .proxy
        .http
        .post(format!("{}/mcp", p.proxy.url))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let mut body: Value = r.json().await.unwrap_or(Value::Null);
    // The double echoes the headers it got: leave out what differs between
    // two proxies (their ports, request ids).
    if let Some(echoed) = body["result"]["headers"].as_object_mut() {
        for h in ["host", "x-forwarded-host", "x-request-id"] {
            assert!(echoed.remove(h).is_some(), "{h}");
        }
    }
    let requests = p.downstream.requests();
    let forwarded = requests[before..]
        .iter()
        .flat_map(|r| {
            ["x-user-email", "x-user-dept"].map(|h| {
                r.headers
                    .get(h)
                    .map(|v| format!("{h}: {}", v.to_str().unwrap()))
                    .unwrap_or_default()
            })
        })
        .collect();
    (status, body, forwarded)
}

/// dev: run_sql ×3 (allowed), deploy ×2 (denied), tools/list; ops:
/// run_sql, deploy. Against CANDIDATE: 3 allow → deny, 2 deny → allow,
/// 3 header changes (dev's tools/list, ops' two calls).
async fn traffic(p: &Proxy) -> Vec<(u16, Value, Vec<String>)> {
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(call(p, &p.dev, "tools/call", Some("run_sql")).await);
    }
    for _ in 0..2 {
        out.push(call(p, &p.dev, "tools/call", Some("deploy")).await);
    }
    out.push(call(p, &p.dev, "tools/list", None).await);
    out.push(call(p, &p.ops, "tools/call", Some("run_sql")).await);
    out.push(call(p, &p.ops, "tools/call", Some("deploy")).await);
    out
}

fn metric(p: &Proxy, series: &str) -> u64 {
    let text = p.proxy.app().metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

fn disagreements(p: &Proxy, kind: &str) -> u64 {
    metric(
        p,
        &format!(
            "mcp_oauth_proxy_policy_shadow_disagreements_total{{kind=\"{kind}\",route=\"default\"}}"
        ),
    )
}

async fn wait_for(what: &str, f: impl Fn() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn disagreements_are_counted_and_logged_and_responses_are_unchanged() {
    let plain = start(None).await;
    let shadowed = start(Some(CANDIDATE)).await;
    // The series exist at zero before any traffic.
    for kind in ["allow_to_deny", "deny_to_allow", "headers"] {
        assert_eq!(disagreements(&shadowed, kind), 0);
        assert_eq!(disagreements(&plain, kind), 0);
    }
    let expected = traffic(&plain).await;
    let seen = traffic(&shadowed).await;
    assert_eq!(seen, expected, "the shadow changed a response");
    assert_eq!(
        seen.iter().map(|r| r.0).collect::<Vec<_>>(),
        [200, 200, 200, 403, 403, 200, 200, 200]
    );
    assert!(
        seen[0].2.contains(&"x-user-dept: eng".to_string()),
        "{seen:?}"
    );

    wait_for("the shadow's verdicts", || {
        disagreements(&shadowed, "allow_to_deny") == 3
            && disagreements(&shadowed, "deny_to_allow") == 2
            && disagreements(&shadowed, "headers") == 3
    })
    .await;
    assert_eq!(
        metric(
            &shadowed,
            "mcp_oauth_proxy_policy_shadow_errors_total{route=\"default\"}"
        ),
        0
    );
    for kind in ["allow_to_deny", "deny_to_allow", "headers"] {
        assert_eq!(disagreements(&plain, kind), 0);
    }
    let logs = captured_logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("the shadow policy disagrees"))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("run_sql is for admins")
            && l.contains("POST /mcp tools/call run_sql")
            && l.contains("dev")),
        "{lines:#?}"
    );
    assert!(lines
        .iter()
        .any(|l| l.contains("headers changed: x-user-dept")));
}

#[tokio::test]
async fn a_shadow_that_throws_or_loops_changes_no_response_and_no_latency() {
    let plain = start(None).await;
    let runaway = start(Some(RUNAWAY)).await;
    // Warm both up (connections, session memos).
    traffic(&plain).await;
    traffic(&runaway).await;
    let mut base = Vec::new();
    let mut with = Vec::new();
    for _ in 0..9 {
        for (p, times) in [(&plain, &mut base), (&runaway, &mut with)] {
            let started = Instant::now();
            let (status, _, _) = call(p, &p.dev, "tools/call", Some("run_sql")).await;
            times.push(started.elapsed());
            assert_eq!(status, 200);
        }
    }
    assert_eq!(traffic(&runaway).await, traffic(&plain).await);
    base.sort();
    with.sort();
    // Inline, each looping evaluation would add its 50 ms deadline.
    assert!(
        with[4] < base[4] + Duration::from_millis(25),
        "median {:?} with the runaway shadow, {:?} without",
        with[4],
        base[4]
    );
    // Every evaluation failed and was counted: 8 + 9 + 8 calls.
    wait_for("the shadow's failures", || {
        metric(
            &runaway,
            "mcp_oauth_proxy_policy_shadow_errors_total{route=\"default\"}",
        ) == 25
    })
    .await;
    for kind in ["allow_to_deny", "deny_to_allow", "headers"] {
        assert_eq!(disagreements(&runaway, kind), 0);
    }
    assert!(captured_logs().contains("the shadow policy failed (not enforced)"));
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn the_shadow_reloads_and_keeps_its_last_good_version() {
    let p = start(Some(CANDIDATE)).await;
    let shadow = p.proxy.app().routes[0].policy.shadow().unwrap().clone();
    call(&p, &p.dev, "tools/call", Some("run_sql")).await;
    wait_for("the first disagreement", || {
        disagreements(&p, "allow_to_deny") == 1
    })
    .await;

    // A broken edit: refused, the last good candidate keeps disagreeing.
    write_atomically(&p.shadow_path, "fn authorize(user, request) { deny(");
    wait_for("the failed reload", || {
        shadow.reloads.failed.load(Ordering::Relaxed) >= 1
    })
    .await;
    call(&p, &p.dev, "tools/call", Some("run_sql")).await;
    wait_for("the second disagreement", || {
        disagreements(&p, "allow_to_deny") == 2
    })
    .await;

    // A good edit (the enforced policy itself): no more disagreements.
    write_atomically(&p.shadow_path, ENFORCED);
    wait_for("the reload", || {
        shadow.reloads.succeeded.load(Ordering::Relaxed) >= 1
    })
    .await;
    call(&p, &p.dev, "tools/call", Some("run_sql")).await;
    call(&p, &p.ops, "tools/call", Some("deploy")).await;
    // The enforced policy's own decisions are unchanged by all this.
    assert_eq!(
        p.proxy.app().routes[0]
            .policy
            .reloads
            .failed
            .load(Ordering::Relaxed),
        0
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(disagreements(&p, "allow_to_deny"), 2);
    assert_eq!(disagreements(&p, "headers"), 0);
}

#[tokio::test]
async fn each_route_has_its_own_shadow_and_decision_log() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.rhai");
    std::fs::write(&policy, ENFORCED).unwrap();
    let shadow = dir.path().join("shadow.rhai");
    std::fs::write(&shadow, CANDIDATE).unwrap();
    let wiki_log = dir.path().join("wiki.jsonl");
    let main = Downstream::start().await;
    let wiki = Downstream::start().await;
    let proxy = TestProxy::start_with_options(&Options {
        downstream_url: Some(main.mcp_url()),
        extra: format!(
            "[policy]\npath = \"{policy}\"\n\n[[routes]]\nname = \"wiki\"\npath = \"/wiki/mcp\"\n[routes.downstream]\nurl = \"{wiki}\"\n[routes.policy]\npath = \"{policy}\"\nshadow_path = \"{shadow}\"\ndecision_log = \"{log}\"\n",
            policy = policy.display(),
            shadow = shadow.display(),
            wiki = wiki.mcp_url(),
            log = wiki_log.display(),
        ),
        ..Default::default()
    })
    .await;
    let client = proxy.public_client().await;
    let token = proxy
        .access_token_as(&client, user("dev", &["engineering"], "eng"))
        .await;
    for path in ["/mcp", "/wiki/mcp"] {
        let status = proxy
            .http
            .post(format!("{}{path}", proxy.url))
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "run_sql"}}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{path}");
    }
    let count = |route: &str| {
        let series = format!(
            "mcp_oauth_proxy_policy_shadow_disagreements_total{{kind=\"allow_to_deny\",route=\"{route}\"}}"
        );
        proxy
            .app()
            .metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse::<u64>().ok())
            .unwrap()
    };
    wait_for("the wiki route's shadow", || count("wiki") == 1).await;
    assert_eq!(count("default"), 0);
    assert!(proxy.app().routes[0].policy.shadow().is_none());
    let read = || std::fs::read_to_string(&wiki_log).unwrap_or_default();
    wait_for("the wiki route's decision log", || {
        read().lines().count() == 1
    })
    .await;
    let logged = read();
    let records: Vec<Value> = logged
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{logged}");
    assert_eq!(records[0]["route"], "wiki");
    assert_eq!(records[0]["request"]["path"], "/wiki/mcp");
}

/// The enforced policy, plus: only with the right API key; throws on the
/// tool `marker` (a shadow error the test can wait for).
const KEYED: &str = r#"
fn authorize(user, request) {
    if request.mcp.tool == "marker" {
        throw "marker";
    }
    if request.headers["x-api-key"] != "k1" {
        return deny(403, "no API key");
    }
    if request.mcp.tool == "deploy" && !in_any_group(user, ["ops"]) {
        return deny(403, "deploy is for ops");
    }
    allow(#{ "X-User-Email": user.email, "X-User-Dept": claim(user, "dept", "") })
}
"#;

#[tokio::test]
async fn the_shadow_sees_the_headers_the_policy_saw_not_the_logs_redactions() {
    // `x-api-key` is on the decision log's default redaction list; the
    // shadow must still judge the real value.
    let p = start(Some(KEYED)).await;
    let send = |tool: &'static str| {
        p.proxy
            .http
            .post(format!("{}/mcp", p.proxy.url))
            .bearer_auth(&p.dev)
            .header("accept", "application/json, text/event-stream")
            .header("x-api-key", "k1")
            .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool}}))
            .send()
    };
    assert_eq!(send("run_sql").await.unwrap().status(), 200);
    // The shadow judges decisions in order: once the marker's error is
    // counted, the request before it has been judged.
    assert_eq!(send("marker").await.unwrap().status(), 200);
    wait_for("the marker's shadow error", || {
        metric(
            &p,
            "mcp_oauth_proxy_policy_shadow_errors_total{route=\"default\"}",
        ) == 1
    })
    .await;
    assert_eq!(
        disagreements(&p, "allow_to_deny"),
        0,
        "the request with the right key is no disagreement"
    );
}
