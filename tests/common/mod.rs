//! Test harness: an in-process OpenID provider double, the proxy on a random
//! port, and a tiny browser (cookies, no automatic redirects).
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use mcp_oauth_proxy::config::Config;
use mcp_oauth_proxy::server::{self, AppState, Running};
use mcp_oauth_proxy::store::sqlite::SqliteStore;
use mcp_oauth_proxy::store::SharedStore;
use openidconnect::core::{CoreJwsSigningAlgorithm, CoreRsaPrivateSigningKey};
use openidconnect::{JsonWebKeyId, PrivateSigningKey};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

pub const ENCRYPTION_KEY: &str = "6d6370206f617574682070726f787920746573742d6b65792d33322062797465";
pub const UPSTREAM_CLIENT_ID: &str = "proxy-client";
pub const UPSTREAM_CLIENT_SECRET: &str = "upstream-client-secret-value";
const RSA_KEY: &str = include_str!("../fixtures/provider-rsa-key.pem");

// ---------------------------------------------------------------- logs

/// Everything the proxy logged in this test binary, at debug level.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.get_or_init(Default::default).lock().unwrap()).into_owned()
}

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let buffer = LOGS.get_or_init(Default::default).clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter("debug,hyper=info,h2=info,reqwest=info,rustls=info")
            .with_writer(move || LogWriter(buffer.clone()))
            .try_init();
    });
}

// ---------------------------------------------------------------- provider double

/// How the provider double misbehaves, to test the proxy's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tamper {
    #[default]
    None,
    WrongNonce,
    WrongAudience,
    WrongIssuer,
    Expired,
    BadSignature,
    TokenEndpointError,
    NoIdToken,
    /// Refresh requests get `invalid_grant`.
    RefuseRefresh,
    /// Refresh requests get a 500.
    BrokenRefresh,
    /// Discovery names a plain-http token endpoint on a non-loopback host.
    PlainHttpTokenEndpoint,
}

#[derive(Default)]
struct ProviderState {
    issuer: String,
    user: Map<String, Value>,
    tamper: Tamper,
    codes: HashMap<String, IssuedCode>,
    /// Every upstream token handed out, for leak checks.
    issued_tokens: Vec<String>,
    /// Live refresh tokens (rotated on use).
    refresh_tokens: std::collections::HashSet<String>,
    /// `expires_in` of access tokens.
    access_ttl: i64,
    /// Issue no refresh token at login (as Google without offline access,
    /// or Cloudflare Access, do).
    no_refresh_token: bool,
    refreshes: usize,
    authorize_params: Vec<HashMap<String, String>>,
}

struct IssuedCode {
    nonce: Option<String>,
    challenge: Option<String>,
    redirect_uri: String,
}

#[derive(Clone)]
pub struct Provider {
    pub issuer: String,
    state: Arc<Mutex<ProviderState>>,
}

pub fn bob() -> Value {
    json!({
        "sub": "bob-sub-456",
        "email": "bob@example.com",
        "email_verified": true,
        "name": "Bob Example",
        "groups": ["sales"],
    })
}

pub fn alice() -> Map<String, Value> {
    json!({
        "sub": "alice-sub-123",
        "email": "alice@example.com",
        "email_verified": true,
        "name": "Alice Example",
        "groups": ["engineering", "admins"],
    })
    .as_object()
    .unwrap()
    .clone()
}

