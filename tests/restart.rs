//! A token survives the process: SIGKILL between issuing and using it, start
//! again, and the access token, its refresh token and the client's
//! registration all still work.

mod common;

use std::process::Command;

use common::downstream::Downstream;
use common::*;
use serde_json::json;

#[tokio::test]
async fn tokens_and_registrations_survive_sigkill() {
    let provider = Provider::start().await;
    let downstream = Downstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let opts = Options {
        downstream_url: Some(downstream.mcp_url()),
        ..Default::default()
    };
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        config_toml(port, &provider.issuer, &dir.path().join("proxy.db"), &opts),
    )
    .unwrap();

    let endpoint = Endpoint {
        url: format!("http://127.0.0.1:{port}"),
        provider: provider.clone(),
        http: http_client(),
    };
    let proxy = spawn_proxy(&config);
    wait_ready(&endpoint.url).await;
    let client = endpoint.public_client().await;
    let tokens = endpoint.tokens_for(&client, &[]).await;

    // No graceful anything: dropping the handle sends SIGKILL.
    drop(proxy);
    let _proxy = spawn_proxy(&config);
    wait_ready(&endpoint.url).await;

    let r = endpoint
        .http
        .post(format!("{}/mcp", endpoint.url))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        downstream.last().headers["x-user-email"],
        "alice@example.com"
    );
    let (status, refreshed) = endpoint
        .refresh(&client, tokens["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(status, 200, "{refreshed}");
    // The registration survived: the client can start a new login.
    let page = Browser::new()
        .get(&endpoint.authorize_url(&client, &Pkce::new(), "after-restart", &[]))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
}

#[test]
fn check_reports_config_and_policy_errors_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let run = |toml: &str| {
        std::fs::write(&config, toml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_mcp-oauth-proxy"))
            .args(["check", "--config"])
            .arg(&config)
            .env_remove("DOWNSTREAM_MCP_URL")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good = config_toml(
        8787,
        "https://idp.example.com",
        &dir.path().join("db"),
        &Options::default(),
    );
    let (ok, stdout, stderr) = run(&good);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("[redacted]")
            && !stdout.contains(UPSTREAM_CLIENT_SECRET)
            && !stdout.contains(ENCRYPTION_KEY),
        "{stdout}"
    );
    let (ok, _, stderr) = run(&good.replace("url = \"http://127.0.0.1:9/mcp\"", ""));
    assert!(!ok);
    assert!(stderr.contains("downstream.url: is not set"), "{stderr}");
    let (ok, _, stderr) = run(&format!("{good}\n[bogus]\nkey = 1\n"));
    assert!(!ok);
    assert!(stderr.contains("bogus"), "{stderr}");
    let policy = dir.path().join("broken.rhai");
    std::fs::write(
        &policy,
        "fn authorize(user, request) {\n    allow(#{ \"X\": 1 \n}\n",
    )
    .unwrap();
    let (ok, _, stderr) = run(&format!(
        "{good}\n[policy]\npath = \"{}\"\n",
        policy.display()
    ));
    assert!(!ok);
    assert!(
        stderr.contains(&format!("{}:", policy.display())),
        "{stderr}"
    );
}
