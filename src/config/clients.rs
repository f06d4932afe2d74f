//! `[[clients]]` (clients registered in the configuration rather than
//! through `/register`) and `[id_jag]` (which identity providers' ID-JAGs
//! the `jwt-bearer` grant accepts, and how strictly).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::lenient::{default_true, lenient_bool};
use super::validate::parse_http_url;
use super::{ConfigError, DurationStr};
use crate::net::is_loopback_host;

/// RFC 7523 §2.1: the grant type an ID-JAG is presented with.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The grant types a configured client may be allowed.
const GRANT_TYPES: [&str; 3] = ["authorization_code", "refresh_token", JWT_BEARER_GRANT];

/// The signature algorithms an ID-JAG may be signed with; `none` and the
/// HMAC family (a shared secret where a public key is expected) never are.
pub(crate) const SUPPORTED_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// One `[[clients]]` entry, as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientConfig {
    /// The client id it authenticates with.
    pub(crate) id: String,
    /// What people and the policy see; the id when absent.
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// SHA-256 of the secret, 64 hexadecimal characters
    /// (`printf %s "$SECRET" | sha256sum`).
    #[serde(default)]
    pub(crate) secret_hash: Option<String>,
    /// A file holding the secret itself (surrounding whitespace ignored).
    #[serde(default)]
    pub(crate) secret_file: Option<PathBuf>,
    /// The grant types it may use at `/token`.
    #[serde(default = "default_grant_types")]
    pub(crate) grant_types: Vec<String>,
    /// Its redirect URIs, matched exactly (needed for `authorization_code`).
    #[serde(default)]
    pub(crate) redirect_uris: Vec<String>,
}

fn default_grant_types() -> Vec<String> {
    vec![JWT_BEARER_GRANT.to_string()]
}

/// `[id_jag]`: the identity providers whose ID-JAGs are accepted.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdJagConfig {
    /// Trust ID-JAGs issued by `upstream.issuer` (keys from its discovery
    /// document's `jwks_uri`).
    #[serde(default = "default_true", deserialize_with = "lenient_bool")]
    pub(crate) trust_upstream: bool,
    /// The longest an ID-JAG may live (`exp` − `iat`).
    #[serde(default = "default_max_lifetime")]
    pub(crate) max_lifetime: DurationStr,
    /// How far the issuer's clock may be from ours.
    #[serde(default = "default_clock_skew")]
    pub(crate) clock_skew: DurationStr,
    /// The signature algorithms accepted.
    #[serde(default = "default_algorithms")]
    pub(crate) algorithms: Vec<String>,
    /// How long a fetched key set is used before it is fetched again.
    #[serde(default = "default_jwks_cache")]
    pub(crate) jwks_cache: DurationStr,
    /// The least time between two fetches of one issuer's keys (an unknown
    /// `kid` asks again at most this often).
    #[serde(default = "default_jwks_min_refetch")]
    pub(crate) jwks_min_refetch: DurationStr,
    /// Further issuers, each with its key set.
    #[serde(default)]
    pub(crate) issuers: Vec<TrustedIssuerConfig>,
}

impl Default for IdJagConfig {
    fn default() -> Self {
        IdJagConfig {
            trust_upstream: true,
            max_lifetime: default_max_lifetime(),
            clock_skew: default_clock_skew(),
            algorithms: default_algorithms(),
            jwks_cache: default_jwks_cache(),
            jwks_min_refetch: default_jwks_min_refetch(),
            issuers: Vec::new(),
        }
    }
}

fn default_max_lifetime() -> DurationStr {
    DurationStr::from_secs(600)
}
fn default_clock_skew() -> DurationStr {
    DurationStr::from_secs(60)
}
fn default_jwks_cache() -> DurationStr {
    DurationStr::from_secs(3600)
}
fn default_jwks_min_refetch() -> DurationStr {
    DurationStr::from_secs(30)
}
fn default_algorithms() -> Vec<String> {
    ["RS256", "ES256", "EdDSA"].map(String::from).to_vec()
}

