//! The jwt-bearer grant for ID-JAGs (Enterprise-Managed Authorization):
//! pre-registered clients, every validation rule, the tokens issued, and
//! `jti` single use — here and across two replicas on Redis.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use common::downstream::Downstream;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

const RSA_KEY: &str = include_str!("fixtures/provider-rsa-key.pem");
const ED_KEY: &str = include_str!("fixtures/id-jag-ed25519-key.pem");
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const AGENT: &str = "agent";
const AGENT_SECRET: &str = "agent-secret-0123456789abcdef";
const OTHER: &str = "other-agent";
const OTHER_SECRET: &str = "other-secret-0123456789abcdef";
const BROWSER_ONLY: &str = "browser-only";

/// A PEM file's DER bytes.
fn der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn sha256_hex(s: &str) -> String {
    mcp_oauth_proxy::crypto::token_hash(s)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn jti() -> String {
    use rand::Rng;
    format!("jti-{:032x}", rand::thread_rng().gen::<u128>())
}

/// A second identity provider: its JWK set at `/jwks` (Ed25519 keys),
/// which a test may change, and how often it was fetched.
#[derive(Clone)]
struct KeyServer {
    issuer: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<Mutex<usize>>,
}

/// The public half of `ED_KEY` (`openssl pkey -pubout`), as a JWK.
fn ed_jwk(kid: &str) -> Value {
    json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": "CkqbRQkkEVcUKbFlaVgYfBw5rA41bPfF89kXluFaj4E",
        "use": "sig",
        "kid": kid,
    })
}

impl KeyServer {
    async fn start() -> KeyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let server = KeyServer {
            issuer,
            keys: Arc::new(Mutex::new(vec![ed_jwk("ed-1")])),
            fetches: Arc::new(Mutex::new(0)),
        };
        async fn jwks(State(s): State<KeyServer>) -> Json<Value> {
            *s.fetches.lock().unwrap() += 1;
            Json(json!({ "keys": s.keys.lock().unwrap().clone() }))
        }
        let app = Router::new()
            .route("/jwks", get(jwks))
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }
}

