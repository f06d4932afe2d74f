//! The signed identity assertion (issue 13, item 4): what a downstream
//! receives when its route's policy asks for `identity_assertion()`, the
//! JWKS it verifies it with, key rotation and overlap, keys that survive a
//! restart, replicas on Redis agreeing on one key set, and keys kept sealed.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::downstream::Downstream;
use common::*;
use jsonwebtoken::jwk::JwkSet;
use serde_json::{json, Value};

const POLICY: &str = r#"
fn authorize(user, request) {
    allow(#{ "X-User-Email": user.email, "X-Identity-Assertion": identity_assertion() })
}
"#;

/// A route whose policy does not ask for an assertion.
const PLAIN_POLICY: &str = r#"
fn authorize(user, request) { allow(#{ "X-User-Email": user.email }) }
"#;

struct Setup {
    proxy: TestProxy,
    main: Downstream,
    wiki: Downstream,
    plain: Downstream,
    client: Client,
}

fn write_policies(dir: &Path) {
    std::fs::write(dir.join("assert.rhai"), POLICY).unwrap();
    std::fs::write(dir.join("plain.rhai"), PLAIN_POLICY).unwrap();
}

fn options(
    dir: &Path,
    main: &Downstream,
    wiki: &Downstream,
    plain: &Downstream,
    schedule: &str,
) -> Options {
    let policy = dir.join("assert.rhai");
    Options {
        downstream_url: Some(main.mcp_url()),
        extra: format!(
            r#"
[policy]
path = "{policy}"
{schedule}
[[routes]]
name = "wiki"
path = "/wiki/mcp"
[routes.downstream]
url = "{wiki}"
assertion_audience = "urn:example:wiki"
[routes.policy]
path = "{policy}"

[[routes]]
name = "plain"
path = "/plain/mcp"
[routes.downstream]
url = "{plain}"
[routes.policy]
path = "{plain_policy}"
"#,
            policy = policy.display(),
            wiki = wiki.mcp_url(),
            plain = plain.mcp_url(),
            plain_policy = dir.join("plain.rhai").display(),
        ),
        ..Default::default()
    }
}

async fn setup(schedule: &str) -> Setup {
    init_logs();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    write_policies(dir.path());
    let (main, wiki, plain) = (
        Downstream::start().await,
        Downstream::start().await,
        Downstream::start().await,
    );
    let opts = options(dir.path(), &main, &wiki, &plain, schedule);
    let proxy = TestProxy::start_on(Provider::start().await, dir, &opts).await;
    let client = proxy.public_client().await;
    Setup {
        proxy,
        main,
        wiki,
        plain,
        client,
    }
}

async fn call(endpoint: &Endpoint, path: &str, token: &str) -> u16 {
    endpoint
        .http
        .post(format!("{}{path}", endpoint.url))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("x-identity-assertion", "forged-by-the-client")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn jwks(endpoint: &Endpoint) -> (JwkSet, reqwest::header::HeaderMap) {
    let r = endpoint
        .http
        .get(format!("{}/.well-known/jwks.json", endpoint.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    (r.json().await.unwrap(), headers)
}

fn kids(set: &JwkSet) -> Vec<String> {
    set.keys
        .iter()
        .map(|k| k.common.key_id.clone().unwrap())
        .collect()
}

fn assertion_of(downstream: &Downstream) -> String {
    downstream.last().headers["x-identity-assertion"]
        .to_str()
        .unwrap()
        .to_string()
}

fn kid_of(jwt: &str) -> String {
    jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap()
}

/// Verifies as a downstream would: signature by a published key, `iss`,
/// `aud`, and (unless `check_exp` is off) `exp`.
fn verify(
    set: &JwkSet,
    jwt: &str,
    issuer: &str,
    audience: &str,
    check_exp: bool,
) -> Result<Value, String> {
    let kid = kid_of(jwt);
    let jwk = set
        .find(&kid)
        .ok_or(format!("kid {kid} is not published"))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer]);
    validation.validate_exp = check_exp;
    validation.leeway = 0;
    jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn each_route_gets_an_assertion_for_its_own_audience_with_the_persons_claims() {
    let s = setup("").await;
    let token = s.proxy.tokens_for(&s.client, &[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    for path in ["/mcp", "/wiki/mcp", "/plain/mcp"] {
        assert_eq!(call(&s.proxy, path, &token).await, 200, "{path}");
    }
    let (set, _) = jwks(&s.proxy).await;
    let issuer = s.proxy.url.as_str();
    let main = assertion_of(&s.main);
    let claims = verify(&set, &main, issuer, &s.main.mcp_url(), true).unwrap();
    assert_eq!(claims["sub"], "alice-sub-123");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["name"], "Alice Example");
    assert_eq!(claims["groups"], json!(["engineering", "admins"]));
    assert_eq!(claims["client_id"], s.client.client_id.as_str());
    assert_eq!(
        claims["request_id"],
        s.main.last().headers["x-request-id"].to_str().unwrap()
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        60
    );
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    // The main route's assertion is not one for the wiki.
    assert!(verify(&set, &main, issuer, "urn:example:wiki", true).is_err());
    let wiki = assertion_of(&s.wiki);
    let wiki_claims = verify(&set, &wiki, issuer, "urn:example:wiki", true).unwrap();
    assert_ne!(
        wiki_claims["jti"], claims["jti"],
        "each request has its own"
    );
    // A route whose policy does not ask gets none, and the client's own
    // header never crosses.
    assert!(s.plain.last().headers.get("x-identity-assertion").is_none());
    // A second request gets a fresh assertion, not a cached one.
    assert_eq!(call(&s.proxy, "/mcp", &token).await, 200);
    assert_ne!(assertion_of(&s.main), main);
}

#[tokio::test]
async fn the_jwks_publishes_public_ed25519_keys_with_cache_headers() {
    let s = setup("").await;
    let (set, headers) = jwks(&s.proxy).await;
    assert_eq!(headers["content-type"], "application/jwk-set+json");
    let cache = headers["cache-control"].to_str().unwrap();
    let max_age: u64 = cache
        .strip_prefix("public, max-age=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&max_age), "{cache}");
    let raw: Value = serde_json::to_value(&set).unwrap();
    // Current and next (no previous generation on a fresh store).
    assert_eq!(set.keys.len(), 2, "{raw}");
    for key in raw["keys"].as_array().unwrap() {
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["alg"], "EdDSA");
        assert_eq!(key["use"], "sig");
        assert!(key.get("d").is_none(), "a private key is published: {key}");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(key["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
    }
}

#[tokio::test]
async fn keys_rotate_on_schedule_and_the_previous_key_stays_published_until_its_assertions_expire()
{
    let s = setup("[identity_assertion]\nlifetime = \"1s\"\nrotation_interval = \"3s\"\n").await;
    let token = s.proxy.tokens_for(&s.client, &[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(call(&s.proxy, "/mcp", &token).await, 200);
    let first = assertion_of(&s.main);
    let (before, _) = jwks(&s.proxy).await;
    let old_kid = kid_of(&first);
    // Published in order: previous (while its assertions live), current, next.
    let published = kids(&before);
    let at = published.iter().position(|k| *k == old_kid).unwrap();
    let next_kid = published[at + 1].clone();
    // Call until the key changes (a generation lasts 3 s).
    let started = Instant::now();
    let (last_old, rotated) = loop {
        let previous = assertion_of(&s.main);
        assert_eq!(call(&s.proxy, "/mcp", &token).await, 200);
        let current = assertion_of(&s.main);
        if kid_of(&current) != old_kid {
            break (previous, current);
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no rotation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        kid_of(&rotated),
        next_kid,
        "the pre-published key signs next"
    );
    let issuer = s.proxy.url.as_str();
    let audience = s.main.mcp_url();
    let (after, _) = jwks(&s.proxy).await;
    verify(&after, &rotated, issuer, &audience, true).unwrap();
    // The last assertion of the old key may still be valid: its key is
    // still there.
    let exp = |jwt: &str| {
        verify(&after, jwt, issuer, &audience, false).unwrap()["exp"]
            .as_i64()
            .unwrap()
    };
    let old_exp = exp(&last_old);
    if mcp_oauth_proxy::now_unix() < old_exp {
        assert!(
            kids(&after).contains(&old_kid),
            "retired while its assertions live"
        );
    }
    // Once they have expired, it goes.
    loop {
        let (set, _) = jwks(&s.proxy).await;
        if !kids(&set).contains(&old_kid) {
            assert!(mcp_oauth_proxy::now_unix() >= old_exp, "retired too early");
            assert!(kids(&set).contains(&kid_of(&rotated)));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "the old key stays published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_keys_survive_a_restart_and_are_stored_sealed() {
    init_logs();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    write_policies(dir.path());
    let (main, wiki, plain) = (
        Downstream::start().await,
        Downstream::start().await,
        Downstream::start().await,
    );
    let opts = options(dir.path(), &main, &wiki, &plain, "");
    let provider = Provider::start().await;
    let first = TestProxy::start_on(provider.clone(), dir.clone(), &opts).await;
    let (before, _) = jwks(&first).await;
    first.running.shutdown().await.unwrap();
    let second = TestProxy::start_on(provider, dir.clone(), &opts).await;
    let (after, _) = jwks(&second).await;
    assert_eq!(kids(&before), kids(&after), "same keys after a restart");
    assert_eq!(before, after);

    // What the store holds: public keys in the clear, and no 32 bytes
    // anywhere in the record (raw or base64url-decoded) are a private key
    // matching one.
    let db = rusqlite::Connection::open(dir.path().join("proxy.db")).unwrap();
    let mut statement = db
        .prepare("SELECT value FROM records WHERE ns = 'signing_key'")
        .unwrap();
    let values: Vec<Vec<u8>> = statement
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(values.len(), 2);
    for value in values {
        let record: Value = serde_json::from_slice(&value).unwrap();
        let mut fields: Vec<&str> = record
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, ["generation", "kid", "public", "sealed"]);
        let public = URL_SAFE_NO_PAD
            .decode(record["public"].as_str().unwrap())
            .unwrap();
        let sealed = URL_SAFE_NO_PAD
            .decode(record["sealed"].as_str().unwrap())
            .unwrap();
        for bytes in [value.as_slice(), sealed.as_slice()] {
            for window in bytes.windows(32) {
                let candidate = ed25519_dalek::SigningKey::from_bytes(window.try_into().unwrap());
                assert_ne!(
                    candidate.verifying_key().to_bytes().as_slice(),
                    public.as_slice(),
                    "the private key is stored in the clear"
                );
            }
        }
    }
}

// ------------------------------------------------------------ replicas

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_redis_agree_on_one_key_set() {
    let redis = common::redis_server::RedisServer::start();
    let provider = Provider::start().await;
    let downstream = Downstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_policies(dir.path());
    let mut replicas = Vec::new();
    // Both start at once: they race to create the keys.
    for name in ["a", "b"] {
        let port = free_port();
        let opts = Options {
            downstream_url: Some(downstream.mcp_url()),
            extra: format!(
                "[policy]\npath = \"{}\"\n",
                dir.path().join("assert.rhai").display()
            ),
            ..Default::default()
        };
        let toml = redis.store_in(
            &config_toml(
                port,
                &provider.issuer,
                &dir.path().join(format!("{name}.db")),
                &opts,
            ),
            "t:",
        );
        replicas.push(spawn_proxy_process(
            dir.path(),
            name,
            &toml,
            port,
            &provider,
        ));
    }
    for (_, endpoint) in &replicas {
        wait_ready(&endpoint.url).await;
    }
    let (a, b) = (&replicas[0].1, &replicas[1].1);
    let (set_a, _) = jwks(a).await;
    let (set_b, _) = jwks(b).await;
    assert_eq!(set_a, set_b, "the replicas publish the same keys");
    // An assertion signed by either verifies with the other's JWKS.
    let client = a.public_client().await;
    let token = a.tokens_for(&client, &[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    for (endpoint, other) in [(a, &set_b), (b, &set_a)] {
        assert_eq!(call(endpoint, "/mcp", &token).await, 200);
        let jwt = assertion_of(&downstream);
        verify(other, &jwt, &endpoint.url, &downstream.mcp_url(), true).unwrap();
    }
}
