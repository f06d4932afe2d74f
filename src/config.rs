//! Configuration: defaults ← TOML file ← the original worker's variables ←
//! `MCP_PROXY_*` environment variables (`__` separates nesting).
//!
//! Every key is known: an unknown key, a missing required key or a bad value is
//! an error that names the key and where its value came from.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

use crate::net::is_loopback_host;

/// The environment prefix of every configuration variable.
pub const ENV_PREFIX: &str = "MCP_PROXY_";

/// The original Cloudflare Worker's variables and the keys they set.
const LEGACY_VARIABLES: [(&str, &str); 5] = [
    ("DOWNSTREAM_MCP_URL", "downstream.url"),
    ("CF_ACCESS_CLIENT_ID", "upstream.client_id"),
    ("CF_ACCESS_CLIENT_SECRET", "upstream.client_secret"),
    ("CF_ACCESS_TEAM_DOMAIN", "upstream.team_domain"),
    ("COOKIE_ENCRYPTION_KEY", "secrets.encryption_key"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(String),
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl ConfigError {
    fn invalid(key: &'static str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            message: message.into(),
        }
    }
}

/// The whole configuration, as read from file and environment.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub downstream: DownstreamConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub tokens: TokensConfig,
    #[serde(default)]
    pub registration: RegistrationConfig,
    #[serde(default)]
    pub consent: ConsentConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Record request metrics (served on `server.admin_listen`).
    #[serde(default = "default_true", deserialize_with = "lenient_bool")]
    pub enabled: bool,
    /// MCP tool names that may appear as metric labels; others count as
    /// "other".
    #[serde(default)]
    pub tools: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            tools: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The URL clients use to reach the proxy. The issuer and every advertised
    /// URL derive from it, never from request headers.
    #[serde(deserialize_with = "lenient_string")]
    pub public_url: String,
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// How long open streams may keep running after a shutdown signal.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: DurationStr,
    /// Browser origins, besides the proxy's own, allowed to call /mcp and /sse
    /// (e.g. "http://localhost:6274" for MCP Inspector).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Load balancers in front of the proxy (CIDRs or addresses) whose
    /// `X-Forwarded-For` is kept and appended to; every other peer's is
    /// replaced by the peer's own address.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    // Bounds on what one client may hold (DESIGN.md invariant 9); each
    // listener applies them with its own connection budget.
    /// Time a client has to send a request's headers; on a new connection,
    /// to send its first request.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: DurationStr,
    /// A connection with no request or stream in progress for this long is
    /// closed. Open streams (SSE) are not idle; they have
    /// `downstream.sse_idle_timeout`.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: DurationStr,
    /// Time a client has to send a request's whole body, counted from the
    /// end of its headers.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: DurationStr,
    /// Open connections per listener; beyond it new ones are refused.
    #[serde(
        default = "default_max_connections",
        deserialize_with = "lenient_number"
    )]
    pub max_connections: usize,
    /// The largest request head (HTTP/1.1) or header list (HTTP/2), in bytes.
    #[serde(
        default = "default_max_header_bytes",
        deserialize_with = "lenient_number"
    )]
    pub max_header_bytes: usize,
    /// The most header fields in one HTTP/1.1 request.
    #[serde(default = "default_max_headers", deserialize_with = "lenient_number")]
    pub max_headers: usize,
    /// The most concurrent requests (streams) on one HTTP/2 connection.
    #[serde(
        default = "default_max_concurrent_streams",
        deserialize_with = "lenient_number"
    )]
    pub max_concurrent_streams: u32,
}

fn default_header_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(10))
}
fn default_idle_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(60))
}
fn default_body_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(30))
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_concurrent_streams() -> u32 {
    100
}

