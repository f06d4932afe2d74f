//! Decision logs and `policy replay`: real traffic through the proxy with
//! the decision log on, then the log replayed against the same policy, a
//! stricter one and one that changes a header; and the log searched for
//! every token and secret the run used.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::downstream::Downstream;
use common::*;
use serde_json::{json, Value};

/// The enforced policy: per-tool rules, identity headers, the provider's
/// token forwarded, one claim (`dept`) read.
const POLICY: &str = r#"
fn authorize(user, request) {
    let tool = request.mcp.tool;
    if tool == "deploy" && !in_any_group(user, ["ops"]) {
        return deny(403, "deploy is for ops");
    }
    allow(#{
        "X-User-Email": user.email,
        "X-User-Dept": claim(user, "dept", ""),
        "Authorization": upstream_bearer(),
    })
}
"#;

/// Stricter: run_sql only for admins.
const STRICTER: &str = r#"
fn authorize(user, request) {
    let tool = request.mcp.tool;
    if tool == "deploy" && !in_any_group(user, ["ops"]) {
        return deny(403, "deploy is for ops");
    }
    if tool == "run_sql" && !in_any_group(user, ["admins"]) {
        return deny(403, "run_sql is for admins");
    }
    allow(#{
        "X-User-Email": user.email,
        "X-User-Dept": claim(user, "dept", ""),
        "Authorization": upstream_bearer(),
    })
}
"#;

/// The same decisions, one header changed (the department upper-cased).
const HEADER_CHANGE: &str = r#"
fn authorize(user, request) {
    let tool = request.mcp.tool;
    if tool == "deploy" && !in_any_group(user, ["ops"]) {
        return deny(403, "deploy is for ops");
    }
    let dept = claim(user, "dept", "");
    dept.make_upper();
    allow(#{
        "X-User-Email": user.email,
        "X-User-Dept": dept,
        "Authorization": upstream_bearer(),
    })
}
"#;

const API_KEY: &str = "client-api-key-4f1d9b";
const PRIVATE_CLAIM: &str = "private-claim-value-77c2";

struct Run {
    proxy: TestProxy,
    log: PathBuf,
    dir: tempfile::TempDir,
    /// Every token the run used: the proxy's access and refresh tokens.
    proxy_tokens: Vec<String>,
    _downstream: Downstream,
}

fn user(sub: &str, groups: &[&str], dept: &str) -> Value {
    json!({"sub": sub, "email": format!("{sub}@example.com"), "name": sub,
           "groups": groups, "dept": dept, "employee_ssn": PRIVATE_CLAIM})
}

