//! Turning the [`Config`] as written into the [`Settings`] the code uses.
//! Every check names the key at fault; checks run in a fixed order, so the
//! first problem reported is always the same one.

use std::path::Path;

use url::Url;

use super::{Config, ConfigError, LimitGroup, Provider, Secret, Settings};
use crate::client_address::TrustedProxies;
use crate::net::{check_allowed_scheme, is_loopback_host};

impl Config {
    /// Checks values and derives what the code uses. Errors name the key.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let public_url = validate_public_url(&self.server.public_url)?;
        let issuer_url = self.derive_issuer()?;
        let (upstream_client_id, upstream_client_secret) = self.upstream_client()?;
        let encryption_key = parse_key(&self.encryption_key_text()?)?;
        let (allowed_origins, trusted_proxies) = self.server_peers()?;
        let routes = self.routes(&allowed_origins)?;
        self.check_bounds_and_names()?;
        self.check_durations_and_rates()?;
        self.identity_assertion.check()?;
        let secure_cookies = secure_cookies(&public_url)?;
        let clients =
            super::clients::validate_clients(&self.clients, &self.registration.allowed_schemes)?;
        let id_jag_issuers = self.id_jag.validate(&issuer_url)?;
        Ok(Settings {
            clients,
            id_jag_issuers,
            public_url,
            issuer_url,
            upstream_client_id,
            upstream_client_secret,
            encryption_key,
            routes,
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

    /// The proxy's client id and secret at the provider.
    fn upstream_client(&self) -> Result<(String, Option<Secret>), ConfigError> {
        let client_id = self
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
        let client_secret = match (
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
        Ok((client_id, client_secret))
    }

    /// The encryption key as written, from the configuration or its file.
    fn encryption_key_text(&self) -> Result<String, ConfigError> {
        match (&self.secrets.encryption_key, &self.secrets.encryption_key_file) {
            (Some(_), Some(_)) => Err(ConfigError::invalid(
                "secrets.encryption_key_file",
                "set together with secrets.encryption_key; keep one",
            )),
            (Some(secret), None) => Ok(secret.expose().to_string()),
            (None, Some(file)) => read_secret_file("secrets.encryption_key_file", file),
            (None, None) => Err(ConfigError::invalid(
                "secrets.encryption_key",
                "is not set; generate one with `openssl rand -hex 32` (env MCP_PROXY_SECRETS__ENCRYPTION_KEY or COOKIE_ENCRYPTION_KEY)",
            )),
        }
    }

    /// Who may talk to the listeners: browser origins, the admin address,
    /// the load balancers in front.
    fn server_peers(&self) -> Result<(Vec<String>, TrustedProxies), ConfigError> {
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
        let trusted_proxies = TrustedProxies::parse(&self.server.trusted_proxies)
            .map_err(|m| ConfigError::invalid("server.trusted_proxies", m))?;
        Ok((allowed_origins, trusted_proxies))
    }

    /// Sizes and counts within their bounds; names (cookies, headers,
    /// schemes) well formed.
    fn check_bounds_and_names(&self) -> Result<(), ConfigError> {
        self.server.validate_limits()?;
        for scheme in &self.registration.allowed_schemes {
            check_allowed_scheme(scheme)
                .map_err(|m| ConfigError::invalid("registration.allowed_schemes", m))?;
        }
        if self.registration.max_redirect_uris == 0 || self.registration.max_redirect_uris > 100 {
            return Err(ConfigError::invalid(
                "registration.max_redirect_uris",
                "must be between 1 and 100",
            ));
        }
        Ok(())
    }

    /// Every lifetime and interval longer than zero; every rate limit whole.
    fn check_durations_and_rates(&self) -> Result<(), ConfigError> {
        let revalidate_after = self
            .upstream
            .revalidate_after
            .unwrap_or(self.tokens.access_ttl);
        for (key, value) in [
            ("tokens.access_ttl", self.tokens.access_ttl),
            ("tokens.refresh_ttl", self.tokens.refresh_ttl),
            ("tokens.code_ttl", self.tokens.code_ttl),
            ("tokens.max_grant_age", self.tokens.max_grant_age),
            ("upstream.revalidate_after", revalidate_after),
            (
                "auth.stream_recheck_interval",
                self.auth.stream_recheck_interval,
            ),
            ("registration.client_ttl", self.registration.client_ttl),
            ("store.purge_interval", self.store.purge_interval),
            ("auth.cache_ttl", self.auth.cache_ttl),
        ] {
            if value.0.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than zero"));
            }
        }
        for group in LimitGroup::ALL {
            self.limits.rate(group)?;
        }
        Ok(())
    }
}

/// Cookies use the `__Host-` prefix and `Secure` unless the public URL is
/// plain http on a non-loopback host, where browsers would drop them.
fn secure_cookies(public_url: &str) -> Result<bool, ConfigError> {
    let url = Url::parse(public_url)
        .map_err(|e| ConfigError::invalid("server.public_url", e.to_string()))?;
    Ok(url.scheme() == "https" || is_loopback_host(url.host_str().unwrap_or_default()))
}

/// Cloudflare Access SaaS OIDC applications have one issuer per application.
pub(crate) fn cloudflare_access_issuer(team_domain: &str, client_id: &str) -> String {
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

pub(super) fn parse_http_url(key: &str, text: &str) -> Result<Url, ConfigError> {
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
