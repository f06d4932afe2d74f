//! The request path's pieces, set up the way a request meets them, for
//! `benches/request_path.rs`: a token cache hit, the header rewrite, the
//! policy decision for a cached session, the HTTP/1.1 head parse, and an MCP
//! endpoint's CORS on a call that is not a preflight. A
//! regression in one of them shows in `cargo bench` without the load test
//! (`scripts/bench.sh`). Nothing here is used by the proxy itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::json;

use crate::auth::TokenCache;
use crate::client_address::TrustedProxies;
use crate::crypto::{self, Keys};
use crate::grants::{Grants, Lifetimes};
use crate::metrics::Metrics;
use crate::policy::layer::{decide, script_user, McpCall, RequestView};
use crate::policy::{CompiledPolicy, Decision, PolicyEngine};
use crate::proxy::downstream::Framing;
use crate::proxy::headers::{downstream_request_headers, Forwarding};
use crate::server::http1::take_head;
use crate::session::{Memo, Session, UpstreamTokens};
use crate::store::sqlite::SqliteStore;
use crate::store::Records;

const DAY: Duration = Duration::from_secs(86_400);
const ISSUER: &str = "https://idp.example.com";

/// A signed-in user's session as the token cache holds it: a 1 KB provider
/// access token, as Okta, Entra ID and Keycloak issue.
fn session(token: &str) -> Session {
    let claims = json!({
        "sub": "00u1alice", "email": "alice@example.com", "name": "Alice Example",
        "groups": ["engineering", "admins"], "email_verified": true,
        "iss": ISSUER, "aud": "proxy", "iat": 1, "exp": 2,
    });
    Session {
        grant_id: crypto::random_id(),
        token_hash: crypto::token_hash(token),
        client_id: "client-1".into(),
        sub: "00u1alice".into(),
        email: Some("alice@example.com".into()),
        claims: claims.as_object().cloned().unwrap_or_default(),
        upstream: UpstreamTokens {
            access_token: "x".repeat(1024),
            ..Default::default()
        },
        resource: None,
        scope: None,
        expires_at: crate::now_unix() + DAY.as_secs() as i64,
        client_name: Some("Claude".into()),
        memo: Memo::default(),
        confirmed: Default::default(),
    }
}

/// A token cache (over a SQLite store in a temporary directory) that holds
/// one live session; `lookup` finds it as `Authenticate` does.
pub struct TokenCacheHit {
    cache: Arc<TokenCache>,
    token: String,
    dir: PathBuf,
}

impl TokenCacheHit {
    /// The cache and its one session; needs a Tokio runtime.
    pub async fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("mcp-proxy-bench-{}", crypto::random_id()));
        let store = std::fs::create_dir_all(&dir)
            .map_err(|e| e.to_string())
            .and_then(|()| SqliteStore::open(&dir.join("proxy.db")).map_err(|e| e.to_string()));
        let store = match store {
            Ok(store) => store,
            Err(e) => panic!("a SQLite store for the benchmark in {}: {e}", dir.display()),
        };
        let lifetimes = Lifetimes {
            access: DAY,
            refresh: DAY,
            code: DAY,
            max_grant_age: DAY,
            revalidate_after: DAY,
        };
        let grants = Grants::new(Records::new(Arc::new(store)), Keys::new([7; 32]), lifetimes);
        // Metrics recording, as shipped: a hit is counted.
        let metrics = Metrics::from_config(
            &crate::config::MetricsConfig::default(),
            [crate::config::DEFAULT_ROUTE],
        );
        let cache = TokenCache::new(grants, 10_000, DAY, DAY, DAY, metrics);
        let token = crypto::random_token();
        cache.hold(&token, session(&token)).await;
        TokenCacheHit { cache, token, dir }
    }

    /// Looks the token up; true when its session was found.
    pub async fn lookup(&self) -> bool {
        matches!(self.cache.lookup(&self.token).await, Ok(Some(_)))
    }
}

impl Drop for TokenCacheHit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The headers of the benchmark's request (`tests/bench/post.lua`), and
/// what the default policy sets.
pub struct HeaderRewrite {
    incoming: HeaderMap,
    policy_headers: Vec<(HeaderName, HeaderValue)>,
    engine: PolicyEngine,
    policy: Arc<CompiledPolicy>,
    trusted: TrustedProxies,
}

