//! Several replicas on one Redis: two proxy processes, one store. Each test
//! runs its own redis-server (from the machine's Redis package) so it can be
//! stopped and started without touching anything else.

mod common;

use std::time::{Duration, Instant};

use common::downstream::Downstream;
use common::redis_server::RedisServer;
use common::*;
use serde_json::{json, Value};

struct Replica {
    _process: ProxyProcess,
    endpoint: Endpoint,
}

struct Cluster {
    a: Replica,
    b: Replica,
    downstream: Downstream,
    _dir: tempfile::TempDir,
}

/// Two replicas of one deployment. (Behind a load balancer they would share
/// one public URL; here each has its own port, and tokens carry no URL.)
async fn cluster(redis: &RedisServer) -> Cluster {
    let provider = Provider::start().await;
    let downstream = Downstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("t{}:", rand_suffix());
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let port = free_port();
        let opts = Options {
            downstream_url: Some(downstream.mcp_url()),
            extra: String::new(),
            ..Default::default()
        };
        let mut toml = config_toml(
            port,
            &provider.issuer,
            &dir.path().join(format!("{name}.db")),
            &opts,
        );
        // A long cache: only the revocation feed can make b forget a token.
        toml.push_str("\n[auth]\ncache_ttl = \"60s\"\n");
        toml = redis.store_in(&toml, &prefix);
        let (process, endpoint) =
            start_proxy_process(dir.path(), name, &toml, port, &provider).await;
        replicas.push(Replica {
            _process: process,
            endpoint,
        });
    }
    let b = replicas.pop().unwrap();
    let a = replicas.pop().unwrap();
    Cluster {
        a,
        b,
        downstream,
        _dir: dir,
    }
}

fn rand_suffix() -> String {
    use rand::Rng;
    format!("{:08x}", rand::thread_rng().gen::<u32>())
}