/// One `[[id_jag.issuers]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrustedIssuerConfig {
    /// The `iss` its ID-JAGs carry, exactly.
    pub(crate) issuer: String,
    /// Where its public keys are (a JWK set).
    pub(crate) jwks_url: String,
}

/// A configured client, checked, its secret reduced to a hash.
#[derive(Debug, Clone)]
pub(crate) struct ConfiguredClient {
    /// `clients[i].id`.
    pub(crate) id: String,
    /// `clients[i].name`.
    pub(crate) name: Option<String>,
    /// SHA-256 hex of the secret (`crypto::token_hash`).
    pub(crate) secret_hash: String,
    /// `clients[i].grant_types`.
    pub(crate) grant_types: Vec<String>,
    /// `clients[i].redirect_uris`.
    pub(crate) redirect_uris: Vec<String>,
}

/// An issuer whose ID-JAGs are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrustedIssuer {
    /// Its `iss`.
    pub(crate) issuer: String,
    /// Its JWK set's URL; `None` for the upstream provider, whose URL
    /// discovery gives.
    pub(crate) jwks_url: Option<String>,
}

/// Checks `[[clients]]`; each error names `clients[<i>].<key>`.
pub(crate) fn validate_clients(
    clients: &[ClientConfig],
    allowed_schemes: &[String],
) -> Result<Vec<ConfiguredClient>, ConfigError> {
    let mut out: Vec<ConfiguredClient> = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let key = |k: &str| format!("clients[{i}].{k}");
        let id = client.id.trim();
        if id.is_empty()
            || id.len() > 200
            || id.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::invalid(
                key("id"),
                "must be 1 to 200 characters without spaces or control characters",
            ));
        }
        if id.contains("://") {
            return Err(ConfigError::invalid(
                key("id"),
                format!("`{id}` looks like a URL, which names a client metadata document; choose a plain id"),
            ));
        }
        if out.iter().any(|c| c.id == id) {
            return Err(ConfigError::invalid(
                key("id"),
                format!("`{id}` is used by another client"),
            ));
        }
        let secret_hash = client_secret_hash(client, &key)?;
        if client.grant_types.is_empty() {
            return Err(ConfigError::invalid(
                key("grant_types"),
                "must name at least one grant type",
            ));
        }
        for grant in &client.grant_types {
            if !GRANT_TYPES.contains(&grant.as_str()) {
                return Err(ConfigError::invalid(
                    key("grant_types"),
                    format!("`{grant}` is not one of: {}", GRANT_TYPES.join(", ")),
                ));
            }
        }
        let code = client.grant_types.iter().any(|g| g == "authorization_code");
        if code && client.redirect_uris.is_empty() {
            return Err(ConfigError::invalid(
                key("redirect_uris"),
                "must list at least one URI for the authorization_code grant",
            ));
        }
        for uri in &client.redirect_uris {
            // The rule a registering client meets (normal form, no
            // userinfo, readable host, allowed schemes): a URI stored in
            // another form could never match exactly at /authorize.
            crate::net::validate_for_registration(uri, allowed_schemes)
                .map_err(|m| ConfigError::invalid(key("redirect_uris"), m))?;
        }
        out.push(ConfiguredClient {
            id: id.to_string(),
            name: client.name.clone().filter(|n| !n.trim().is_empty()),
            secret_hash,
            grant_types: client.grant_types.clone(),
            redirect_uris: client.redirect_uris.clone(),
        });
    }
    Ok(out)
}