impl Default for HeaderRewrite {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderRewrite {
    /// A `tools/call` POST's headers with a bearer token, and the default
    /// policy's identity headers with a 1 KB provider token.
    pub fn new() -> Self {
        let mut incoming = HeaderMap::new();
        for (name, value) in [
            ("host", "127.0.0.1:8787"),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2025-06-18"),
            ("content-length", "200"),
        ] {
            incoming.insert(name, HeaderValue::from_static(value));
        }
        let bearer = format!("Bearer {}", crypto::random_token());
        if let Ok(value) = HeaderValue::from_str(&bearer) {
            incoming.insert("authorization", value);
        }
        let provider = format!("Bearer {}", "x".repeat(1024));
        let policy_headers = [
            ("x-user-email", "alice@example.com"),
            ("x-user-name", "Alice Example"),
            ("x-user-sub", "00u1alice"),
            ("x-user-groups", "engineering,admins"),
            ("authorization", provider.as_str()),
        ]
        .into_iter()
        .filter_map(|(n, v)| Some((HeaderName::from_static(n), HeaderValue::from_str(v).ok()?)))
        .collect();
        let engine = match PolicyEngine::new(None, &[]) {
            Ok(engine) => engine,
            Err(e) => panic!("the default policy compiles: {e}"),
        };
        HeaderRewrite {
            incoming,
            policy_headers,
            policy: engine.current(),
            engine,
            trusted: TrustedProxies::default(),
        }
    }

    /// The header lines the downstream receives.
    pub fn rewrite(&self) -> Vec<(HeaderName, HeaderValue)> {
        let strip = self.engine.strip_rule(&self.policy);
        downstream_request_headers(
            self.incoming.clone(),
            |name| strip(name),
            &self.policy_headers,
            &Forwarding {
                peer: Some(std::net::IpAddr::from([127, 0, 0, 1])),
                trusted_proxies: &self.trusted,
                public_host: &HeaderValue::from_static("mcp.example.com"),
                public_proto: &HeaderValue::from_static("https"),
            },
            &[],
        )
    }
}

/// A policy and a session that has already made one request: what
/// `EnforcePolicy` does for the next one.
pub struct CachedDecision {
    engine: PolicyEngine,
    policy: Arc<CompiledPolicy>,
    session: Session,
    headers: HeaderMap,
    call: McpCall,
}

impl CachedDecision {
    /// The policy at `path` (the built-in default when `None`).
    pub fn new(path: Option<&Path>) -> Self {
        let engine = match PolicyEngine::new(path, &[]) {
            Ok(engine) => engine,
            Err(e) => panic!("the policy compiles: {e}"),
        };
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert(
            "mcp-protocol-version",
            HeaderValue::from_static("2025-06-18"),
        );
        let bench = CachedDecision {
            policy: engine.current(),
            engine,
            session: session("token"),
            headers,
            call: McpCall {
                method: Some("tools/call".into()),
                id: Some(json!(7)),
                target: Some("echo".into()),
            },
        };
        bench.decide();
        bench
    }

    /// One decision, as `EnforcePolicy` takes it: the request view only for
    /// a policy that reads it; true when allowed.
    pub fn decide(&self) -> bool {
        let view = RequestView::when_read(
            &self.engine,
            &self.policy,
            &Method::POST,
            "/mcp",
            &self.headers,
        );
        let decision = decide(
            &self.engine,
            &self.policy,
            &self.session,
            Some(&self.call),
            || script_user(&self.session, ISSUER),
            || view.unwrap_or_default().into_call(Some(&self.call)),
        );
        matches!(decision, Decision::Allow { .. })
    }
}

/// Reads the request heads of a pipeline as the HTTP/1.1 server does
/// (`server::http1::take_head`: parsed once, judged raw, built into a
/// request), skipping each one's body by the framing the head was judged
/// to have (a length; anything else ends the pipeline); returns how many
/// heads it read.
pub fn parse_heads(bytes: &[u8]) -> usize {
    let mut buf = bytes::BytesMut::from(bytes);
    let mut fields = Vec::new();
    let mut heads = 0;
    while let Ok(Some(head)) = take_head(&mut buf, 64 * 1024, 100, &mut fields) {
        heads += 1;
        match head.framing {
            Ok(Framing::Empty) => {}
            Ok(Framing::Length(n)) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                let _ = buf.split_to(n);
            }
            _ => break,
        }
    }
    heads
}

/// The answer the loopback downstream gives every request: 200 bytes of
/// JSON, kept alive.
const DOWNSTREAM_ANSWER: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n";

/// A downstream on loopback that answers every request head with the same
/// 200-byte JSON, and two clients sending to it: the forwarder's
/// (`proxy::downstream`, each connection driven by the request using it)
/// and hyper-util's pooled client it replaced (a task per connection), so
/// the bench shows the difference on the same machine in the same run.
pub struct DownstreamRoundTrip {
    url: String,
    driven: crate::proxy::downstream::DownstreamClient,
    tasked: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        axum::body::Body,
    >,
}

