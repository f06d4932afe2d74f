//! DESIGN.md invariant 11: access ends when the provider says so, within a
//! bounded, documented time. A client that keeps refreshing cannot keep a
//! person signed in past `upstream.revalidate_after` without the provider
//! confirming them again, nor past `tokens.max_grant_age` when the provider
//! issued no refresh token; and open event streams end with their token.

mod common;

use std::time::{Duration, Instant};

use common::downstream::Downstream;
use common::*;
use mcp_oauth_proxy::store::{Namespace, Store, TokenRecord};
use serde_json::{json, Value};

struct Setup {
    proxy: TestProxy,
    downstream: Downstream,
    client: Client,
    _dir: tempfile::TempDir,
}

struct Knobs<'a> {
    policy: Option<&'a str>,
    upstream_extra: &'a str,
    extra: &'a str,
}

async fn setup(knobs: Knobs<'_>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut extra = knobs.extra.to_string();
    if let Some(source) = knobs.policy {
        let path = dir.path().join("p.rhai");
        std::fs::write(&path, source).unwrap();
        extra.push_str(&format!("\n[policy]\npath = \"{}\"\n", path.display()));
    }
    let downstream = Downstream::start().await;
    let proxy = TestProxy::start_with_options(&Options {
        downstream_url: Some(downstream.mcp_url()),
        upstream_extra: knobs.upstream_extra.to_string(),
        extra,
        ..Default::default()
    })
    .await;
    let client = proxy.public_client().await;
    Setup {
        proxy,
        downstream,
        client,
        _dir: dir,
    }
}

/// The provider's own tokens stay fresh (an hour), so only the proxy's
/// revalidation bound can make a refresh ask the provider.
const REVALIDATE_EVERY_3S: &str = "revalidate_after = \"3s\"\nrefresh_before = \"1s\"\n";

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

    /// Opens `GET /mcp` and reads its first event.
    async fn open_stream(&self, token: &str) -> reqwest::Response {
        let mut r = self
            .proxy
            .http
            .get(format!("{}/mcp", self.proxy.url))
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let first = r.chunk().await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&first).contains("notifications/hello"));
        r
    }

    async fn grant_id_of(&self, access: &str) -> String {
        let record = self
            .store()
            .get(
                Namespace::AccessToken,
                &mcp_oauth_proxy::crypto::token_hash(access),
            )
            .await
            .unwrap()
            .expect("the access token is stored");
        serde_json::from_slice::<TokenRecord>(&record)
            .unwrap()
            .grant_id
    }

    /// A second handle on the proxy's SQLite file, as another process (the
    /// CLI) would open it.
    fn store(&self) -> mcp_oauth_proxy::store::sqlite::SqliteStore {
        mcp_oauth_proxy::store::sqlite::SqliteStore::open(&self.proxy.dir.path().join("proxy.db"))
            .unwrap()
    }
}

fn token(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .to_string()
}

/// Waits for the stream to end cleanly; returns how long it took.
async fn stream_end(r: &mut reqwest::Response, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match tokio::time::timeout(within.saturating_sub(started.elapsed()), r.chunk()).await {
            Ok(Ok(None)) => return started.elapsed(),
            Ok(Ok(Some(_))) => continue,
            Ok(Err(e)) => panic!("the stream broke instead of ending cleanly: {e}"),
            Err(_) => panic!("the stream was still open after {within:?}"),
        }
    }
}

// ------------------------------------------------ with a provider refresh token