fn client_secret_hash(
    client: &ClientConfig,
    key: &dyn Fn(&str) -> String,
) -> Result<String, ConfigError> {
    match (&client.secret_hash, &client.secret_file) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            key("secret_file"),
            format!("set together with {}; keep one", key("secret_hash")),
        )),
        (None, None) => Err(ConfigError::invalid(
            key("secret_hash"),
            "is not set: a configured client is confidential; give the SHA-256 of its secret (`printf %s \"$SECRET\" | sha256sum`) or secret_file",
        )),
        (Some(hash), None) => {
            let hash = hash.trim().to_ascii_lowercase();
            if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(ConfigError::invalid(
                    key("secret_hash"),
                    "must be the SHA-256 of the secret as 64 hexadecimal characters (`printf %s \"$SECRET\" | sha256sum`)",
                ));
            }
            Ok(hash)
        }
        (None, Some(path)) => {
            let secret = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::invalid(key("secret_file"), format!("cannot read {}: {e}", path.display()))
            })?;
            let secret = secret.trim();
            if secret.len() < 16 {
                return Err(ConfigError::invalid(
                    key("secret_file"),
                    format!("{} holds a secret shorter than 16 characters", path.display()),
                ));
            }
            Ok(crate::crypto::token_hash(secret))
        }
    }
}

impl IdJagConfig {
    /// Checks `[id_jag]`; returns the trusted issuers, the upstream
    /// provider first when trusted.
    pub(crate) fn validate(
        &self,
        upstream_issuer: &str,
    ) -> Result<Vec<TrustedIssuer>, ConfigError> {
        if self.max_lifetime.0.is_zero() || self.max_lifetime.0.as_secs() > 3600 {
            return Err(ConfigError::invalid(
                "id_jag.max_lifetime",
                "must be between 1s and 1h",
            ));
        }
        if self.clock_skew.0.as_secs() > 300 {
            return Err(ConfigError::invalid(
                "id_jag.clock_skew",
                "must be at most 5m",
            ));
        }
        if self.jwks_cache.0.is_zero() || self.jwks_min_refetch.0.is_zero() {
            let key = if self.jwks_cache.0.is_zero() {
                "id_jag.jwks_cache"
            } else {
                "id_jag.jwks_min_refetch"
            };
            return Err(ConfigError::invalid(key, "must be longer than zero"));
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::invalid(
                "id_jag.algorithms",
                "must name at least one algorithm",
            ));
        }
        for alg in &self.algorithms {
            if !SUPPORTED_ALGORITHMS.contains(&alg.as_str()) {
                return Err(ConfigError::invalid(
                    "id_jag.algorithms",
                    format!(
                        "`{alg}` is not one of: {} (never none or HMAC)",
                        SUPPORTED_ALGORITHMS.join(", ")
                    ),
                ));
            }
        }
        let mut issuers = Vec::new();
        if self.trust_upstream {
            issuers.push(TrustedIssuer {
                issuer: upstream_issuer.to_string(),
                jwks_url: None,
            });
        }
        for (i, entry) in self.issuers.iter().enumerate() {
            for (k, value) in [("issuer", &entry.issuer), ("jwks_url", &entry.jwks_url)] {
                let key = format!("id_jag.issuers[{i}].{k}");
                let url = parse_http_url(&key, value)?;
                if url.scheme() != "https" && !is_loopback_host(url.host_str().unwrap_or_default())
                {
                    return Err(ConfigError::invalid(
                        key,
                        format!("`{value}` must be https (http only on a loopback host)"),
                    ));
                }
            }
            if issuers
                .iter()
                .any(|t: &TrustedIssuer| t.issuer == entry.issuer)
            {
                return Err(ConfigError::invalid(
                    format!("id_jag.issuers[{i}].issuer"),
                    format!("`{}` is trusted twice", entry.issuer),
                ));
            }
            issuers.push(TrustedIssuer {
                issuer: entry.issuer.clone(),
                jwks_url: Some(entry.jwks_url.clone()),
            });
        }
        Ok(issuers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str) -> ClientConfig {
        ClientConfig {
            id: id.into(),
            name: None,
            secret_hash: Some("a".repeat(64)),
            secret_file: None,
            grant_types: default_grant_types(),
            redirect_uris: vec![],
        }
    }

    fn error(clients: &[ClientConfig]) -> String {
        validate_clients(clients, &[]).unwrap_err().to_string()
    }