impl ServerConfig {
    fn validate_limits(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("server.header_timeout", self.header_timeout),
            ("server.idle_timeout", self.idle_timeout),
            ("server.body_timeout", self.body_timeout),
        ] {
            if value.0.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than zero"));
            }
        }
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                "server.max_connections",
                "must be at least 1",
            ));
        }
        // hyper's read buffer cannot be smaller than 8 KiB.
        if !(8 * 1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(ConfigError::invalid(
                "server.max_header_bytes",
                "must be between 8192 and 1048576",
            ));
        }
        if !(1..=1000).contains(&self.max_headers) {
            return Err(ConfigError::invalid(
                "server.max_headers",
                "must be between 1 and 1000",
            ));
        }
        if self.max_concurrent_streams == 0 {
            return Err(ConfigError::invalid(
                "server.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    /// Any OpenID Connect provider, found through `upstream.issuer`.
    #[default]
    Oidc,
    /// Cloudflare Access; the issuer derives from `upstream.team_domain`.
    CloudflareAccess,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default)]
    pub provider: Provider,
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub issuer: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub team_domain: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Merge the provider's userinfo claims into the id_token's.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub userinfo: bool,
    #[serde(default = "default_upstream_timeout")]
    pub timeout: DurationStr,
    /// When a client refreshes and the provider's access token expires
    /// within this, the proxy renews it with the provider's refresh token.
    #[serde(default = "default_refresh_before")]
    pub refresh_before: DurationStr,
    /// A client refresh asks the provider again (claims re-read, login
    /// policy re-run) once the provider last confirmed the person this long
    /// ago; access tokens never outlive that confirmation by more than this.
    /// Unset: `tokens.access_ttl`. Only for providers that issue a refresh
    /// token; without one, `tokens.max_grant_age` bounds the sign-in.
    #[serde(default)]
    pub revalidate_after: Option<DurationStr>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            provider: Provider::default(),
            issuer: None,
            team_domain: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            scopes: default_scopes(),
            userinfo: false,
            timeout: default_upstream_timeout(),
            refresh_before: default_refresh_before(),
            revalidate_after: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamConfig {
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub url: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub sse_url: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: DurationStr,
    /// How long to wait for the downstream's response headers.
    #[serde(default = "default_response_timeout")]
    pub response_timeout: DurationStr,
    /// A stream with no event for this long is closed. Streams have no total
    /// time limit.
    #[serde(default = "default_sse_idle_timeout")]
    pub sse_idle_timeout: DurationStr,
    /// The largest JSON-RPC request body accepted (the policy reads it).
    #[serde(
        default = "default_max_request_bytes",
        deserialize_with = "lenient_number"
    )]
    pub max_request_bytes: usize,
    /// Names of client cookies the downstream receives, and may set; every
    /// other cookie stays between the client and the proxy.
    #[serde(default)]
    pub pass_cookies: Vec<String>,
    /// The most messages one JSON-RPC batch may hold (each runs the policy);
    /// 0 refuses batches (MCP 2025-06-18 and later have none), 1 allows a
    /// batch of one message.
    #[serde(
        default = "default_max_batch_size",
        deserialize_with = "lenient_number"
    )]
    pub max_batch_size: usize,
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        DownstreamConfig {
            url: None,
            sse_url: None,
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
            sse_idle_timeout: default_sse_idle_timeout(),
            max_request_bytes: default_max_request_bytes(),
            pass_cookies: Vec::new(),
            max_batch_size: default_max_batch_size(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// How many validated tokens are kept in memory.
    #[serde(
        default = "default_cache_capacity",
        deserialize_with = "lenient_number"
    )]
    pub cache_capacity: u64,
    /// The longest a validated token is trusted without asking the store
    /// again (revocations from other replicas arrive within this).
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: DurationStr,
    /// How long an unknown token is remembered as unknown.
    #[serde(default = "default_negative_cache_ttl")]
    pub negative_cache_ttl: DurationStr,
    /// How often an open event stream asks the store whether its token is
    /// still live: the bound on ending streams after a revocation this
    /// process did not hear of (the CLI on a SQLite store).
    #[serde(default = "default_stream_recheck_interval")]
    pub stream_recheck_interval: DurationStr,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            cache_capacity: default_cache_capacity(),
            cache_ttl: default_cache_ttl(),
            negative_cache_ttl: default_negative_cache_ttl(),
            stream_recheck_interval: default_stream_recheck_interval(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// Several replicas share this Redis (`redis://host:6379/0`); without
    /// it, the SQLite file at `store.path` is used.
    #[serde(default)]
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key and channel, so deployments can share one
    /// Redis.
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// How often expired records are removed.
    #[serde(default = "default_purge_interval")]
    pub purge_interval: DurationStr,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            redis_url: None,
            redis_prefix: default_redis_prefix(),
            purge_interval: default_purge_interval(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The Rhai policy; without it, the built-in default policy (the
    /// original worker's identity headers) runs.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Extra header names a policy may set; client headers that normalise to
    /// one of them are removed before forwarding.
    #[serde(default)]
    pub identity_headers: Vec<String>,
    /// How often the policy file is checked for changes (SIGHUP reloads at
    /// once).
    #[serde(default = "default_policy_watch_interval")]
    pub watch_interval: DurationStr,
    /// The longest header value a policy may set, in bytes after encoding;
    /// a longer one denies the request.
    #[serde(default = "default_policy_max_header_bytes")]
    pub max_header_bytes: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            path: None,
            identity_headers: Vec::new(),
            watch_interval: default_policy_watch_interval(),
            max_header_bytes: default_policy_max_header_bytes(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    #[serde(default)]
    pub encryption_key: Option<Secret>,
    #[serde(default)]
    pub encryption_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    #[serde(default = "default_access_ttl")]
    pub access_ttl: DurationStr,
    #[serde(default = "default_refresh_ttl")]
    pub refresh_ttl: DurationStr,
    #[serde(default = "default_code_ttl")]
    pub code_ttl: DurationStr,
    /// The longest a sign-in lasts when the provider issued no refresh
    /// token (so it cannot be asked again): then the person logs in anew.
    #[serde(default = "default_max_grant_age")]
    pub max_grant_age: DurationStr,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            access_ttl: default_access_ttl(),
            refresh_ttl: default_refresh_ttl(),
            code_ttl: default_code_ttl(),
            max_grant_age: default_max_grant_age(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    /// A dynamically registered client that is not used for this long is
    /// forgotten.
    #[serde(default = "default_client_ttl")]
    pub client_ttl: DurationStr,
    /// Private-use URI schemes accepted in redirect URIs, e.g. "cursor".
    #[serde(default)]
    pub allowed_schemes: Vec<String>,
    #[serde(
        default = "default_max_redirect_uris",
        deserialize_with = "lenient_number"
    )]
    pub max_redirect_uris: usize,
    /// Accept https URLs as client ids (Client ID Metadata Documents).
    #[serde(default = "default_true", deserialize_with = "lenient_bool")]
    pub client_metadata_documents: bool,
    /// Development only: also fetch http:// documents and private addresses.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub insecure_metadata_documents: bool,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            client_ttl: default_client_ttl(),
            allowed_schemes: Vec::new(),
            max_redirect_uris: default_max_redirect_uris(),
            client_metadata_documents: true,
            insecure_metadata_documents: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentConfig {
    /// How long an approval of a client is remembered for a browser.
    #[serde(default = "default_consent_ttl")]
    pub remember: DurationStr,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig {
            remember: default_consent_ttl(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, readable text when it is.
    #[default]
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing env-filter directive; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// One audit event per MCP request (who, what, decision, status).
    #[serde(default = "default_true", deserialize_with = "lenient_bool")]
    pub audit: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: default_log_level(),
            audit: true,
        }
    }
}

/// Request rates, counted per replica. Each group may be tuned or switched
/// off on its own; a key left out keeps that group's default (see
/// `crate::rate_limit::LimitGroup::default_rate`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Switches every limit off at once (benchmarks, a trusted network).
    #[serde(default = "default_true", deserialize_with = "lenient_bool")]
    pub enabled: bool,
    /// `/register`, per client address.
    #[serde(default)]
    pub register: RateLimitConfig,
    /// `/token` and `/revoke`, per client address.
    #[serde(default)]
    pub token: RateLimitConfig,
    /// `/authorize`, `/consent` and `/callback`, per client address.
    #[serde(default)]
    pub browser: RateLimitConfig,
    /// `/mcp`, `/sse` and its message endpoint, per client address, before
    /// the token is looked up.
    #[serde(default)]
    pub mcp_address: RateLimitConfig,
    /// `/mcp`, `/sse` and its message endpoint, per user (`sub`).
    #[serde(default)]
    pub mcp_user: RateLimitConfig,
    /// `/mcp`, `/sse` and its message endpoint, per OAuth client id.
    #[serde(default)]
    pub mcp_client: RateLimitConfig,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            enabled: true,
            register: RateLimitConfig::default(),
            token: RateLimitConfig::default(),
            browser: RateLimitConfig::default(),
            mcp_address: RateLimitConfig::default(),
            mcp_user: RateLimitConfig::default(),
            mcp_client: RateLimitConfig::default(),
        }
    }
}