#[tokio::test(flavor = "multi_thread")]
async fn invariant_11_provider_unreachable_past_revalidate_after_refuses_and_never_extends_access()
{
    let s = setup(Knobs {
        policy: None,
        upstream_extra: REVALIDATE_EVERY_3S,
        extra: "",
    })
    .await;
    let first = s.proxy.tokens_for(&s.client, &[]).await;
    assert!(first["expires_in"].as_i64().unwrap() <= 3, "{first}");
    // Within the bound a refresh does not bother the provider...
    let (status, second) = s
        .proxy
        .refresh(&s.client, &token(&first, "refresh_token"))
        .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(s.proxy.provider.refreshes(), 0);
    assert!(second["expires_in"].as_i64().unwrap() <= 3, "{second}");

    // ...past it, the provider must confirm the person, and it is down.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.proxy.provider.tamper(Tamper::BrokenRefresh);
    for _ in 0..3 {
        let (status, body) = s
            .proxy
            .refresh(&s.client, &token(&second, "refresh_token"))
            .await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "temporarily_unavailable");
    }
    // Fail closed: the tokens in hand end at the bound, none were extended.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(s.call(&token(&first, "access_token")).await, 401);
    assert_eq!(s.call(&token(&second, "access_token")).await, 401);

    // The provider back, the same refresh token works again, confirmed.
    s.proxy.provider.tamper(Tamper::None);
    let (status, third) = s
        .proxy
        .refresh(&s.client, &token(&second, "refresh_token"))
        .await;
    assert_eq!(status, 200, "{third}");
    assert_eq!(s.proxy.provider.refreshes(), 1);
    assert_eq!(s.call(&token(&third, "access_token")).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn invariant_11_group_removed_at_the_provider_loses_access_at_the_first_refresh_after_revalidate_after(
) {
    let s = setup(Knobs {
        policy: Some(include_str!("../policies/group-allowlist.rhai")),
        upstream_extra: REVALIDATE_EVERY_3S,
        extra: "",
    })
    .await;
    s.proxy.provider.set_user(
        json!({"sub": "u1", "email": "u1@example.com", "name": "U", "groups": ["engineering"]}),
    );
    let first = s.proxy.tokens_for(&s.client, &[]).await;
    assert_eq!(s.call(&token(&first, "access_token")).await, 200);

    s.proxy.provider.set_user(
        json!({"sub": "u1", "email": "u1@example.com", "name": "U", "groups": ["sales"]}),
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = s
        .proxy
        .refresh(&s.client, &token(&first, "refresh_token"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(s.proxy.provider.refreshes(), 1, "the provider was asked");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.call(&token(&first, "access_token")).await, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn invariant_11_grants_stored_before_revalidation_existed_are_revalidated_at_once() {
    let s = setup(Knobs {
        policy: Some(include_str!("../policies/group-allowlist.rhai")),
        upstream_extra: "",
        extra: "",
    })
    .await;
    s.proxy.provider.set_user(
        json!({"sub": "u1", "email": "u1@example.com", "name": "U", "groups": ["engineering"]}),
    );
    let first = s.proxy.tokens_for(&s.client, &[]).await;
    let access = token(&first, "access_token");
    // Rewrite the grant as an older release stored it: no validation time,
    // created two hours ago (before the default one-hour bound).
    let store = s.store();
    let grant_id = s.grant_id_of(&access).await;
    let bytes = store
        .get(Namespace::Grant, &grant_id)
        .await
        .unwrap()
        .unwrap();
    let mut legacy: Value = serde_json::from_slice(&bytes).unwrap();
    legacy.as_object_mut().unwrap().remove("validated_at");
    legacy["created_at"] = json!(legacy["created_at"].as_i64().unwrap() - 7200);
    store
        .put(
            Namespace::Grant,
            &grant_id,
            &serde_json::to_vec(&legacy).unwrap(),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    s.proxy.app().token_cache.forget_all();
    // It still loads, and gets the bound it would have had.
    assert_eq!(s.call(&access).await, 401);
    s.proxy.provider.set_user(
        json!({"sub": "u1", "email": "u1@example.com", "name": "U", "groups": ["sales"]}),
    );
    let (status, body) = s
        .proxy
        .refresh(&s.client, &token(&first, "refresh_token"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(s.proxy.provider.refreshes(), 1);
}

// ---------------------------------------------- without a provider refresh token

#[tokio::test(flavor = "multi_thread")]
async fn invariant_11_refresh_without_provider_token_ends_at_max_grant_age() {
    let s = setup(Knobs {
        policy: None,
        upstream_extra: "",
        extra: "[tokens]\nmax_grant_age = \"3s\"\n",
    })
    .await;
    s.proxy.provider.issue_refresh_tokens(false);
    let first = s.proxy.tokens_for(&s.client, &[]).await;
    assert!(first["expires_in"].as_i64().unwrap() <= 3, "{first}");
    let (status, second) = s
        .proxy
        .refresh(&s.client, &token(&first, "refresh_token"))
        .await;
    assert_eq!(status, 200, "{second}");
    assert!(second["expires_in"].as_i64().unwrap() <= 3, "{second}");
    // Neither token outlives the grant's end.
    let grant_end = {
        let record = s
            .store()
            .get(
                Namespace::RefreshToken,
                &mcp_oauth_proxy::crypto::token_hash(&token(&second, "refresh_token")),
            )
            .await
            .unwrap()
            .unwrap();
        serde_json::from_slice::<TokenRecord>(&record)
            .unwrap()
            .expires_at
    };
    assert!(grant_end <= mcp_oauth_proxy::now_unix() + 3);

    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (status, body) = s
        .proxy
        .refresh(&s.client, &token(&second, "refresh_token"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(s.call(&token(&second, "access_token")).await, 401);
    assert_eq!(s.proxy.provider.refreshes(), 0);
}

// ------------------------------------------------------------------ streams

#[tokio::test(flavor = "multi_thread")]
async fn invariant_11_an_open_stream_ends_within_a_second_of_revoke() {
    let s = setup(Knobs {
        policy: None,
        upstream_extra: "",
        extra: "",
    })
    .await;
    let t = s.proxy.tokens_for(&s.client, &[]).await;
    let mut stream = s.open_stream(&token(&t, "access_token")).await;
    let r = s
        .proxy
        .http
        .post(format!("{}/revoke", s.proxy.url))
        .form(&[
            ("token", token(&t, "refresh_token").as_str()),
            ("client_id", &s.client.client_id),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    stream_end(&mut stream, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        s.downstream
            .state
            .closed_count
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the downstream stream was dropped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invariant_11_an_open_stream_ends_when_its_access_token_expires() {
    let s = setup(Knobs {
        policy: None,
        upstream_extra: "",
        extra: "[tokens]\naccess_ttl = \"2s\"\n",
    })
    .await;
    let t = s.proxy.tokens_for(&s.client, &[]).await;
    let mut stream = s.open_stream(&token(&t, "access_token")).await;
    let took = stream_end(&mut stream, Duration::from_secs(4)).await;
    assert!(took >= Duration::from_millis(500), "ended early: {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invariant_11_a_grant_revoked_by_another_process_ends_open_streams_within_the_recheck_interval(
) {
    let s = setup(Knobs {
        policy: None,
        upstream_extra: "",
        extra: "[auth]\nstream_recheck_interval = \"1s\"\n",
    })
    .await;
    let t = s.proxy.tokens_for(&s.client, &[]).await;
    let access = token(&t, "access_token");
    let mut stream = s.open_stream(&access).await;
    // What `grants revoke` does from its own process: delete the grant in
    // the shared SQLite file. This process hears nothing of it.
    let grant_id = s.grant_id_of(&access).await;
    assert!(s.store().delete(Namespace::Grant, &grant_id).await.unwrap());
    stream_end(&mut stream, Duration::from_millis(2500)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invariant_11_a_refused_renewal_ends_open_streams() {
    let s = setup(Knobs {
        policy: None,
        upstream_extra: "",
        extra: "",
    })
    .await;
    // A provider token about to expire: the next refresh renews it.
    s.proxy.provider.set_access_ttl(30);
    let t = s.proxy.tokens_for(&s.client, &[]).await;
    let mut stream = s.open_stream(&token(&t, "access_token")).await;
    s.proxy.provider.tamper(Tamper::RefuseRefresh);
    let (status, body) = s
        .proxy
        .refresh(&s.client, &token(&t, "refresh_token"))
        .await;
    assert_eq!(status, 400, "{body}");
    stream_end(&mut stream, Duration::from_secs(1)).await;
}