impl DownstreamRoundTrip {
    /// Starts the downstream on the current (tokio) runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/mcp", listener.local_addr()?);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer_every_head(stream));
            }
        });
        Ok(DownstreamRoundTrip {
            url,
            driven: crate::proxy::downstream::DownstreamClient::new(Duration::from_secs(5)),
            tasked: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build_http(),
        })
    }

    fn request(&self) -> axum::http::Request<axum::body::Body> {
        let mut request = axum::http::Request::new(axum::body::Body::empty());
        *request.uri_mut() = self.url.parse().unwrap_or_default();
        let headers = request.headers_mut();
        headers.insert(
            "accept",
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert(
            "x-user-email",
            HeaderValue::from_static("alice@example.com"),
        );
        headers.insert(
            "x-user-groups",
            HeaderValue::from_static("engineering,admins"),
        );
        request
    }

    /// One request on the forwarder's client; the answer's body length.
    pub async fn driven(&self) -> usize {
        match self
            .driven
            .request(self.request(), Duration::from_secs(5))
            .await
        {
            Ok(response) => body_len(response.into_body()).await,
            Err(_) => 0,
        }
    }

    /// One request on hyper-util's pooled client; the answer's body length.
    pub async fn tasked(&self) -> usize {
        match self.tasked.request(self.request()).await {
            Ok(response) => body_len(response.into_body()).await,
            Err(_) => 0,
        }
    }
}

async fn body_len<B: http_body::Body<Data = axum::body::Bytes>>(body: B) -> usize {
    use http_body_util::BodyExt;
    body.collect().await.map_or(0, |b| b.to_bytes().len())
}

/// Reads request heads (no bodies) and answers each.
async fn answer_every_head(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = format!("{DOWNSTREAM_ANSWER}{}", "x".repeat(200));
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(read) = stream.read(&mut chunk).await else {
            return;
        };
        if read == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..read]);
        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            buffer.drain(..end + 4);
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

pub use crate::server::stack::CorsLists;

/// What the CORS layer's inner service is: one that answers at once.
type Answer = fn(
    axum::http::Request<axum::body::Body>,
) -> std::future::Ready<
    Result<axum::http::Response<axum::body::Body>, std::convert::Infallible>,
>;

/// Answers 200 with a JSON content type, as a downstream's answer arrives.
pub fn answer_at_once(
    _request: axum::http::Request<axum::body::Body>,
) -> std::future::Ready<Result<axum::http::Response<axum::body::Body>, std::convert::Infallible>> {
    let mut response = axum::http::Response::new(axum::body::Body::empty());
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    std::future::ready(Ok(response))
}

/// An MCP endpoint's CORS layer (`server::cors`, with the rules
/// `server::stack` makes for a route) in front of a service that answers
/// at once, called from an allowed origin.
pub struct CorsCall {
    service:
        crate::checkpoint::AroundService<crate::server::cors::Cors, tower::util::ServiceFn<Answer>>,
}

impl Default for CorsCall {
    fn default() -> Self {
        Self::new()
    }
}

impl CorsCall {
    /// The rules for `CorsCall::origins`.
    pub fn new() -> Self {
        use tower::Layer;
        let answer: Answer = answer_at_once;
        CorsCall {
            service: CorsLists::mcp()
                .only(Self::origins())
                .layer()
                .layer(tower::service_fn(answer)),
        }
    }

    /// The proxy's public origin and one allowed origin.
    pub fn origins() -> Vec<HeaderValue> {
        vec![
            HeaderValue::from_static("https://mcp.example.com"),
            HeaderValue::from_static("http://localhost:6274"),
        ]
    }

    /// A POST from the allowed origin.
    pub fn request() -> axum::http::Request<axum::body::Body> {
        let mut request = axum::http::Request::new(axum::body::Body::empty());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = axum::http::Uri::from_static("/mcp");
        request.headers_mut().insert(
            axum::http::header::ORIGIN,
            HeaderValue::from_static("http://localhost:6274"),
        );
        request
    }

    /// One `request()`; the answer's `Access-Control-Allow-Origin`.
    pub async fn call(&self) -> Option<HeaderValue> {
        use tower::ServiceExt;
        let response = self.service.clone().oneshot(Self::request()).await.ok()?;
        response
            .headers()
            .get(axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .cloned()
    }
}

/// The request path's clock asked `asks` times within one poll of a
/// connection's task (`clock::Clocked`), as a request's layers ask it: one
/// reading of the clock, the rest the poll's. `None` if the poll did not
/// finish (it always does: nothing in it waits).
pub fn clock_asked_in_one_poll(asks: usize) -> Option<tokio::time::Instant> {
    use std::future::Future;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut asking = std::pin::pin!(crate::clock::Clocked::new(async move {
        let mut last = crate::clock::now();
        for _ in 1..asks {
            last = std::hint::black_box(crate::clock::now());
        }
        last
    }));
    match asking.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(at) => Some(at),
        std::task::Poll::Pending => None,
    }
}