/// `requests` per `period`, with bursts of up to `burst` at once.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default, deserialize_with = "lenient_opt_bool")]
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "lenient_opt_number")]
    pub requests: Option<u32>,
    #[serde(default)]
    pub period: Option<DurationStr>,
    #[serde(default, deserialize_with = "lenient_opt_number")]
    pub burst: Option<u32>,
}

/// The rate-limited route groups, each with its own `[limits.<name>]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitGroup {
    Register,
    Token,
    Browser,
    McpAddress,
    McpUser,
    McpClient,
}

impl LimitGroup {
    pub const ALL: [LimitGroup; 6] = [
        LimitGroup::Register,
        LimitGroup::Token,
        LimitGroup::Browser,
        LimitGroup::McpAddress,
        LimitGroup::McpUser,
        LimitGroup::McpClient,
    ];

    /// The table name under `[limits]`, also the metric label value.
    pub fn name(self) -> &'static str {
        match self {
            LimitGroup::Register => "register",
            LimitGroup::Token => "token",
            LimitGroup::Browser => "browser",
            LimitGroup::McpAddress => "mcp_address",
            LimitGroup::McpUser => "mcp_user",
            LimitGroup::McpClient => "mcp_client",
        }
    }

    /// `(requests, period, burst)` when the table leaves a key out: enough
    /// for real clients (a person signing in, an agent calling tools in a
    /// loop, the MCP conformance suite), far below what a script can send.
    pub fn default_rate(self) -> (u32, Duration, u32) {
        let minute = Duration::from_secs(60);
        match self {
            LimitGroup::Register => (30, minute, 30),
            LimitGroup::Token => (120, minute, 60),
            LimitGroup::Browser => (120, minute, 60),
            LimitGroup::McpAddress => (6000, minute, 1000),
            LimitGroup::McpUser => (3000, minute, 500),
            LimitGroup::McpClient => (15000, minute, 2500),
        }
    }

    fn keys(self) -> (&'static str, &'static str, &'static str) {
        match self {
            LimitGroup::Register => (
                "limits.register.requests",
                "limits.register.period",
                "limits.register.burst",
            ),
            LimitGroup::Token => (
                "limits.token.requests",
                "limits.token.period",
                "limits.token.burst",
            ),
            LimitGroup::Browser => (
                "limits.browser.requests",
                "limits.browser.period",
                "limits.browser.burst",
            ),
            LimitGroup::McpAddress => (
                "limits.mcp_address.requests",
                "limits.mcp_address.period",
                "limits.mcp_address.burst",
            ),
            LimitGroup::McpUser => (
                "limits.mcp_user.requests",
                "limits.mcp_user.period",
                "limits.mcp_user.burst",
            ),
            LimitGroup::McpClient => (
                "limits.mcp_client.requests",
                "limits.mcp_client.period",
                "limits.mcp_client.burst",
            ),
        }
    }
}

/// A checked rate: `requests` per `period`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub requests: std::num::NonZeroU32,
    pub period: Duration,
    pub burst: std::num::NonZeroU32,
}

impl LimitsConfig {
    fn group(&self, group: LimitGroup) -> &RateLimitConfig {
        match group {
            LimitGroup::Register => &self.register,
            LimitGroup::Token => &self.token,
            LimitGroup::Browser => &self.browser,
            LimitGroup::McpAddress => &self.mcp_address,
            LimitGroup::McpUser => &self.mcp_user,
            LimitGroup::McpClient => &self.mcp_client,
        }
    }

    /// The rate of `group`, or `None` when it is switched off. Errors name
    /// the key at fault.
    pub fn rate(&self, group: LimitGroup) -> Result<Option<Rate>, ConfigError> {
        let table = self.group(group);
        if !self.enabled || table.enabled == Some(false) {
            return Ok(None);
        }
        let (requests_key, period_key, burst_key) = group.keys();
        let (default_requests, default_period, default_burst) = group.default_rate();
        let requests = table.requests.unwrap_or(default_requests);
        let requests = std::num::NonZeroU32::new(requests).ok_or_else(|| {
            ConfigError::invalid(
                requests_key,
                "must be at least 1 (to switch the limit off, set enabled = false)",
            )
        })?;
        let period = table.period.map(|p| p.0).unwrap_or(default_period);
        if period.is_zero() {
            return Err(ConfigError::invalid(period_key, "must be longer than zero"));
        }
        if period / requests.get() < Duration::from_nanos(1) {
            return Err(ConfigError::invalid(
                period_key,
                format!("is too short for {} requests", requests.get()),
            ));
        }
        // A burst left out follows a changed `requests`, so that changing
        // the rate alone is enough.
        let burst = match (table.burst, table.requests) {
            (Some(burst), _) => burst,
            (None, Some(_)) => requests.get(),
            (None, None) => default_burst,
        };
        let burst = std::num::NonZeroU32::new(burst).ok_or_else(|| {
            ConfigError::invalid(
                burst_key,
                "must be at least 1 (to switch the limit off, set enabled = false)",
            )
        })?;
        Ok(Some(Rate {
            requests,
            period,
            burst,
        }))
    }
}

fn lenient_opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    lenient_bool(d).map(Some)
}

fn lenient_opt_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    lenient_number(d).map(Some)
}

fn default_listen() -> String {
    "127.0.0.1:8787".into()
}
fn default_shutdown_grace() -> DurationStr {
    DurationStr(Duration::from_secs(30))
}
fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}
fn default_upstream_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(10))
}
fn default_refresh_before() -> DurationStr {
    DurationStr(Duration::from_secs(60))
}
fn default_store_path() -> PathBuf {
    PathBuf::from("mcp-oauth-proxy.db")
}
fn default_redis_prefix() -> String {
    "mcp-oauth-proxy:".into()
}
fn default_purge_interval() -> DurationStr {
    DurationStr(Duration::from_secs(600))
}
fn default_policy_max_header_bytes() -> usize {
    crate::policy::header_rules::DEFAULT_MAX_HEADER_BYTES
}