/// The `[[clients]]` and `[id_jag]` of these tests.
fn id_jag_toml(extra_issuer: &str, policy: Option<&std::path::Path>) -> String {
    let policy = policy
        .map(|p| format!("[policy]\npath = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        r#"
{policy}
[[clients]]
id = "{AGENT}"
name = "Agent"
secret_hash = "{agent}"
grant_types = ["{JWT_BEARER}"]

[[clients]]
id = "{OTHER}"
secret_hash = "{other}"

[[clients]]
id = "{BROWSER_ONLY}"
secret_hash = "{other}"
grant_types = ["authorization_code"]
redirect_uris = ["http://127.0.0.1:5555/cb"]

[id_jag]
jwks_min_refetch = "1s"
[[id_jag.issuers]]
issuer = "{extra_issuer}"
jwks_url = "{extra_issuer}/jwks"
"#,
        agent = sha256_hex(AGENT_SECRET),
        other = sha256_hex(OTHER_SECRET),
    )
}

struct Setup {
    proxy: TestProxy,
    keys: KeyServer,
    downstream: Downstream,
}

async fn setup() -> Setup {
    let keys = KeyServer::start().await;
    let downstream = Downstream::start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let policy = dir.path().join("policy.rhai");
    std::fs::write(
        &policy,
        r#"
fn login(user) {
    if user.email == "mallory@example.com" { return deny(403, "mallory is not let in"); }
    allow()
}
fn authorize(user, request) {
    allow(#{ "X-User-Email": user.email, "X-User-Sub": user.sub, "X-Client": user.client_id })
}
"#,
    )
    .unwrap();
    let opts = Options {
        downstream_url: Some(downstream.mcp_url()),
        extra: id_jag_toml(&keys.issuer, Some(&policy)),
        ..Default::default()
    };
    let proxy = TestProxy::start_on(Provider::start().await, dir, &opts).await;
    Setup {
        proxy,
        keys,
        downstream,
    }
}

/// The claims a good ID-JAG from `iss` for the agent carries.
fn claims(proxy: &Endpoint, iss: &str) -> Value {
    json!({
        "iss": iss,
        "sub": "alice-sub-123",
        "email": "alice@example.com",
        "name": "Alice Example",
        "aud": proxy.url,
        "client_id": AGENT,
        "jti": jti(),
        "iat": now(),
        "exp": now() + 300,
        "resource": format!("{}/mcp", proxy.url),
        "scope": "mcp:tools",
    })
}

fn header(alg: Algorithm, kid: &str, typ: &str) -> Header {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    h.typ = Some(typ.into());
    h
}

/// Signed by the upstream provider's key (RS256, kid test-key).
fn rs256(claims: &Value) -> String {
    let key = EncodingKey::from_rsa_der(&der(RSA_KEY));
    jsonwebtoken::encode(
        &header(Algorithm::RS256, "test-key", "oauth-id-jag+jwt"),
        claims,
        &key,
    )
    .unwrap()
}

/// Signed by the second provider's Ed25519 key.
fn eddsa(claims: &Value, kid: &str) -> String {
    let key = EncodingKey::from_ed_der(&der(ED_KEY));
    jsonwebtoken::encode(
        &header(Algorithm::EdDSA, kid, "oauth-id-jag+jwt"),
        claims,
        &key,
    )
    .unwrap()
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn present(
    proxy: &Endpoint,
    client: (&str, &str),
    assertion: &str,
    extra: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut form = vec![("grant_type", JWT_BEARER), ("assertion", assertion)];
    form.extend_from_slice(extra);
    let r = proxy
        .http
        .post(format!("{}/token", proxy.url))
        .basic_auth(client.0, Some(client.1))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn agent(proxy: &Endpoint, assertion: &str) -> (StatusCode, Value) {
    present(proxy, (AGENT, AGENT_SECRET), assertion, &[]).await
}

fn assert_refused(result: (StatusCode, Value), error: &str, why: &str) {
    let (status, body) = result;
    assert_eq!(body["error"], error, "{why}: {body}");
    assert!(
        status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "{why}: {status}"
    );
    assert!(body.get("access_token").is_none(), "{why}: {body}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.contains(why),
        "expected `{why}` in `{description}`"
    );
}

async fn mcp(proxy: &Endpoint, token: &str) -> u16 {
    proxy
        .http
        .post(format!("{}/mcp", proxy.url))
        .bearer_auth(token)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn an_id_jag_of_the_upstream_provider_gets_tokens_like_a_browser_sign_in() {
    let s = setup().await;
    let p = &s.proxy;
    let metadata: Value = p
        .http
        .get(format!("{}/.well-known/oauth-authorization-server", p.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(metadata["grant_types_supported"]
        .as_array()
        .unwrap()
        .contains(&json!(JWT_BEARER)));
    assert_eq!(
        metadata["authorization_grant_profiles_supported"],
        json!(["urn:ietf:params:oauth:grant-profile:id-jag"])
    );

    let (status, body) = agent(p, &rs256(&claims(p, &p.provider.issuer))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "mcp:tools");
    // Draft §5.2: no refresh token; the provider mints the next ID-JAG.
    assert!(body.get("refresh_token").is_none(), "{body}");
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(mcp(p, access).await, 200);
    let seen = s.downstream.last();
    assert_eq!(seen.headers["x-user-email"], "alice@example.com");
    assert_eq!(seen.headers["x-user-sub"], "alice-sub-123");
    assert_eq!(seen.headers["x-client"], AGENT);
    // Bound to the route the assertion named; revocable like any token.
    let r = p
        .http
        .post(format!("{}/revoke", p.url))
        .basic_auth(AGENT, Some(AGENT_SECRET))
        .form(&[("token", access)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!p.access_token_valid(access).await);
    assert_eq!(mcp(p, access).await, 401);

    // client_secret_post works as well, and no resource means the root.
    let mut c = claims(p, &p.provider.issuer);
    c.as_object_mut().unwrap().remove("resource");
    let r = p
        .http
        .post(format!("{}/token", p.url))
        .form(&[
            ("grant_type", JWT_BEARER),
            ("assertion", &rs256(&c)),
            ("client_id", AGENT),
            ("client_secret", AGENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_listed_issuers_eddsa_assertion_is_accepted_and_a_new_key_is_fetched_once() {
    let s = setup().await;
    let p = &s.proxy;
    let (status, body) = agent(p, &eddsa(&claims(p, &s.keys.issuer), "ed-1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(*s.keys.fetches.lock().unwrap(), 1);
    // The issuer rotates: an unknown kid fetches the set again (once the
    // least time between fetches, 1s here, has passed).
    s.keys.keys.lock().unwrap().push(ed_jwk("ed-2"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = agent(p, &eddsa(&claims(p, &s.keys.issuer), "ed-2")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(*s.keys.fetches.lock().unwrap(), 2);
    // Unknown kids do not make the proxy hammer the issuer.
    for _ in 0..5 {
        assert_refused(
            agent(p, &eddsa(&claims(p, &s.keys.issuer), "no-such-kid")).await,
            "invalid_grant",
            "no key `no-such-kid`",
        );
    }
    assert!(*s.keys.fetches.lock().unwrap() <= 3);
}

#[tokio::test]
async fn each_validation_rule_refuses_with_the_right_error_and_no_token() {
    let s = setup().await;
    let p = &s.proxy;
    let up = p.provider.issuer.clone();
    let with = |change: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = claims(p, &up);
        change(c.as_object_mut().unwrap());
        c
    };

    // Header: typ, alg none, HMAC, no signature.
    let c = claims(p, &up);
    let key = EncodingKey::from_rsa_der(&der(RSA_KEY));
    let jwt_typ =
        jsonwebtoken::encode(&header(Algorithm::RS256, "test-key", "JWT"), &c, &key).unwrap();
    assert_refused(agent(p, &jwt_typ).await, "invalid_grant", "typ");
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "oauth-id-jag+jwt"})),
        b64(&c)
    );
    assert_refused(agent(p, &none).await, "invalid_grant", "unsigned");
    let hmac = jsonwebtoken::encode(
        &header(Algorithm::HS256, "test-key", "oauth-id-jag+jwt"),
        &c,
        &EncodingKey::from_secret(b"the-public-key-as-a-secret"),
    )
    .unwrap();
    assert_refused(agent(p, &hmac).await, "invalid_grant", "alg `HS256`");
    let stripped = rs256(&c).rsplit_once('.').unwrap().0.to_string() + ".";
    assert_refused(agent(p, &stripped).await, "invalid_grant", "unsigned");

    // Signature: a foreign key under the provider's kid; a tampered payload.
    let foreign = eddsa(&claims(p, &up), "test-key");
    assert_refused(agent(p, &foreign).await, "invalid_grant", "does not verify");
    let good = rs256(&claims(p, &up));
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(&with(&|c| {
            c.insert("sub".into(), json!("admin"));
        })),
        parts[2]
    );
    assert_refused(agent(p, &forged).await, "invalid_grant", "signature");

    // Issuer not trusted (even with a key it could fetch).
    assert_refused(
        agent(
            p,
            &rs256(&with(&|c| {
                c.insert("iss".into(), json!("https://evil.example.com"));
            })),
        )
        .await,
        "invalid_grant",
        "issuer is not trusted",
    );
    // Audience, client, times, required claims.
    for (change, why) in [
        (
            Box::new(|c: &mut serde_json::Map<String, Value>| {
                c.insert("aud".into(), json!("https://other-as.example.com"));
            }) as Box<dyn Fn(&mut _)>,
            "aud",
        ),
        (
            Box::new(|c: &mut serde_json::Map<String, Value>| {
                c.insert("client_id".into(), json!(OTHER));
            }),
            "another client",
        ),
        (
            Box::new(|c: &mut serde_json::Map<String, Value>| {
                c.insert("exp".into(), json!(now() - 120));
                c.insert("iat".into(), json!(now() - 400));
            }),
            "expired",
        ),
        (
            Box::new(|c: &mut serde_json::Map<String, Value>| {
                c.insert("iat".into(), json!(now() + 600));
                c.insert("exp".into(), json!(now() + 900));
            }),
            "future",
        ),
        (
            Box::new(|c: &mut serde_json::Map<String, Value>| {
                c.insert("exp".into(), json!(now() + 7200));
            }),
            "lives longer",
        ),
        (
            Box::new(|c: &mut serde_json::Map<String, Value>| {
                c.remove("jti");
            }),
            "no jti",
        ),
        (
            Box::new(|c: &mut serde_json::Map<String, Value>| {
                c.remove("sub");
            }),
            "no sub",
        ),
        (
            Box::new(|c: &mut serde_json::Map<String, Value>| {
                c.remove("client_id");
            }),
            "no client_id",
        ),
        (
            Box::new(|c: &mut serde_json::Map<String, Value>| {
                c.remove("exp");
            }),
            "no exp",
        ),
    ] {
        assert_refused(
            agent(p, &rs256(&with(&*change))).await,
            "invalid_grant",
            why,
        );
    }
    // Resource: one of ours, and the one the assertion names.
    assert_refused(
        agent(
            p,
            &rs256(&with(&|c| {
                c.insert(
                    "resource".into(),
                    json!("https://elsewhere.example.com/mcp"),
                );
            })),
        )
        .await,
        "invalid_target",
        "not served here",
    );
    let r = present(
        p,
        (AGENT, AGENT_SECRET),
        &rs256(&claims(p, &up)),
        &[("resource", &p.url)],
    )
    .await;
    assert_refused(r, "invalid_target", "not one the assertion was issued for");
    // Scope: narrowed, never widened.
    let r = present(
        p,
        (AGENT, AGENT_SECRET),
        &rs256(&claims(p, &up)),
        &[("scope", "mcp:tools admin")],
    )
    .await;
    assert_refused(r, "invalid_scope", "admin");
    let (status, body) = present(
        p,
        (AGENT, AGENT_SECRET),
        &rs256(&with(&|c| {
            c.insert("scope".into(), json!("mcp:tools mcp:admin"));
        })),
        &[("scope", "mcp:tools")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "mcp:tools");

    // Clients: the wrong client for this assertion, a wrong secret, a client
    // not allowed the grant, an unknown one.
    let c = claims(p, &up);
    assert_refused(
        present(p, (OTHER, OTHER_SECRET), &rs256(&c), &[]).await,
        "invalid_grant",
        "another client",
    );
    assert_refused(
        present(p, (AGENT, "wrong-secret"), &rs256(&c), &[]).await,
        "invalid_client",
        "",
    );
    assert_refused(
        present(p, (BROWSER_ONLY, OTHER_SECRET), &rs256(&c), &[]).await,
        "unauthorized_client",
        "",
    );
    assert_refused(
        present(p, ("nobody", "x"), &rs256(&c), &[]).await,
        "invalid_client",
        "",
    );

    // The person the login policy refuses.
    let mallory = with(&|c| {
        c.insert("email".into(), json!("mallory@example.com"));
    });
    assert_refused(
        agent(p, &rs256(&mallory)).await,
        "invalid_grant",
        "mallory is not let in",
    );

    // Replay: the same assertion twice.
    let once = rs256(&claims(p, &up));
    assert_eq!(agent(p, &once).await.0, 200);
    assert_refused(agent(p, &once).await, "invalid_grant", "already used");

    // The refusals are logged with their reason, never the assertion.
    let logs = captured_logs();
    assert!(logs.contains("ID-JAG refused"), "{logs}");
    assert!(!logs.contains(&once), "the assertion was logged");
}

// ---------------------------------------------------------------- replicas

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_is_spent_on_every_replica_sharing_redis() {
    let redis = common::redis_server::RedisServer::start();
    let provider = Provider::start().await;
    let keys = KeyServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Both replicas answer as one deployment: one public URL (a's port for
    // both, as behind a load balancer), each listening on its own port.
    let public_port = free_port();
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let port = if name == "a" {
            public_port
        } else {
            free_port()
        };
        let opts = Options {
            extra: id_jag_toml(&keys.issuer, None),
            ..Default::default()
        };
        let toml = config_toml(
            port,
            &provider.issuer,
            &dir.path().join(format!("{name}.db")),
            &opts,
        )
        .replace(
            &format!("public_url = \"http://127.0.0.1:{port}\""),
            &format!("public_url = \"http://127.0.0.1:{public_port}\""),
        );
        let toml = redis.store_in(&toml, "idjag:");
        replicas.push(start_proxy_process(dir.path(), name, &toml, port, &provider).await);
    }
    let (a, b) = (&replicas[0].1, &replicas[1].1);
    let public = Endpoint {
        url: format!("http://127.0.0.1:{public_port}"),
        provider: provider.clone(),
        http: http_client(),
    };
    let assertion = eddsa(&claims(&public, &keys.issuer), "ed-1");
    let (status, body) = agent(a, &assertion).await;
    assert_eq!(status, 200, "{body}");
    assert_refused(agent(b, &assertion).await, "invalid_grant", "already used");
    // Racing replicas: exactly one wins.
    let assertion = rs256(&claims(&public, &provider.issuer));
    let (ra, rb) = tokio::join!(agent(a, &assertion), agent(b, &assertion));
    let wins = [ra.0, rb.0]
        .iter()
        .filter(|s| **s == StatusCode::OK)
        .count();
    assert_eq!(wins, 1, "{ra:?} {rb:?}");
}

// ---------------------------------------------------------------- clients CLI

#[tokio::test]
async fn the_clients_command_lists_configured_clients_and_will_not_delete_them() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        extra: id_jag_toml("https://idp2.example.com", None),
        ..Default::default()
    };
    let config = dir.path().join("proxy.toml");
    // The commands work on an existing store.
    mcp_oauth_proxy::store::sqlite::SqliteStore::open(&dir.path().join("proxy.db")).unwrap();
    std::fs::write(
        &config,
        config_toml(
            free_port(),
            "https://idp.example.com",
            &dir.path().join("proxy.db"),
            &opts,
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mcp-oauth-proxy"))
            .args(&args[..2])
            .arg("--config")
            .arg(&config)
            .args(&args[2..])
            .env_remove("MCP_PROXY_CONFIG")
            .output()
            .unwrap()
    };
    let out = run(&["clients", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let agent = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["client_id"] == AGENT)
        .unwrap();
    assert_eq!(agent["source"], "configured");
    assert_eq!(agent["client_name"], "Agent");
    assert_eq!(agent["grant_types"], json!([JWT_BEARER]));
    assert!(agent.get("client_secret_hash").is_none());
    assert_eq!(rows.as_array().unwrap().len(), 3);
    let table = String::from_utf8(run(&["clients", "list"]).stdout).unwrap();
    assert!(table.contains("(configured)"), "{table}");
    let out = run(&["clients", "delete", AGENT]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[[clients]]"));
    // A bad entry is refused at start, naming its key.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace(&sha256_hex(AGENT_SECRET), "not-a-hash"),
    )
    .unwrap();
    let out = run(&["clients", "list"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("clients[0].secret_hash"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_configured_client_may_sign_people_in_through_the_browser() {
    let s = setup().await;
    let p = &s.proxy;
    let client = Client {
        client_id: BROWSER_ONLY.into(),
        client_secret: Some(OTHER_SECRET.into()),
        redirect_uri: "http://127.0.0.1:5555/cb".into(),
    };
    let tokens = p.tokens_for(&client, &[]).await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(mcp(p, access).await, 200);
    assert_eq!(s.downstream.last().headers["x-client"], BROWSER_ONLY);
    // Allowed authorization_code only: no refresh token.
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    // And it cannot present ID-JAGs.
    let c = claims(p, &p.provider.issuer);
    assert_refused(
        present(p, (BROWSER_ONLY, OTHER_SECRET), &rs256(&c), &[]).await,
        "unauthorized_client",
        "jwt-bearer",
    );
}