async fn mcp(endpoint: &Endpoint, token: &str) -> u16 {
    endpoint
        .http
        .post(format!("{}/mcp", endpoint.url))
        .bearer_auth(token)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_one_replica_works_on_the_other_and_revocation_reaches_it_within_a_second() {
    let redis = RedisServer::start_durable();
    let c = cluster(&redis).await;
    let client = c.a.endpoint.public_client().await;
    // Log in through a, call through b.
    let tokens = c.a.endpoint.tokens_for(&client, &[]).await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(mcp(&c.b.endpoint, access).await, 200);
    assert_eq!(
        c.downstream.last().headers["x-user-email"],
        "alice@example.com"
    );
    // b now holds the session in its cache; revoke at a.
    let r =
        c.a.endpoint
            .http
            .post(format!("{}/revoke", c.a.endpoint.url))
            .form(&[
                ("token", tokens["refresh_token"].as_str().unwrap()),
                ("client_id", &client.client_id),
            ])
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    let revoked_at = Instant::now();
    loop {
        if mcp(&c.b.endpoint, access).await == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "b still accepts a token revoked on a"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The refresh token is dead everywhere too (the client, registered at a,
    // is known to b: one store).
    let (status, _) =
        c.b.endpoint
            .refresh(&client, tokens["refresh_token"].as_str().unwrap())
            .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_redemptions_and_refreshes_across_replicas_have_one_winner() {
    let redis = RedisServer::start_durable();
    let c = cluster(&redis).await;
    let client = c.a.endpoint.public_client().await;
    let pkce = Pkce::new();
    let q =
        c.a.endpoint
            .login(&mut Browser::new(), &client, &pkce, &[])
            .await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let endpoint = if i % 2 == 0 {
            &c.a.endpoint
        } else {
            &c.b.endpoint
        };
        let http = endpoint.http.clone();
        let url = format!("{}/token", endpoint.url);
        let form = vec![
            ("grant_type".to_string(), "authorization_code".to_string()),
            ("code".into(), q["code"].clone()),
            ("redirect_uri".into(), client.redirect_uri.clone()),
            ("code_verifier".into(), pkce.verifier.clone()),
            ("client_id".into(), client.client_id.clone()),
        ];
        tasks.push(tokio::spawn(async move {
            let r = http.post(url).form(&form).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut winners = 0;
    for t in tasks {
        let (status, _) = t.await.unwrap();
        winners += (status == 200) as usize;
    }
    assert_eq!(winners, 1, "20 redemptions of one code across two replicas");

    let tokens = c.b.endpoint.tokens_for(&client, &[]).await;
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let endpoint = if i % 2 == 0 {
            &c.a.endpoint
        } else {
            &c.b.endpoint
        };
        let http = endpoint.http.clone();
        let url = format!("{}/token", endpoint.url);
        let form = vec![
            ("grant_type".to_string(), "refresh_token".to_string()),
            ("refresh_token".into(), refresh.clone()),
            ("client_id".into(), client.client_id.clone()),
        ];
        tasks.push(tokio::spawn(async move {
            let r = http.post(url).form(&form).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut successes = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        if status == 200 {
            successes.push(body);
        }
    }
    assert!(
        successes.len() <= 1,
        "{} refreshes of one token succeeded",
        successes.len()
    );
    // The grant is intact: the original access token still works, and so do
    // the winner's tokens.
    assert_eq!(
        mcp(&c.a.endpoint, tokens["access_token"].as_str().unwrap()).await,
        200
    );
    if let Some(winner) = successes.first() {
        assert_eq!(
            mcp(&c.b.endpoint, winner["access_token"].as_str().unwrap()).await,
            200
        );
        let (status, _) =
            c.a.endpoint
                .refresh(&client, winner["refresh_token"].as_str().unwrap())
                .await;
        assert_eq!(status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_replicas_ride_out_a_redis_restart() {
    let mut redis = RedisServer::start_durable();
    let c = cluster(&redis).await;
    let client = c.a.endpoint.public_client().await;
    let tokens = c.a.endpoint.tokens_for(&client, &[]).await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(mcp(&c.a.endpoint, access).await, 200);
    assert_eq!(mcp(&c.b.endpoint, access).await, 200);

    redis.stop();
    // Cached sessions keep working; what needs the store says 503.
    assert_eq!(mcp(&c.a.endpoint, access).await, 200);
    assert_eq!(mcp(&c.b.endpoint, access).await, 200);
    let (status, body) =
        c.b.endpoint
            .refresh(&client, tokens["refresh_token"].as_str().unwrap())
            .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    let (status, body) = c.a.endpoint.register(json!({"redirect_uris": ["http://127.0.0.1:1/cb"], "token_endpoint_auth_method": "none"})).await;
    assert_eq!(status, 503, "{body}");

    redis.restart();
    // Both recover on their own: new work succeeds on each.
    for endpoint in [&c.a.endpoint, &c.b.endpoint] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _) = endpoint.register(json!({"redirect_uris": ["http://127.0.0.1:1/cb"], "token_endpoint_auth_method": "none"})).await;
            if status == 201 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not recover",
                endpoint.url
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (status, refreshed) =
        c.b.endpoint
            .refresh(&client, tokens["refresh_token"].as_str().unwrap())
            .await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(
        mcp(&c.a.endpoint, refreshed["access_token"].as_str().unwrap()).await,
        200
    );
    // A revocation after the restart still reaches the other replica.
    assert_eq!(
        mcp(&c.b.endpoint, refreshed["access_token"].as_str().unwrap()).await,
        200
    );
    let r =
        c.a.endpoint
            .http
            .post(format!("{}/revoke", c.a.endpoint.url))
            .form(&[
                ("token", refreshed["refresh_token"].as_str().unwrap()),
                ("client_id", &client.client_id),
            ])
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    let revoked_at = Instant::now();
    while mcp(&c.b.endpoint, refreshed["access_token"].as_str().unwrap()).await != 401 {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(3),
            "revocation after the restart did not reach b"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_11_a_stream_on_one_replica_ends_within_a_second_of_revoke_on_the_other() {
    let redis = RedisServer::start_durable();
    let c = cluster(&redis).await;
    let client = c.a.endpoint.public_client().await;
    let tokens = c.a.endpoint.tokens_for(&client, &[]).await;
    let access = tokens["access_token"].as_str().unwrap();
    let mut stream =
        c.b.endpoint
            .http
            .get(format!("{}/mcp", c.b.endpoint.url))
            .bearer_auth(access)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
    assert_eq!(stream.status(), 200);
    stream.chunk().await.unwrap().expect("the first event");
    let r =
        c.a.endpoint
            .http
            .post(format!("{}/revoke", c.a.endpoint.url))
            .form(&[
                ("token", tokens["refresh_token"].as_str().unwrap()),
                ("client_id", &client.client_id),
            ])
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    // Faster than b's own store re-check (auth.stream_recheck_interval,
    // 5 s): the revocation feed ends it.
    let ended = tokio::time::timeout(Duration::from_secs(1), async {
        while stream.chunk().await.expect("a clean end").is_some() {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream on b outlived the revocation on a"
    );
}
