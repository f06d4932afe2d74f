//! Configuration: defaults ← TOML file ← the original worker's variables ←
//! `MCP_PROXY_*` environment variables (`__` separates nesting).
//!
//! Every key is known: an unknown key, a missing required key or a bad value is
//! an error that names the key and where its value came from.
//!
//! This file holds the entry points (loading, [`Config`], [`Settings`],
//! [`ConfigError`]); each `[table]` has its own file with its defaults,
//! `env.rs` reads the environment and `validate.rs` turns a `Config` into
//! `Settings`.

mod access;
mod assertion;
mod clients;
mod downstream;
mod duration;
mod env;
mod lenient;
mod limits;
mod operations;
mod policy;
mod route_checks;
mod routes;
mod secret;
mod server;
mod upstream;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub(crate) use access::{AuthConfig, ConsentConfig, RegistrationConfig, TokensConfig};
pub use assertion::IdentityAssertionConfig;
pub use clients::JWT_BEARER_GRANT;
pub(crate) use clients::{ClientConfig, ConfiguredClient, IdJagConfig, TrustedIssuer};
pub(crate) use downstream::{is_own_cookie, DownstreamConfig};
pub(crate) use duration::DurationStr;
use env::EnvProvider;
#[cfg(test)]
pub(crate) use limits::RateLimitConfig;
pub use limits::{LimitGroup, LimitsConfig, Rate};
pub(crate) use operations::MetricsConfig;
pub use operations::{LogConfig, LogFormat, StoreConfig};
pub use policy::PolicyConfig;
pub(crate) use policy::DEFAULT_MAX_HEADER_BYTES;
pub(crate) use routes::RouteConfig;
pub use routes::{LayersConfig, RouteSettings, DEFAULT_ROUTE};
pub(crate) use secret::{Secret, SecretsConfig};
pub use server::ServerConfig;
pub(crate) use upstream::{Provider, UpstreamConfig};

/// Why the configuration could not be loaded or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The sources could not be read or merged into a [`Config`]; one line
    /// per problem, each naming its key and source.
    #[error("{0}")]
    Load(String),
    /// A value is missing or wrong.
    #[error("{key}: {message}")]
    Invalid {
        /// The key at fault, e.g. `server.public_url` or
        /// `routes[github].downstream.url`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The whole configuration, as read from file and environment.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`, the one required table (for `public_url`).
    pub server: ServerConfig,
    /// `[upstream]`.
    #[serde(default)]
    pub(crate) upstream: UpstreamConfig,
    /// `[downstream]`.
    #[serde(default)]
    pub(crate) downstream: DownstreamConfig,
    /// `[auth]`.
    #[serde(default)]
    pub(crate) auth: AuthConfig,
    /// `[store]`.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[policy]`.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// `[secrets]`.
    #[serde(default)]
    pub(crate) secrets: SecretsConfig,
    /// `[tokens]`.
    #[serde(default)]
    pub(crate) tokens: TokensConfig,
    /// `[registration]`.
    #[serde(default)]
    pub(crate) registration: RegistrationConfig,
    /// `[consent]`.
    #[serde(default)]
    pub(crate) consent: ConsentConfig,
    /// `[log]`.
    #[serde(default)]
    pub log: LogConfig,
    /// `[metrics]`.
    #[serde(default)]
    pub(crate) metrics: MetricsConfig,
    /// `[limits]`.
    #[serde(default)]
    pub(crate) limits: LimitsConfig,
    /// `[layers]`: the optional layers of the default route.
    #[serde(default)]
    pub(crate) layers: LayersConfig,
    /// `[[routes]]`: further MCP servers, each at its own path.
    #[serde(default)]
    pub(crate) routes: Vec<RouteConfig>,
    /// `[[clients]]`: clients registered in the configuration.
    #[serde(default)]
    pub(crate) clients: Vec<ClientConfig>,
    /// `[id_jag]`: the identity providers whose ID-JAGs are accepted.
    #[serde(default)]
    pub(crate) id_jag: IdJagConfig,
    /// `[identity_assertion]`: the signed identity sent downstream.
    #[serde(default)]
    pub identity_assertion: IdentityAssertionConfig,
}

/// Settings derived and checked once at startup, in the form the code uses.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration as written (after defaults).
    pub config: Config,
    /// `server.public_url` without a trailing slash; the issuer.
    pub public_url: String,
    /// The OpenID provider's issuer, given or derived from the Cloudflare
    /// Access team, without a trailing slash.
    pub issuer_url: String,
    /// The proxy's client id at the provider.
    pub(crate) upstream_client_id: String,
    /// The proxy's client secret at the provider, read from its file if
    /// need be.
    pub(crate) upstream_client_secret: Option<Secret>,
    /// `secrets.encryption_key`, decoded.
    pub(crate) encryption_key: [u8; 32],
    /// Every MCP route: the default one (`[downstream]`) first, when
    /// `downstream.url` is set, then `[[routes]]` in their order.
    pub routes: Vec<RouteSettings>,
    /// `server.trusted_proxies`, parsed.
    pub(crate) trusted_proxies: crate::client_address::TrustedProxies,
    /// Cookies use the `__Host-` prefix and `Secure` unless the public URL is
    /// plain http on a non-loopback host, where browsers would drop them.
    pub(crate) secure_cookies: bool,
    /// `[[clients]]`, checked, secrets reduced to hashes.
    pub(crate) clients: Vec<ConfiguredClient>,
    /// The issuers whose ID-JAGs are accepted (`[id_jag]`).
    pub(crate) id_jag_issuers: Vec<TrustedIssuer>,
}

impl Settings {
    /// Where the provider sends people back after sign-in.
    pub(crate) fn callback_url(&self) -> String {
        format!("{}/callback", self.public_url)
    }
}

/// Loads the configuration: defaults ← `path` ← the original worker's
/// variables ← `MCP_PROXY_*`.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    env::with_route_overrides(figment(path))?
        .extract::<Config>()
        .map_err(|e| ConfigError::Load(describe_figment_error(e)))
}

/// The figment with every source, in precedence order (later wins).
pub(crate) fn figment(path: Option<&Path>) -> Figment {
    let mut figment = Figment::new();
    if let Some(path) = path {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment.merge(EnvProvider::Legacy).merge(EnvProvider::Ours)
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

/// The effective configuration as TOML, secrets redacted.
pub fn render_redacted(config: &Config) -> String {
    toml::to_string_pretty(config)
        .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
}