fn default_policy_watch_interval() -> DurationStr {
    DurationStr(Duration::from_secs(1))
}
fn default_connect_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(5))
}
fn default_response_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(120))
}
fn default_sse_idle_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(30 * 60))
}
fn default_max_request_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_batch_size() -> usize {
    16
}
/// Past this, one request's policy runs take too long to be a batch.
const MAX_BATCH_SIZE_LIMIT: usize = 1024;
fn default_cache_capacity() -> u64 {
    100_000
}
fn default_cache_ttl() -> DurationStr {
    DurationStr(Duration::from_secs(60))
}
fn default_negative_cache_ttl() -> DurationStr {
    DurationStr(Duration::from_secs(5))
}
fn default_access_ttl() -> DurationStr {
    DurationStr(Duration::from_secs(3600))
}
fn default_refresh_ttl() -> DurationStr {
    DurationStr(Duration::from_secs(30 * 86400))
}
fn default_max_grant_age() -> DurationStr {
    DurationStr(Duration::from_secs(24 * 3600))
}
fn default_stream_recheck_interval() -> DurationStr {
    DurationStr(Duration::from_secs(5))
}
fn default_code_ttl() -> DurationStr {
    DurationStr(Duration::from_secs(300))
}
fn default_client_ttl() -> DurationStr {
    DurationStr(Duration::from_secs(90 * 86400))
}
fn default_max_redirect_uris() -> usize {
    10
}
fn default_consent_ttl() -> DurationStr {
    DurationStr(Duration::from_secs(30 * 86400))
}
fn default_log_level() -> String {
    "info".into()
}

/// A duration written as text ("10m", "1h 30m", "30d").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationStr(pub Duration);

impl DurationStr {
    pub fn secs(&self) -> i64 {
        self.0.as_secs() as i64
    }
}

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(DurationStr)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a duration ({e}); write e.g. \"10m\", \"1h\", \"30d\""
                ))
            })
    }
}

impl Serialize for DurationStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A secret value: never printed, never serialized in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient_string(d).map(Secret)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Environment values are parsed by figment ("123" becomes a number); a
/// string key accepts them back as text.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lenient {
        Text(String),
        Unsigned(u64),
        Signed(i64),
        Float(f64),
        Bool(bool),
    }
    Ok(match Lenient::deserialize(d)? {
        Lenient::Text(s) => s,
        Lenient::Unsigned(n) => n.to_string(),
        Lenient::Signed(n) => n.to_string(),
        Lenient::Float(n) => n.to_string(),
        Lenient::Bool(b) => b.to_string(),
    })
}

fn lenient_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    lenient_string(d).map(Some)
}

/// A number written as a number (TOML) or as text (environment).
fn lenient_number<'de, D: Deserializer<'de>, N>(d: D) -> Result<N, D::Error>
where
    N: std::str::FromStr + TryFrom<u64>,
{
    let text = lenient_string(d)?;
    text.trim()
        .parse::<N>()
        .map_err(|_| serde::de::Error::custom(format!("`{text}` is not a whole number")))
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let text = lenient_string(d)?;
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(serde::de::Error::custom(format!(
            "`{text}` is not true or false"
        ))),
    }
}

/// Settings derived and checked once at startup, in the form the code uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    /// `server.public_url` without a trailing slash; the issuer.
    pub public_url: String,
    pub issuer_url: String,
    pub upstream_client_id: String,
    pub upstream_client_secret: Option<Secret>,
    pub encryption_key: [u8; 32],
    pub downstream_url: Url,
    pub downstream_sse_url: Option<Url>,
    /// `server.allowed_origins`, as origins ("scheme://host[:port]").
    pub allowed_origins: Vec<String>,
    /// `server.trusted_proxies`, parsed.
    pub trusted_proxies: crate::client_address::TrustedProxies,
    /// Cookies use the `__Host-` prefix and `Secure` unless the public URL is
    /// plain http on a non-loopback host, where browsers would drop them.
    pub secure_cookies: bool,
}

impl Settings {
    pub fn callback_url(&self) -> String {
        format!("{}/callback", self.public_url)
    }
}

/// Loads the configuration: defaults ← `path` ← the original worker's
/// variables ← `MCP_PROXY_*`.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    figment(path)
        .extract::<Config>()
        .map_err(|e| ConfigError::Load(describe_figment_error(e)))
}