impl Provider {
    pub async fn start() -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let state = Arc::new(Mutex::new(ProviderState {
            issuer: issuer.clone(),
            user: alice(),
            access_ttl: 3600,
            ..Default::default()
        }));
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(provider_authorize))
            .route("/token", post(provider_token))
            .route("/userinfo", get(userinfo))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Provider { issuer, state }
    }

    pub fn set_user(&self, claims: Value) {
        self.state.lock().unwrap().user = claims.as_object().unwrap().clone();
    }

    pub fn tamper(&self, tamper: Tamper) {
        self.state.lock().unwrap().tamper = tamper;
    }

    pub fn set_access_ttl(&self, seconds: i64) {
        self.state.lock().unwrap().access_ttl = seconds;
    }

    /// Whether logins get a provider refresh token (they do by default).
    pub fn issue_refresh_tokens(&self, issue: bool) {
        self.state.lock().unwrap().no_refresh_token = !issue;
    }

    /// How many refresh_token grants the provider answered successfully.
    pub fn refreshes(&self) -> usize {
        self.state.lock().unwrap().refreshes
    }

    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.lock().unwrap().issued_tokens.clone()
    }

    pub fn last_authorize_params(&self) -> HashMap<String, String> {
        self.state
            .lock()
            .unwrap()
            .authorize_params
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

type PState = State<Arc<Mutex<ProviderState>>>;

async fn discovery(State(s): PState) -> Json<Value> {
    let (issuer, tamper) = {
        let st = s.lock().unwrap();
        (st.issuer.clone(), st.tamper)
    };
    let token_endpoint = if tamper == Tamper::PlainHttpTokenEndpoint {
        "http://idp.example.com/token".to_string()
    } else {
        format!("{issuer}/token")
    };
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": token_endpoint,
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

fn signing_key() -> CoreRsaPrivateSigningKey {
    CoreRsaPrivateSigningKey::from_pem(RSA_KEY, Some(JsonWebKeyId::new("test-key".into()))).unwrap()
}

async fn jwks() -> Json<Value> {
    let jwk = serde_json::to_value(signing_key().as_verification_key()).unwrap();
    Json(json!({ "keys": [jwk] }))
}

async fn provider_authorize(
    State(s): PState,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut st = s.lock().unwrap();
    st.authorize_params.push(q.clone());
    assert_eq!(
        q.get("client_id").map(String::as_str),
        Some(UPSTREAM_CLIENT_ID)
    );
    assert_eq!(q.get("response_type").map(String::as_str), Some("code"));
    assert_eq!(
        q.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    let code = format!("upstream-code-{}", rand_hex());
    st.issued_tokens.push(code.clone());
    let redirect_uri = q.get("redirect_uri").cloned().unwrap_or_default();
    st.codes.insert(
        code.clone(),
        IssuedCode {
            nonce: q.get("nonce").cloned(),
            challenge: q.get("code_challenge").cloned(),
            redirect_uri: redirect_uri.clone(),
        },
    );
    let mut url = url::Url::parse(&redirect_uri).unwrap();
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair(
            "state",
            q.get("state").map(String::as_str).unwrap_or_default(),
        );
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}

fn rand_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

async fn provider_token(
    State(s): PState,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .map(|b| String::from_utf8(b).unwrap());
    let expected = format!("{UPSTREAM_CLIENT_ID}:{UPSTREAM_CLIENT_SECRET}");
    if basic.as_deref() != Some(expected.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let mut st = s.lock().unwrap();
    if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
        return provider_refresh(&mut st, &form);
    }
    if st.tamper == Tamper::TokenEndpointError {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    }
    let Some(issued) = form.get("code").and_then(|c| st.codes.remove(c)) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if Some(computed) != issued.challenge || form.get("redirect_uri") != Some(&issued.redirect_uri)
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "pkce"})),
        )
            .into_response();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut claims = st.user.clone();
    claims.insert("iss".into(), json!(st.issuer));
    claims.insert("aud".into(), json!(UPSTREAM_CLIENT_ID));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + 300));
    claims.insert("nonce".into(), json!(issued.nonce));
    match st.tamper {
        Tamper::WrongNonce => {
            claims.insert("nonce".into(), json!("not-the-nonce"));
        }
        Tamper::WrongAudience => {
            claims.insert("aud".into(), json!("someone-else"));
        }
        Tamper::WrongIssuer => {
            claims.insert("iss".into(), json!("https://evil.example"));
        }
        Tamper::Expired => {
            claims.insert("exp".into(), json!(now - 600));
            claims.insert("iat".into(), json!(now - 1200));
        }
        _ => {}
    }
    let mut id_token = sign_jwt(&Value::Object(claims));
    if st.tamper == Tamper::BadSignature {
        id_token = tamper_signature(&id_token);
    }
    let access_token = format!("upstream-access-{}", rand_hex());
    let refresh_token = format!("upstream-refresh-{}", rand_hex());
    st.issued_tokens.extend([
        access_token.clone(),
        refresh_token.clone(),
        id_token.clone(),
    ]);
    st.refresh_tokens.insert(refresh_token.clone());
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": st.access_ttl,
        "refresh_token": refresh_token,
        "id_token": id_token,
    });
    if st.tamper == Tamper::NoIdToken {
        body.as_object_mut().unwrap().remove("id_token");
    }
    if st.no_refresh_token {
        body.as_object_mut().unwrap().remove("refresh_token");
    }
    Json(body).into_response()
}

