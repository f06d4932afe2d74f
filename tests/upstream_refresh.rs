//! People stay signed in for the refresh token's lifetime: when a client
//! refreshes and the provider's access token is about to expire, the proxy
//! renews it, reads the claims again and runs the login policy again.

mod common;

use common::downstream::Downstream;
use common::*;
use serde_json::{json, Value};

struct Setup {
    proxy: TestProxy,
    downstream: Downstream,
    client: Client,
    _dir: tempfile::TempDir,
}

async fn setup(policy: Option<&str>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut extra = String::new();
    if let Some(source) = policy {
        let path = dir.path().join("p.rhai");
        std::fs::write(&path, source).unwrap();
        extra = format!("[policy]\npath = \"{}\"\n", path.display());
    }
    let downstream = Downstream::start().await;
    let proxy = TestProxy::start_with_options(&Options {
        downstream_url: Some(downstream.mcp_url()),
        extra,
        ..Default::default()
    })
    .await;
    // Provider tokens that expire within upstream.refresh_before (60 s).
    proxy.provider.set_access_ttl(30);
    let client = proxy.public_client().await;
    Setup {
        proxy,
        downstream,
        client,
        _dir: dir,
    }
}

impl Setup {
    async fn call(&self, token: &str) -> u16 {
        self.proxy
            .http
            .post(format!("{}/mcp", self.proxy.url))
            .bearer_auth(token)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    fn downstream_bearer(&self) -> String {
        self.downstream.last().headers["authorization"]
            .to_str()
            .unwrap()
            .to_string()
    }
}

fn token(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap().to_string()
}

#[tokio::test]
async fn an_expiring_provider_token_is_renewed_and_the_downstream_gets_the_new_one() {
    let s = setup(None).await;
    let first = s.proxy.tokens_for(&s.client, &[]).await;
    assert_eq!(s.call(&token(&first, "access_token")).await, 200);
    let old_bearer = s.downstream_bearer();

    let (status, second) = s
        .proxy
        .refresh(&s.client, &token(&first, "refresh_token"))
        .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(s.proxy.provider.refreshes(), 1);
    assert_eq!(s.call(&token(&second, "access_token")).await, 200);
    let new_bearer = s.downstream_bearer();
    assert_ne!(old_bearer, new_bearer);
    assert!(new_bearer.starts_with("Bearer upstream-access-"));
    // The provider rotated its refresh token; the next renewal uses the new one.
    let (status, third) = s
        .proxy
        .refresh(&s.client, &token(&second, "refresh_token"))
        .await;
    assert_eq!(status, 200, "{third}");
    assert_eq!(s.proxy.provider.refreshes(), 2);
}

#[tokio::test]
async fn a_fresh_provider_token_is_left_alone() {
    let s = setup(None).await;
    s.proxy.provider.set_access_ttl(3600);
    let first = s.proxy.tokens_for(&s.client, &[]).await;
    let (status, _) = s
        .proxy
        .refresh(&s.client, &token(&first, "refresh_token"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.proxy.provider.refreshes(), 0);
}

#[tokio::test]
async fn a_refused_renewal_ends_the_grant_with_invalid_grant() {
    let s = setup(None).await;
    let first = s.proxy.tokens_for(&s.client, &[]).await;
    let access = token(&first, "access_token");
    assert_eq!(s.call(&access).await, 200);
    s.proxy.provider.tamper(Tamper::RefuseRefresh);
    let (status, body) = s
        .proxy
        .refresh(&s.client, &token(&first, "refresh_token"))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    // The grant is gone: the client must sign in again; no loop.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(s.call(&access).await, 401);
    s.proxy.provider.tamper(Tamper::None);
    let (status, _) = s
        .proxy
        .refresh(&s.client, &token(&first, "refresh_token"))
        .await;
    assert_eq!(status, 400);
    assert_eq!(s.proxy.provider.refreshes(), 0);
}

#[tokio::test]
async fn an_unreachable_provider_keeps_the_grant() {
    let s = setup(None).await;
    let first = s.proxy.tokens_for(&s.client, &[]).await;
    s.proxy.provider.tamper(Tamper::BrokenRefresh);
    let (status, body) = s
        .proxy
        .refresh(&s.client, &token(&first, "refresh_token"))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    s.proxy.provider.tamper(Tamper::None);
    let (status, body) = s
        .proxy
        .refresh(&s.client, &token(&first, "refresh_token"))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_group_change_at_the_provider_reaches_the_policy_within_one_refresh() {
    let s = setup(Some(include_str!("../policies/group-allowlist.rhai"))).await;
    s.proxy.provider.set_user(
        json!({"sub": "u1", "email": "u1@example.com", "name": "U", "groups": ["engineering"]}),
    );
    let first = s.proxy.tokens_for(&s.client, &[]).await;
    assert_eq!(s.call(&token(&first, "access_token")).await, 200);
    assert_eq!(s.downstream.last().headers["x-user-groups"], "engineering");

    // Moved to another team: still allowed, new groups on the next refresh.
    s.proxy.provider.set_user(
        json!({"sub": "u1", "email": "u1@example.com", "name": "U", "groups": ["admins", "ops"]}),
    );
    let (status, second) = s
        .proxy
        .refresh(&s.client, &token(&first, "refresh_token"))
        .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(s.call(&token(&second, "access_token")).await, 200);
    assert_eq!(s.downstream.last().headers["x-user-groups"], "admins,ops");

    // Removed from every allowed group: the next refresh ends the grant.
    s.proxy.provider.set_user(
        json!({"sub": "u1", "email": "u1@example.com", "name": "U", "groups": ["sales"]}),
    );
    let (status, body) = s
        .proxy
        .refresh(&s.client, &token(&second, "refresh_token"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(s.call(&token(&second, "access_token")).await, 401);
}