/// The figment with every source, in precedence order (later wins).
pub fn figment(path: Option<&Path>) -> Figment {
    let mut figment = Figment::new();
    if let Some(path) = path {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment.merge(EnvProvider::Legacy).merge(EnvProvider::Ours)
}

/// Environment variables as text, exactly as set. (figment's own `Env`
/// parses values, so a key of 64 digits would become a number.) A value
/// written as `[a, b]` is a list.
#[derive(Debug, Clone, Copy)]
enum EnvProvider {
    /// The original worker's five variables.
    Legacy,
    /// `MCP_PROXY_SECTION__KEY`.
    Ours,
}

impl figment::Provider for EnvProvider {
    fn metadata(&self) -> figment::Metadata {
        match self {
            EnvProvider::Legacy => {
                figment::Metadata::named("the original worker's environment variables")
            }
            EnvProvider::Ours => figment::Metadata::named("MCP_PROXY_* environment variables")
                .interpolater(|_profile: &figment::Profile, keys: &[&str]| {
                    format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase())
                }),
        }
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        use figment::value::{Dict, Value};
        let mut dict = Dict::new();
        for (name, text) in std::env::vars() {
            let key = match self {
                EnvProvider::Legacy => {
                    match LEGACY_VARIABLES.iter().find(|(legacy, _)| *legacy == name) {
                        Some((_, key)) => key.to_string(),
                        None => continue,
                    }
                }
                EnvProvider::Ours => match name.strip_prefix(ENV_PREFIX) {
                    Some(rest) if !rest.is_empty() && rest != "CONFIG" => {
                        rest.to_ascii_lowercase().replace("__", ".")
                    }
                    _ => continue,
                },
            };
            let trimmed = text.trim();
            let value = if trimmed.starts_with('[') && trimmed.ends_with(']') {
                let items = trimmed[1..trimmed.len() - 1]
                    .split(',')
                    .map(|item| item.trim().trim_matches('"').to_string())
                    .filter(|item| !item.is_empty())
                    .map(Value::from)
                    .collect::<Vec<_>>();
                Value::from(items)
            } else {
                Value::from(text)
            };
            if let Some(nested) = figment::util::nest(&key, value).into_dict() {
                dict = merge_dicts(dict, nested);
            }
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn merge_dicts(
    mut base: figment::value::Dict,
    other: figment::value::Dict,
) -> figment::value::Dict {
    use figment::value::Value;
    for (k, v) in other {
        let merged = match (base.remove(&k), v) {
            (Some(Value::Dict(_, a)), Value::Dict(_, b)) => Value::from(merge_dicts(a, b)),
            (_, v) => v,
        };
        base.insert(k, merged);
    }
    base
}

/// One line per problem: what is wrong, which key, which source.
fn describe_figment_error(error: figment::Error) -> String {
    let mut lines = Vec::new();
    for e in error {
        let mut path = e.path.clone();
        // Figment reports profile names; they mean nothing to operators.
        if matches!(path.first().map(String::as_str), Some("default" | "global")) {
            path.remove(0);
        }
        let key = path.join(".");
        let keys: Vec<&str> = path.iter().map(String::as_str).collect();
        let source = e
            .metadata
            .as_ref()
            .map(|m| match &m.source {
                Some(src) => format!("{} ({src})", m.name),
                // Environment values: name the variable itself.
                None if m.name.contains("environment") && !keys.is_empty() => {
                    format!(
                        "{} ({})",
                        m.name,
                        m.interpolate(&figment::Profile::Default, &keys)
                    )
                }
                None => m.name.to_string(),
            })
            .unwrap_or_else(|| "defaults".into());
        let kind = e.kind.to_string();
        if key.is_empty() {
            lines.push(format!("config error: {kind} (from {source})"));
        } else {
            lines.push(format!("config error at `{key}`: {kind} (from {source})"));
        }
    }
    lines.join("\n")
}

impl Config {
    /// Checks values and derives what the code uses. Errors name the key.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let public_url = validate_public_url(&self.server.public_url)?;
        let issuer_url = self.derive_issuer()?;
        let upstream_client_id = self
            .upstream
            .client_id
            .clone()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                ConfigError::invalid(
                    "upstream.client_id",
                    "is not set (the client id the OpenID provider gave this proxy; env MCP_PROXY_UPSTREAM__CLIENT_ID or CF_ACCESS_CLIENT_ID)",
                )
            })?;
        let upstream_client_secret = match (
            &self.upstream.client_secret,
            &self.upstream.client_secret_file,
        ) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "upstream.client_secret_file",
                    "set together with upstream.client_secret; keep one",
                ))
            }
            (Some(secret), None) => Some(secret.clone()),
            (None, Some(file)) => Some(Secret::new(read_secret_file(
                "upstream.client_secret_file",
                file,
            )?)),
            (None, None) => None,
        };
        let key_text = match (&self.secrets.encryption_key, &self.secrets.encryption_key_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "secrets.encryption_key_file",
                    "set together with secrets.encryption_key; keep one",
                ))
            }
            (Some(secret), None) => secret.expose().to_string(),
            (None, Some(file)) => read_secret_file("secrets.encryption_key_file", file)?,
            (None, None) => {
                return Err(ConfigError::invalid(
                    "secrets.encryption_key",
                    "is not set; generate one with `openssl rand -hex 32` (env MCP_PROXY_SECRETS__ENCRYPTION_KEY or COOKIE_ENCRYPTION_KEY)",
                ))
            }
        };
        let encryption_key = parse_key(&key_text)?;
        let downstream_text = self.downstream.url.clone().filter(|s| !s.trim().is_empty()).ok_or_else(|| {
            ConfigError::invalid(
                "downstream.url",
                "is not set (the MCP server to protect; env MCP_PROXY_DOWNSTREAM__URL or DOWNSTREAM_MCP_URL)",
            )
        })?;
        let downstream_url = parse_http_url("downstream.url", &downstream_text)?;
        let downstream_sse_url = self
            .downstream
            .sse_url
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(|sse| parse_http_url("downstream.sse_url", sse))
            .transpose()?;
        let mut allowed_origins = Vec::new();
        for origin in &self.server.allowed_origins {
            let url = parse_http_url("server.allowed_origins", origin)?;
            allowed_origins.push(url.origin().ascii_serialization());
        }
        if let Some(admin) = &self.server.admin_listen {
            if admin.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::invalid(
                    "server.admin_listen",
                    format!("`{admin}` is not an address such as 127.0.0.1:9787"),
                ));
            }
        }
        let trusted_proxies =
            crate::client_address::TrustedProxies::parse(&self.server.trusted_proxies)
                .map_err(|m| ConfigError::invalid("server.trusted_proxies", m))?;
        for name in &self.downstream.pass_cookies {
            check_passable_cookie_name(name)
                .map_err(|m| ConfigError::invalid("downstream.pass_cookies", m))?;
        }
        self.server.validate_limits()?;
        if self.downstream.max_request_bytes < 1024 {
            return Err(ConfigError::invalid(
                "downstream.max_request_bytes",
                "must be at least 1024",
            ));
        }
        if !(256..=65_536).contains(&self.policy.max_header_bytes) {
            return Err(ConfigError::invalid(
                "policy.max_header_bytes",
                "must be between 256 and 65536",
            ));
        }
        if self.downstream.max_batch_size > MAX_BATCH_SIZE_LIMIT {
            return Err(ConfigError::invalid(
                "downstream.max_batch_size",
                format!("must be at most {MAX_BATCH_SIZE_LIMIT} (0 refuses batches)"),
            ));
        }
        for name in &self.policy.identity_headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::invalid(
                    "policy.identity_headers",
                    format!("`{name}` is not a header name"),
                ));
            }
        }
        for scheme in &self.registration.allowed_schemes {
            crate::net::check_allowed_scheme(scheme)
                .map_err(|m| ConfigError::invalid("registration.allowed_schemes", m))?;
        }
        if self.registration.max_redirect_uris == 0 || self.registration.max_redirect_uris > 100 {
            return Err(ConfigError::invalid(
                "registration.max_redirect_uris",
                "must be between 1 and 100",
            ));
        }
        for (key, value) in [
            ("tokens.access_ttl", self.tokens.access_ttl),
            ("tokens.refresh_ttl", self.tokens.refresh_ttl),
            ("tokens.code_ttl", self.tokens.code_ttl),
            ("tokens.max_grant_age", self.tokens.max_grant_age),
            (
                "upstream.revalidate_after",
                self.upstream
                    .revalidate_after
                    .unwrap_or(self.tokens.access_ttl),
            ),
            (
                "auth.stream_recheck_interval",
                self.auth.stream_recheck_interval,
            ),
            ("registration.client_ttl", self.registration.client_ttl),
            ("store.purge_interval", self.store.purge_interval),
            (
                "downstream.connect_timeout",
                self.downstream.connect_timeout,
            ),
            (
                "downstream.response_timeout",
                self.downstream.response_timeout,
            ),
            (
                "downstream.sse_idle_timeout",
                self.downstream.sse_idle_timeout,
            ),
            ("auth.cache_ttl", self.auth.cache_ttl),
            ("policy.watch_interval", self.policy.watch_interval),
        ] {
            if value.0.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than zero"));
            }
        }
        for group in LimitGroup::ALL {
            self.limits.rate(group)?;
        }
        let secure_cookies = {
            let url = Url::parse(&public_url)
                .map_err(|e| ConfigError::invalid("server.public_url", e.to_string()))?;
            url.scheme() == "https" || is_loopback_host(url.host_str().unwrap_or_default())
        };
        Ok(Settings {
            public_url,
            issuer_url,
            upstream_client_id,
            upstream_client_secret,
            encryption_key,
            downstream_url,
            downstream_sse_url,
            allowed_origins,
            trusted_proxies,
            secure_cookies,
            config: self,
        })
    }

    fn derive_issuer(&self) -> Result<String, ConfigError> {
        let team_domain = self
            .upstream
            .team_domain
            .as_deref()
            .filter(|s| !s.trim().is_empty());
        let derive_from_team = self.upstream.provider == Provider::CloudflareAccess
            || (self.upstream.issuer.is_none() && team_domain.is_some());
        if derive_from_team {
            let team = team_domain.ok_or_else(|| {
                ConfigError::invalid(
                    "upstream.team_domain",
                    "is required with provider = \"cloudflare-access\" (e.g. \"myteam.cloudflareaccess.com\"; env CF_ACCESS_TEAM_DOMAIN)",
                )
            })?;
            let client_id = self.upstream.client_id.as_deref().ok_or_else(|| {
                ConfigError::invalid(
                    "upstream.client_id",
                    "is required to derive the Cloudflare Access issuer",
                )
            })?;
            return Ok(cloudflare_access_issuer(team, client_id));
        }
        let issuer = self.upstream.issuer.as_deref().filter(|s| !s.trim().is_empty()).ok_or_else(|| {
            ConfigError::invalid(
                "upstream.issuer",
                "is not set (the OpenID provider's issuer URL; or set upstream.provider = \"cloudflare-access\" with upstream.team_domain)",
            )
        })?;
        let url = parse_http_url("upstream.issuer", issuer)?;
        // Codes, tokens and signing keys travel to the provider's endpoints.
        if url.scheme() != "https" && !is_loopback_host(url.host_str().unwrap_or_default()) {
            return Err(ConfigError::invalid(
                "upstream.issuer",
                format!("`{issuer}` must be an https URL (http is accepted only for a provider on a loopback address)"),
            ));
        }
        Ok(issuer.trim_end_matches('/').to_string())
    }
}