    #[test]
    fn each_client_error_names_its_key() {
        assert!(error(&[client("")]).starts_with("clients[0].id:"));
        assert!(error(&[client("a b")]).starts_with("clients[0].id:"));
        assert!(error(&[client("https://x.example/c")]).starts_with("clients[0].id:"));
        assert!(error(&[client("a"), client("a")]).starts_with("clients[1].id:"));
        let mut c = client("a");
        c.secret_hash = Some("xyz".into());
        assert!(error(&[c.clone()]).starts_with("clients[0].secret_hash:"));
        c.secret_hash = None;
        assert!(error(&[c.clone()]).starts_with("clients[0].secret_hash:"));
        c.secret_hash = Some("a".repeat(64));
        c.secret_file = Some("/nonexistent".into());
        assert!(error(&[c]).starts_with("clients[0].secret_file:"));
        let mut c = client("a");
        c.grant_types = vec!["password".into()];
        assert!(error(&[c.clone()]).starts_with("clients[0].grant_types:"));
        c.grant_types = vec!["authorization_code".into()];
        assert!(error(&[c.clone()]).starts_with("clients[0].redirect_uris:"));
        c.redirect_uris = vec!["http://app.example.com/cb".into()];
        assert!(error(&[c.clone()]).starts_with("clients[0].redirect_uris:"));
        // The same rule a registering client meets: a URI that could never
        // match exactly at /authorize, or with userinfo, or an app scheme
        // the operator did not allow, is refused.
        for uri in [
            "https://App.Example.com/cb",
            "https://user@app.example.com/cb",
            "cursor://callback",
        ] {
            c.redirect_uris = vec![uri.into()];
            assert!(
                error(&[c.clone()]).starts_with("clients[0].redirect_uris:"),
                "{uri}"
            );
        }
        c.redirect_uris = vec!["cursor://callback".into()];
        assert!(validate_clients(&[c.clone()], &["cursor".into()]).is_ok());
        c.redirect_uris = vec![
            "http://127.0.0.1:5000/cb".into(),
            "https://app.example.com/cb".into(),
        ];
        assert_eq!(
            validate_clients(&[c], &[]).unwrap()[0].redirect_uris.len(),
            2
        );
    }

    #[test]
    fn a_secret_file_is_hashed_and_never_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "correct-horse-battery-staple\n").unwrap();
        let mut c = client("agent");
        c.secret_hash = None;
        c.secret_file = Some(path);
        let configured = validate_clients(&[c], &[]).unwrap();
        assert_eq!(
            configured[0].secret_hash,
            crate::crypto::token_hash("correct-horse-battery-staple")
        );
    }

    #[test]
    fn issuers_and_algorithms_are_checked() {
        let mut cfg = IdJagConfig::default();
        assert_eq!(cfg.validate("https://idp.example.com").unwrap().len(), 1);
        cfg.algorithms = vec!["HS256".into()];
        assert!(cfg
            .validate("x")
            .unwrap_err()
            .to_string()
            .starts_with("id_jag.algorithms:"));
        cfg.algorithms = vec!["none".into()];
        assert!(cfg.validate("x").is_err());
        cfg.algorithms = default_algorithms();
        cfg.issuers.push(TrustedIssuerConfig {
            issuer: "https://other.example.com".into(),
            jwks_url: "http://other.example.com/keys".into(),
        });
        assert!(cfg
            .validate("x")
            .unwrap_err()
            .to_string()
            .starts_with("id_jag.issuers[0].jwks_url:"));
        cfg.issuers[0].jwks_url = "https://other.example.com/keys".into();
        cfg.trust_upstream = false;
        let trusted = cfg.validate("https://idp.example.com").unwrap();
        assert_eq!(trusted.len(), 1);
        assert_eq!(
            trusted[0].jwks_url.as_deref(),
            Some("https://other.example.com/keys")
        );
        cfg.trust_upstream = true;
        cfg.issuers[0].issuer = "https://idp.example.com".into();
        assert!(cfg
            .validate("https://idp.example.com")
            .unwrap_err()
            .to_string()
            .starts_with("id_jag.issuers[0].issuer:"));
    }
}