/// The refresh_token grant: rotates the refresh token, re-issues an
/// id_token with the user's current claims (no nonce, as on a refresh).
fn provider_refresh(st: &mut ProviderState, form: &HashMap<String, String>) -> Response {
    match st.tamper {
        Tamper::RefuseRefresh => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid_grant"})),
            )
                .into_response()
        }
        Tamper::BrokenRefresh => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
        }
        _ => {}
    }
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    if !st.refresh_tokens.remove(&presented) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut claims = st.user.clone();
    claims.insert("iss".into(), json!(st.issuer));
    claims.insert("aud".into(), json!(UPSTREAM_CLIENT_ID));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + 300));
    let id_token = sign_jwt(&Value::Object(claims));
    let access_token = format!("upstream-access-{}", rand_hex());
    let refresh_token = format!("upstream-refresh-{}", rand_hex());
    st.issued_tokens.extend([
        access_token.clone(),
        refresh_token.clone(),
        id_token.clone(),
    ]);
    st.refresh_tokens.insert(refresh_token.clone());
    st.refreshes += 1;
    Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": st.access_ttl,
        "refresh_token": refresh_token,
        "id_token": id_token,
    }))
    .into_response()
}

async fn userinfo(State(s): PState) -> Json<Value> {
    let st = s.lock().unwrap();
    let mut info = json!({ "sub": st.user["sub"], "department": "R&D" });
    info["email"] = st.user["email"].clone();
    Json(info)
}