/// Cloudflare Access SaaS OIDC applications have one issuer per application.
pub fn cloudflare_access_issuer(team_domain: &str, client_id: &str) -> String {
    let team = team_domain
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let host = if team.contains('.') {
        team.to_string()
    } else {
        format!("{team}.cloudflareaccess.com")
    };
    format!("https://{host}/cdn-cgi/access/sso/oidc/{client_id}")
}

fn validate_public_url(text: &str) -> Result<String, ConfigError> {
    let url = parse_http_url("server.public_url", text)?;
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::invalid(
            "server.public_url",
            format!("`{text}` must be an origin such as https://mcp.example.com, without a path, query or fragment"),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn parse_http_url(key: &'static str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text.trim())
        .map_err(|e| ConfigError::invalid(key, format!("`{text}` is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::invalid(
            key,
            format!("`{text}` must be an http or https URL"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::invalid(key, "must not carry credentials"));
    }
    Ok(url)
}

fn parse_key(text: &str) -> Result<[u8; 32], ConfigError> {
    let text = text.trim();
    let bytes = hex::decode(text).ok().filter(|b| b.len() == 32).ok_or_else(|| {
        ConfigError::invalid(
            "secrets.encryption_key",
            format!(
                "must be 64 hexadecimal characters (32 bytes), as `openssl rand -hex 32` prints; got {} characters",
                text.len()
            ),
        )
    })?;
    let mut key = [0u8; 32];
    key.copy_from_slice(&bytes);
    Ok(key)
}

fn read_secret_file(key: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// Whether a cookie is one of the proxy's own sign-in cookies
/// (`__Host-mcp-*`, `mcp-*`). Browsers match the `__Host-`/`__Secure-`
/// prefixes ignoring case, so this does too.
pub fn is_own_cookie(name: &str) -> bool {
    let lower = name.trim().to_ascii_lowercase();
    let bare = lower
        .strip_prefix("__host-")
        .or_else(|| lower.strip_prefix("__secure-"))
        .unwrap_or(&lower);
    bare.starts_with("mcp-")
}

/// A `downstream.pass_cookies` entry: an RFC 6265 cookie name that is not
/// one of the proxy's own.
fn check_passable_cookie_name(name: &str) -> Result<(), String> {
    let is_token_char = |b: u8| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b);
    if name.is_empty() || !name.bytes().all(is_token_char) {
        return Err(format!("`{name}` is not a cookie name"));
    }
    if is_own_cookie(name) {
        return Err(format!(
            "`{name}` is (or looks like) the proxy's own sign-in cookie, which never reaches the downstream"
        ));
    }
    Ok(())
}

/// The effective configuration as TOML, secrets redacted.
pub fn render_redacted(config: &Config) -> String {
    toml::to_string_pretty(config)
        .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Loads `toml` with exactly `vars` as the environment (figment's Jail
    /// serialises tests that change the environment).
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn load_with(toml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut result = None;
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("c.toml", toml)?;
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            result = Some(load(Some(Path::new("c.toml"))));
            Ok(())
        });
        result.unwrap()
    }

    const MINIMAL: &str = r#"
[server]
public_url = "https://mcp.example.com/"
[upstream]
issuer = "https://idp.example.com"
client_id = "proxy"
client_secret = "s3cret"
[downstream]
url = "http://127.0.0.1:3000/mcp"
"#;

    #[test]
    fn minimal_file_with_key_from_env_validates() {
        let cfg = load_with(MINIMAL, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
        let settings = cfg.validate().unwrap();
        assert_eq!(settings.public_url, "https://mcp.example.com");
        assert_eq!(settings.issuer_url, "https://idp.example.com");
        assert_eq!(settings.config.tokens.access_ttl.secs(), 3600);
        assert_eq!(settings.config.tokens.refresh_ttl.secs(), 30 * 86400);
        assert!(settings.secure_cookies);
    }

    #[test]
    fn an_http_issuer_is_refused_unless_on_loopback() {
        let toml = MINIMAL.replace("https://idp.example.com", "http://idp.example.com");
        let err = load_with(&toml, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstream.issuer"), "{err}");
        assert!(err.contains("https"), "{err}");
        for loopback in ["http://127.0.0.1:9000", "http://localhost:9000/realms/x"] {
            let toml = MINIMAL.replace("https://idp.example.com", loopback);
            let cfg = load_with(&toml, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
            assert!(cfg.validate().is_ok(), "{loopback}");
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_source() {
        let err = load_with(&format!("{MINIMAL}\n[store]\npaht = \"x\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("store"), "{err}");
        assert!(err.contains("paht"), "{err}");
        assert!(err.contains("c.toml"), "{err}");
    }

    #[test]
    fn unknown_env_key_is_an_error() {
        let err = load_with(MINIMAL, &[("MCP_PROXY_SERVER__LISTNE", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("listne"), "{err}");
    }

    #[test]
    fn missing_public_url_is_named() {
        let err = load_with("[server]\nlisten = \"127.0.0.1:1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("public_url"), "{err}");
    }

    #[test]
    fn policy_max_header_bytes_defaults_and_is_bounded_by_name() {
        let with_key = [("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)];
        let cfg = load_with(MINIMAL, &with_key).unwrap();
        assert_eq!(cfg.policy.max_header_bytes, 8192);
        let cfg = load_with(
            &format!("{MINIMAL}[policy]\nmax_header_bytes = 10\n"),
            &with_key,
        )
        .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("policy.max_header_bytes:"), "{err}");
    }

    #[test]
    fn bad_encryption_key_names_the_key() {
        let cfg = load_with(MINIMAL, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", "short")]).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("secrets.encryption_key:"), "{err}");
        assert!(err.contains("openssl rand -hex 32"), "{err}");
    }

    #[test]
    fn original_worker_variables_work_unchanged() {
        let toml = "[server]\npublic_url = \"https://mcp.example.com\"\n";
        let cfg = load_with(
            toml,
            &[
                ("DOWNSTREAM_MCP_URL", "https://sy.example.com/mcp"),
                ("CF_ACCESS_CLIENT_ID", "abc123"),
                ("CF_ACCESS_CLIENT_SECRET", "secret"),
                ("CF_ACCESS_TEAM_DOMAIN", "myteam.cloudflareaccess.com"),
                ("COOKIE_ENCRYPTION_KEY", KEY),
            ],
        )
        .unwrap();
        let s = cfg.validate().unwrap();
        assert_eq!(
            s.issuer_url,
            "https://myteam.cloudflareaccess.com/cdn-cgi/access/sso/oidc/abc123"
        );
        assert_eq!(s.downstream_url.as_str(), "https://sy.example.com/mcp");
        assert_eq!(s.upstream_client_secret.unwrap().expose(), "secret");
    }

    #[test]
    fn our_variables_win_over_the_original_ones() {
        let cfg = load_with(
            MINIMAL,
            &[
                ("DOWNSTREAM_MCP_URL", "http://old/mcp"),
                ("MCP_PROXY_DOWNSTREAM__URL", "http://new/mcp"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.downstream.url.as_deref(), Some("http://new/mcp"));
    }

    #[test]
    fn env_values_are_taken_as_written() {
        let digits = "1".repeat(64);
        let cfg = load_with(
            MINIMAL,
            &[
                ("MCP_PROXY_SECRETS__ENCRYPTION_KEY", &digits),
                ("MCP_PROXY_UPSTREAM__SCOPES", "[openid, email]"),
                ("MCP_PROXY_UPSTREAM__USERINFO", "true"),
                ("MCP_PROXY_DOWNSTREAM__MAX_REQUEST_BYTES", "2048"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.upstream.scopes, vec!["openid", "email"]);
        assert!(cfg.upstream.userinfo);
        assert_eq!(cfg.downstream.max_request_bytes, 2048);
        assert_eq!(cfg.validate().unwrap().encryption_key, [0x11; 32]);
    }

    #[test]
    fn numeric_looking_env_values_stay_text() {
        let cfg = load_with(MINIMAL, &[("MCP_PROXY_UPSTREAM__CLIENT_ID", "123456")]).unwrap();
        assert_eq!(cfg.upstream.client_id.as_deref(), Some("123456"));
    }

    #[test]
    fn cloudflare_provider_requires_team_domain() {
        let toml = MINIMAL.replace(
            "issuer = \"https://idp.example.com\"",
            "provider = \"cloudflare-access\"",
        );
        let cfg = load_with(&toml, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("upstream.team_domain"), "{err}");
        let cfg = load_with(
            &toml,
            &[
                ("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY),
                ("MCP_PROXY_UPSTREAM__TEAM_DOMAIN", "acme"),
            ],
        )
        .unwrap();
        assert_eq!(
            cfg.validate().unwrap().issuer_url,
            "https://acme.cloudflareaccess.com/cdn-cgi/access/sso/oidc/proxy"
        );
    }

    #[test]
    fn missing_downstream_url_is_named() {
        let toml = MINIMAL.replace("url = \"http://127.0.0.1:3000/mcp\"", "");
        let cfg = load_with(&toml, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("downstream.url: is not set"), "{err}");
    }

    #[test]
    fn public_url_with_path_is_refused() {
        let toml = MINIMAL.replace("https://mcp.example.com/", "https://mcp.example.com/proxy");
        let cfg = load_with(&toml, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("server.public_url"));
    }

    #[test]
    fn invariant_11_access_bounds_default_and_name_their_keys() {
        let cfg = load_with(MINIMAL, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
        let settings = cfg.validate().unwrap();
        assert_eq!(settings.config.tokens.max_grant_age.secs(), 24 * 3600);
        assert_eq!(settings.config.upstream.revalidate_after, None);
        assert_eq!(settings.config.auth.stream_recheck_interval.secs(), 5);
        for (key, env) in [
            ("tokens.max_grant_age", "MCP_PROXY_TOKENS__MAX_GRANT_AGE"),
            (
                "upstream.revalidate_after",
                "MCP_PROXY_UPSTREAM__REVALIDATE_AFTER",
            ),
            (
                "auth.stream_recheck_interval",
                "MCP_PROXY_AUTH__STREAM_RECHECK_INTERVAL",
            ),
        ] {
            let cfg = load_with(
                MINIMAL,
                &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY), (env, "0s")],
            )
            .unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{err}");
        }
    }

    #[test]
    fn bad_duration_names_the_key() {
        let err = load_with(
            &format!("{MINIMAL}\n[tokens]\naccess_ttl = \"forever\"\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tokens.access_ttl"), "{err}");
        assert!(err.contains("forever"), "{err}");
    }

    #[test]
    fn redacted_rendering_hides_secrets() {
        let cfg = load_with(MINIMAL, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
        let text = render_redacted(&cfg);
        assert!(!text.contains("s3cret"), "{text}");
        assert!(!text.contains(KEY), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
        assert!(text.contains("https://idp.example.com"), "{text}");
    }

    #[test]
    fn invariant_9_connection_limits_default_and_bad_values_name_their_key() {
        let cfg = load_with(MINIMAL, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
        let server = &cfg.validate().unwrap().config.server;
        assert_eq!(server.header_timeout.secs(), 10);
        assert_eq!(server.idle_timeout.secs(), 60);
        assert_eq!(server.body_timeout.secs(), 30);
        assert_eq!(server.max_connections, 10_000);
        for (line, key) in [
            ("header_timeout = \"0s\"", "server.header_timeout"),
            ("idle_timeout = \"0s\"", "server.idle_timeout"),
            ("body_timeout = \"0s\"", "server.body_timeout"),
            ("max_connections = 0", "server.max_connections"),
            ("max_header_bytes = 100", "server.max_header_bytes"),
            ("max_headers = 0", "server.max_headers"),
            (
                "max_concurrent_streams = 0",
                "server.max_concurrent_streams",
            ),
        ] {
            let toml = MINIMAL.replace("[upstream]", &format!("{line}\n[upstream]"));
            let cfg = load_with(&toml, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{line}: {err}");
        }
        let cfg = load_with(
            MINIMAL,
            &[
                ("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY),
                ("MCP_PROXY_SERVER__MAX_CONNECTIONS", "250"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.server.max_connections, 250);
    }

    #[test]
    fn plain_http_on_a_real_host_disables_secure_cookies() {
        let toml = MINIMAL.replace("https://mcp.example.com/", "http://mcp.internal:8080");
        let cfg = load_with(&toml, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
        assert!(!cfg.validate().unwrap().secure_cookies);
    }

    #[test]
    fn rate_limits_are_on_by_default_and_each_can_be_switched_off() {
        let cfg = load_with(MINIMAL, &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)]).unwrap();
        for group in LimitGroup::ALL {
            let rate = cfg.limits.rate(group).unwrap();
            assert!(rate.is_some(), "{} is on by default", group.name());
        }
        let cfg = load_with(
            &format!("{MINIMAL}\n[limits.token]\nenabled = false\n"),
            &[
                ("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY),
                ("MCP_PROXY_LIMITS__MCP_USER__ENABLED", "false"),
                ("MCP_PROXY_LIMITS__REGISTER__REQUESTS", "7"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.limits.rate(LimitGroup::Token).unwrap(), None);
        assert_eq!(cfg.limits.rate(LimitGroup::McpUser).unwrap(), None);
        let register = cfg.limits.rate(LimitGroup::Register).unwrap().unwrap();
        // A burst left out follows a changed rate.
        assert_eq!((register.requests.get(), register.burst.get()), (7, 7));
        assert_eq!(register.period, Duration::from_secs(60));
        let cfg = load_with(
            &format!("{MINIMAL}\n[limits]\nenabled = false\n"),
            &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)],
        )
        .unwrap();
        for group in LimitGroup::ALL {
            assert_eq!(cfg.limits.rate(group).unwrap(), None);
        }
    }

    #[test]
    fn a_bad_rate_limit_names_its_key() {
        for (table, key) in [
            ("[limits.token]\nrequests = 0\n", "limits.token.requests"),
            (
                "[limits.mcp_client]\nburst = 0\n",
                "limits.mcp_client.burst",
            ),
            (
                "[limits.browser]\nperiod = \"0s\"\n",
                "limits.browser.period",
            ),
        ] {
            let cfg = load_with(
                &format!("{MINIMAL}\n{table}"),
                &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)],
            )
            .unwrap();
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{err}");
        }
        let err = load_with(
            &format!("{MINIMAL}\n[limits.token]\nrate = 5\n"),
            &[("MCP_PROXY_SECRETS__ENCRYPTION_KEY", KEY)],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("limits.token"), "{err}");
    }
}