async fn rpc(proxy: &TestProxy, token: &str, method: &str, params: Value) -> u16 {
    proxy
        .http
        .post(format!("{}/mcp", proxy.url))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("x-api-key", API_KEY)
        .header("x-team", "blue")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Drives traffic: dev calls run_sql 3×, deploy 2× (denied), tools/list
/// 1×; ops calls run_sql 1×, deploy 1×. 8 decisions, 6 allowed.
async fn traffic() -> Run {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.rhai");
    std::fs::write(&policy, POLICY).unwrap();
    let log = dir.path().join("decisions.jsonl");
    let downstream = Downstream::start().await;
    let proxy = TestProxy::start_with_options(&Options {
        downstream_url: Some(downstream.mcp_url()),
        extra: format!(
            "[policy]\npath = \"{}\"\ndecision_log = \"{}\"\n",
            policy.display(),
            log.display()
        ),
        ..Default::default()
    })
    .await;
    let client = proxy.public_client().await;
    let mut proxy_tokens = Vec::new();
    let token_for = |u: Value| {
        proxy.provider.set_user(u);
        proxy.tokens_for(&client, &[])
    };
    let dev = token_for(user("dev", &["engineering"], "eng")).await;
    let ops = token_for(user("ops", &["ops", "admins"], "sre")).await;
    for t in [&dev, &ops] {
        for key in ["access_token", "refresh_token"] {
            proxy_tokens.push(t[key].as_str().unwrap().to_string());
        }
    }
    let (dev, ops) = (
        dev["access_token"].as_str().unwrap(),
        ops["access_token"].as_str().unwrap(),
    );
    let sql = json!({"name": "run_sql"});
    let deploy = json!({"name": "deploy"});
    for _ in 0..3 {
        assert_eq!(rpc(&proxy, dev, "tools/call", sql.clone()).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(rpc(&proxy, dev, "tools/call", deploy.clone()).await, 403);
    }
    assert_eq!(rpc(&proxy, dev, "tools/list", json!({})).await, 200);
    assert_eq!(rpc(&proxy, ops, "tools/call", sql).await, 200);
    assert_eq!(rpc(&proxy, ops, "tools/call", deploy).await, 200);
    wait_for_lines(&log, 8).await;
    Run {
        proxy,
        log,
        dir,
        proxy_tokens,
        _downstream: downstream,
    }
}

/// The writer is a thread of its own: wait until it wrote `n` lines.
async fn wait_for_lines(log: &Path, n: usize) {
    let started = Instant::now();
    loop {
        let lines = std::fs::read_to_string(log)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if lines >= n {
            assert_eq!(lines, n, "more decisions logged than made");
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{lines} of {n} decisions logged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn replay(run: &Run, candidate: &str, extra: &[&str]) -> (i32, String) {
    let path = run.dir.path().join("candidate.rhai");
    std::fs::write(&path, candidate).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-oauth-proxy"))
        .args(["policy", "replay", "--policy"])
        .arg(&path)
        .arg(&run.log)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    (out.status.code().unwrap(), stdout)
}

#[tokio::test]
async fn logged_traffic_replays_against_same_stricter_and_header_changing_policies() {
    let run = traffic().await;

    // (a) The same policy: nothing changes.
    let (code, text) = replay(&run, POLICY, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("replayed 8 decisions"), "{text}");
    assert!(text.contains("unchanged        8"), "{text}");

    // (b) Stricter: exactly dev's three run_sql calls go from allow to deny.
    let (code, text) = replay(&run, STRICTER, &["--json"]);
    assert_eq!(code, 1, "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["decisions"], 8);
    assert_eq!(report["allow_to_deny"], 3, "{report:#}");
    assert_eq!(report["deny_to_allow"], 0);
    assert_eq!(report["headers_changed"], 0);
    assert_eq!(report["unchanged"], 5);
    let changes = report["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{report:#}");
    assert_eq!(changes[0]["kind"], "allow_to_deny");
    assert_eq!(changes[0]["count"], 3);
    assert_eq!(changes[0]["user"], "dev@example.com");
    assert_eq!(changes[0]["request"], "POST /mcp tools/call run_sql");
    assert_eq!(changes[0]["after"]["reason"], "run_sql is for admins");
    let (code, text) = replay(&run, STRICTER, &[]);
    assert_eq!(code, 1);
    assert!(text.contains("allow → deny     3"), "{text}");
    assert!(
        text.contains("3× dev@example.com · POST /mcp tools/call run_sql"),
        "{text}"
    );

    // (c) A header changed: reported by name, for every allowed decision.
    let (code, text) = replay(&run, HEADER_CHANGE, &["--json"]);
    assert_eq!(code, 1, "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["allow_to_deny"], 0);
    assert_eq!(report["headers_changed"], 6, "{report:#}");
    assert_eq!(report["headers_by_name"], json!({"x-user-dept": 6}));
    let (_, text) = replay(&run, HEADER_CHANGE, &[]);
    assert!(
        text.contains("headers changed  6 (x-user-dept: 6)"),
        "{text}"
    );
    assert!(text.contains("x-user-dept: \"eng\" → \"ENG\""), "{text}");

    // --route: decisions of another route are left out.
    let (code, text) = replay(&run, STRICTER, &["--route", "other", "--json"]);
    assert_eq!(code, 0, "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (report["decisions"].clone(), report["other_routes"].clone()),
        (json!(0), json!(8))
    );
}

#[tokio::test]
async fn the_decision_log_holds_no_token_secret_or_hidden_header() {
    let run = traffic().await;
    let log = std::fs::read_to_string(&run.log).unwrap();
    let mut secrets: Vec<String> = run.proxy.provider.issued_tokens();
    secrets.extend(run.proxy_tokens.iter().cloned());
    secrets.extend([
        UPSTREAM_CLIENT_SECRET.to_string(),
        ENCRYPTION_KEY.to_string(),
        API_KEY.to_string(),
        PRIVATE_CLAIM.to_string(),
    ]);
    assert!(secrets.len() >= 10, "{secrets:?}");
    for secret in &secrets {
        assert!(!secret.is_empty());
        assert!(
            !log.contains(secret.as_str()),
            "the decision log contains {secret}"
        );
    }
    // What it does hold: the inputs the policy saw, with placeholders.
    let first: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["route"], "default");
    assert_eq!(first["user"]["sub"], "dev");
    assert_eq!(first["user"]["claims"]["dept"], "eng");
    assert!(
        first["user"]["claims"].get("employee_ssn").is_none(),
        "{first:#}"
    );
    assert_eq!(first["request"]["headers"]["x-team"], "blue");
    assert_eq!(first["request"]["headers"]["x-api-key"], "[redacted]");
    assert!(first["request"]["headers"].get("authorization").is_none());
    assert_eq!(first["request"]["mcp"]["tool"], "run_sql");
    assert_eq!(
        first["outcome"]["headers"]["authorization"],
        "Bearer [upstream access token]"
    );
    assert_eq!(first["policy_hash"].as_str().unwrap().len(), 64);
}

fn run_cli(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-oauth-proxy"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unreadable_logs_and_candidates_and_broken_shadows_are_errors_that_say_where() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.rhai");
    std::fs::write(&good, POLICY).unwrap();
    let broken = dir.path().join("broken.rhai");
    std::fs::write(&broken, "fn authorize(user, request) {\n  deny(\n}").unwrap();
    let log = dir.path().join("d.jsonl");
    std::fs::write(&log, "{\"v\":1}\n").unwrap();
    let os = |p: &Path| p.as_os_str().to_owned();
    let (code, _, err) = run_cli(&[
        "policy".as_ref(),
        "replay".as_ref(),
        "--policy".as_ref(),
        &os(&good),
        &os(&log),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("{}:1: not a decision record", log.display())),
        "{err}"
    );
    std::fs::write(&log, "").unwrap();
    let (code, _, err) = run_cli(&[
        "policy".as_ref(),
        "replay".as_ref(),
        "--policy".as_ref(),
        &os(&broken),
        &os(&log),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("{}:3:", broken.display())), "{err}");

    // `check` compiles the shadow policy and names its key.
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        config_toml(
            free_port(),
            "https://idp.example.com",
            &dir.path().join("proxy.db"),
            &Options {
                extra: format!("[policy]\nshadow_path = \"{}\"\n", broken.display()),
                ..Default::default()
            },
        ),
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check".as_ref(), "--config".as_ref(), &os(&config)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "policy error: policy.shadow_path: {}:3:",
            broken.display()
        )),
        "{err}"
    );
}