pub fn sign_jwt(claims: &Value) -> String {
    let header = json!({"alg": "RS256", "kid": "test-key", "typ": "JWT"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = signing_key()
        .sign(
            &CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            input.as_bytes(),
        )
        .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn tamper_signature(jwt: &str) -> String {
    let (rest, sig) = jwt.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    bytes[10] ^= 0xff;
    format!("{rest}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub mod downstream;
pub mod raw_http;
pub mod redis_server;

// ---------------------------------------------------------------- proxy processes

/// The proxy binary as a child process, killed (SIGKILL) when dropped, also
/// when a test fails half-way.
pub struct ProxyProcess(pub std::process::Child);

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `mcp-oauth-proxy serve --config <config>`.
pub fn spawn_proxy(config: &std::path::Path) -> ProxyProcess {
    ProxyProcess(
        std::process::Command::new(env!("CARGO_BIN_EXE_mcp-oauth-proxy"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("the proxy binary starts"),
    )
}

/// The proxy binary started with `toml` (written to `<dir>/<name>.toml`)
/// listening on `port`, and an `Endpoint` for it, once it answers.
pub async fn start_proxy_process(
    dir: &std::path::Path,
    name: &str,
    toml: &str,
    port: u16,
    provider: &Provider,
) -> (ProxyProcess, Endpoint) {
    let started = spawn_proxy_process(dir, name, toml, port, provider);
    wait_ready(&started.1.url).await;
    started
}

/// As `start_proxy_process`, without waiting for it to answer (to start
/// several at once).
pub fn spawn_proxy_process(
    dir: &std::path::Path,
    name: &str,
    toml: &str,
    port: u16,
    provider: &Provider,
) -> (ProxyProcess, Endpoint) {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, toml).unwrap();
    let process = spawn_proxy(&config);
    let endpoint = Endpoint {
        url: format!("http://127.0.0.1:{port}"),
        provider: provider.clone(),
        http: http_client(),
    };
    (process, endpoint)
}

/// Waits until the proxy at `url` answers its metadata.
pub async fn wait_ready(url: &str) {
    let http = http_client();
    for _ in 0..100 {
        if let Ok(r) = http
            .get(format!("{url}/.well-known/oauth-authorization-server"))
            .send()
            .await
        {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the proxy did not become ready");
}

pub mod ports;
pub use ports::free_port;

// ---------------------------------------------------------------- proxy

/// A proxy reached over HTTP (in process or a child process) and its
/// provider: the client-side helpers.
pub struct Endpoint {
    pub url: String,
    pub provider: Provider,
    pub http: reqwest::Client,
}

/// A proxy running in this process.
pub struct TestProxy {
    pub endpoint: Endpoint,
    pub running: Running,
    pub dir: Arc<tempfile::TempDir>,
}

impl std::ops::Deref for TestProxy {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// Knobs of a test proxy's configuration.
#[derive(Default, Clone)]
pub struct Options {
    /// Lines inside [server].
    pub server_extra: String,
    /// Lines inside [upstream].
    pub upstream_extra: String,
    /// Lines inside [downstream] (besides url).
    pub downstream_extra: String,
    /// Tables appended at the end.
    pub extra: String,
    pub downstream_url: Option<String>,
}

pub fn config_toml(port: u16, issuer: &str, db: &std::path::Path, opts: &Options) -> String {
    let downstream_url = opts
        .downstream_url
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:9/mcp".into());
    let (server_extra, upstream_extra, downstream_extra, extra) = (
        &opts.server_extra,
        &opts.upstream_extra,
        &opts.downstream_extra,
        &opts.extra,
    );
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
shutdown_grace = "1s"
{server_extra}
[upstream]
issuer = "{issuer}"
client_id = "{UPSTREAM_CLIENT_ID}"
client_secret = "{UPSTREAM_CLIENT_SECRET}"
scopes = ["openid", "email", "profile", "groups"]
{upstream_extra}
[downstream]
url = "{downstream_url}"
{downstream_extra}
[store]
path = "{db}"
[secrets]
encryption_key = "{ENCRYPTION_KEY}"
[registration]
allowed_schemes = ["cursor"]
{extra}
"#,
        db = db.display()
    )
}

pub fn http_client() -> reqwest::Client {
    reqwest::ClientBuilder::new()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

impl TestProxy {
    pub async fn start() -> TestProxy {
        Self::start_with("").await
    }

    /// Starts the proxy; `extra` is appended to the TOML configuration.
    pub async fn start_with(extra: &str) -> TestProxy {
        init_logs();
        let provider = Provider::start().await;
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let opts = Options {
            extra: extra.to_string(),
            ..Default::default()
        };
        Self::start_on(provider, dir, &opts).await
    }

    pub async fn start_with_options(opts: &Options) -> TestProxy {
        init_logs();
        let provider = Provider::start().await;
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_on(provider, dir, opts).await
    }

    pub async fn start_on(
        provider: Provider,
        dir: Arc<tempfile::TempDir>,
        opts: &Options,
    ) -> TestProxy {
        init_logs();
        // A port found free may be taken before the proxy binds it (another
        // test's outgoing connection gets an ephemeral port from the same
        // range): then another port.
        let mut attempts = 0;
        let (port, running) = loop {
            let port = free_port();
            let toml = config_toml(port, &provider.issuer, &dir.path().join("proxy.db"), opts);
            let config: Config = figment::Figment::from(figment::providers::Serialized::defaults(
                toml::from_str::<toml::Value>(&toml).unwrap(),
            ))
            .extract()
            .unwrap();
            let settings = config.validate().unwrap();
            let store: SharedStore =
                Arc::new(SqliteStore::open(&settings.config.store.path).unwrap());
            let app = AppState::new(settings, store).unwrap();
            match server::start(app).await {
                Ok(running) => break (port, running),
                Err(server::StartError::Listen { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse && attempts < 5 =>
                {
                    attempts += 1;
                }
                Err(e) => panic!("the proxy did not start: {e}"),
            }
        };
        TestProxy {
            endpoint: Endpoint {
                url: format!("http://127.0.0.1:{port}"),
                provider,
                http: http_client(),
            },
            running,
            dir,
        }
    }

    pub fn app(&self) -> &AppState {
        &self.running.app
    }

    pub async fn access_token_valid(&self, token: &str) -> bool {
        self.app().grants.validate_access_token(token).await.is_ok()
    }
}

impl Endpoint {
    pub async fn register(&self, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/register", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Registers a public client with one loopback redirect URI.
    pub async fn public_client(&self) -> Client {
        let redirect_uri = "http://127.0.0.1:33418/callback".to_string();
        let (status, body) = self
            .register(json!({
                "client_name": "Test MCP Client",
                "redirect_uris": [redirect_uri],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
            }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        Client {
            client_id: body["client_id"].as_str().unwrap().to_string(),
            client_secret: None,
            redirect_uri,
        }
    }

    pub async fn confidential_client(&self, method: &str) -> Client {
        let redirect_uri = "https://app.example.com/oauth/callback".to_string();
        let (status, body) = self
            .register(json!({
                "client_name": "Confidential",
                "redirect_uris": [redirect_uri],
                "token_endpoint_auth_method": method,
            }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        Client {
            client_id: body["client_id"].as_str().unwrap().to_string(),
            client_secret: Some(body["client_secret"].as_str().unwrap().to_string()),
            redirect_uri,
        }
    }

    pub fn authorize_url(
        &self,
        client: &Client,
        pkce: &Pkce,
        state: &str,
        extra: &[(&str, &str)],
    ) -> String {
        let mut url = url::Url::parse(&format!("{}/authorize", self.url)).unwrap();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &client.client_id)
                .append_pair("redirect_uri", &client.redirect_uri)
                .append_pair("state", state)
                .append_pair("code_challenge", &pkce.challenge)
                .append_pair("code_challenge_method", "S256");
            for (k, v) in extra {
                q.append_pair(k, v);
            }
        }
        url.to_string()
    }

    /// The whole browser leg: authorize → consent approve → provider →
    /// callback. Returns the client's redirect query.
    pub async fn login(
        &self,
        browser: &mut Browser,
        client: &Client,
        pkce: &Pkce,
        extra: &[(&str, &str)],
    ) -> HashMap<String, String> {
        let url = self.authorize_url(client, pkce, "client-state-1", extra);
        let mut r = browser.get(&url).await;
        if r.status == StatusCode::OK {
            let form = r.form_fields();
            r = browser
                .post_form(
                    &format!("{}/consent", self.url),
                    &with_decision(form, "approve"),
                )
                .await;
        }
        assert_eq!(
            r.status,
            StatusCode::FOUND,
            "expected a redirect to the provider: {}",
            r.body
        );
        let to_provider = r.location();
        assert!(
            to_provider.starts_with(&self.provider.issuer),
            "{to_provider}"
        );
        let r = browser.get(&to_provider).await;
        let to_callback = r.location();
        assert!(
            to_callback.starts_with(&format!("{}/callback", self.url)),
            "{to_callback}"
        );
        let r = browser.get(&to_callback).await;
        assert_eq!(r.status, StatusCode::FOUND, "callback failed: {}", r.body);
        let to_client = r.location();
        assert!(to_client.starts_with(&client.redirect_uri), "{to_client}");
        query_of(&to_client)
    }

    pub async fn token(
        &self,
        client: &Client,
        params: &[(&str, &str)],
    ) -> (StatusCode, Value, HeaderMap) {
        let mut form: Vec<(&str, &str)> = params.to_vec();
        let mut request = self.http.post(format!("{}/token", self.url));
        match &client.client_secret {
            Some(secret) => request = request.basic_auth(&client.client_id, Some(secret)),
            None => form.push(("client_id", &client.client_id)),
        }
        let r = request.form(&form).send().await.unwrap();
        let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
        let headers = convert_headers(r.headers());
        (status, r.json().await.unwrap_or(Value::Null), headers)
    }

    /// Login and code exchange in one step; returns the token response.
    pub async fn tokens_for(&self, client: &Client, extra: &[(&str, &str)]) -> Value {
        let pkce = Pkce::new();
        let mut browser = Browser::new();
        let q = self.login(&mut browser, client, &pkce, extra).await;
        let (status, body, _) = self
            .token(
                client,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &q["code"]),
                    ("redirect_uri", &client.redirect_uri),
                    ("code_verifier", &pkce.verifier),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// The provider's next sign-in is `claims`; signs in and returns the
    /// access token.
    pub async fn access_token_as(&self, client: &Client, claims: Value) -> String {
        self.provider.set_user(claims);
        let tokens = self.tokens_for(client, &[]).await;
        tokens["access_token"].as_str().unwrap().to_string()
    }

    pub async fn refresh(&self, client: &Client, refresh_token: &str) -> (StatusCode, Value) {
        let (s, b, _) = self
            .token(
                client,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                ],
            )
            .await;
        (s, b)
    }
}

pub fn convert_headers(h: &reqwest::header::HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in h {
        out.append(
            axum::http::HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
            axum::http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
        );
    }
    out
}

pub fn with_decision(mut form: Vec<(String, String)>, decision: &str) -> Vec<(String, String)> {
    form.push(("decision".into(), decision.into()));
    form
}

pub fn query_of(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

#[derive(Debug, Clone)]
pub struct Client {
    pub client_id: String,
    pub client_secret: Option<String>,
    pub redirect_uri: String,
}

pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        let verifier = format!("{}{}", rand_hex(), rand_hex());
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Pkce {
            verifier,
            challenge,
        }
    }
}

// ---------------------------------------------------------------- browser

pub struct Browser {
    http: reqwest::Client,
    pub cookies: HashMap<String, String>,
    pub set_cookie_headers: Vec<String>,
}

pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> String {
        self.headers
            .get(header::LOCATION)
            .unwrap_or_else(|| panic!("no Location (status {}): {}", self.status, self.body))
            .to_str()
            .unwrap()
            .to_string()
    }

    /// The hidden inputs of the page's one form.
    pub fn form_fields(&self) -> Vec<(String, String)> {
        assert_eq!(self.body.matches("<form").count(), 1, "{}", self.body);
        let re_input = regex_lite_inputs(&self.body);
        assert!(!re_input.is_empty(), "no hidden inputs: {}", self.body);
        re_input
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// Hidden inputs `<input type="hidden" name="x" value="y">`.
fn regex_lite_inputs(html: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for tag in html.split("<input").skip(1) {
        let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
        if !tag.contains("type=\"hidden\"") {
            continue;
        }
        let attr = |name: &str| {
            let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
            let end = tag[start..].find('"')? + start;
            Some(html_unescape(&tag[start..end]))
        };
        if let (Some(n), Some(v)) = (attr("name"), attr("value")) {
            out.push((n, v));
        }
    }
    out
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            http: http_client(),
            cookies: HashMap::new(),
            set_cookie_headers: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn finish(&mut self, r: reqwest::Response) -> Page {
        for v in r.headers().get_all(reqwest::header::SET_COOKIE) {
            let text = v.to_str().unwrap().to_string();
            let pair = text.split(';').next().unwrap();
            let (k, val) = pair.split_once('=').unwrap();
            self.cookies.insert(k.trim().into(), val.trim().into());
            self.set_cookie_headers.push(text);
        }
        let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
        let headers = convert_headers(r.headers());
        Page {
            status,
            headers,
            body: r.text().await.unwrap_or_default(),
        }
    }

    pub async fn get(&mut self, url: &str) -> Page {
        let r = self
            .http
            .get(url)
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.finish(r).await
    }

    pub async fn post_form(&mut self, url: &str, form: &[(String, String)]) -> Page {
        let r = self
            .http
            .post(url)
            .header("cookie", self.cookie_header())
            .form(form)
            .send()
            .await
            .unwrap();
        self.finish(r).await
    }
}
