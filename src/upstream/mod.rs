//! The upstream leg: the company's OpenID Connect provider, through the
//! `openidconnect` crate (discovery, PKCE, state, nonce, id_token checks).
//!
//! The HTTP client follows no redirects, so a provider cannot bounce the
//! proxy's back-channel requests elsewhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreErrorResponseType, CoreIdToken, CoreProviderMetadata,
};
use openidconnect::{
    reqwest, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    TokenResponse,
};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};

use crate::config::Settings;
use crate::error::error_chain;
use crate::metrics::labels::UpstreamOperation;
use crate::metrics::Metrics;
use crate::store::UpstreamTokens;

type DiscoveredClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Re-discovery (new signing keys) happens at most this often.
const REDISCOVERY_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("OpenID provider discovery failed for {issuer}: {message}")]
    Discovery { issuer: String, message: String },
    #[error("Token exchange failed: {0}")]
    TokenExchange(String),
    #[error("the provider's id_token was not accepted: {0}")]
    IdToken(String),
    #[error("the provider's userinfo could not be read: {0}")]
    Userinfo(String),
    #[error("the provider is misconfigured: {0}")]
    Configuration(String),
    #[error("the provider's {endpoint} `{url}` is not https; only a provider on a loopback address may use http (check upstream.issuer and the provider's discovery document)")]
    InsecureEndpoint { endpoint: &'static str, url: String },
}

/// Why the provider's tokens could not be renewed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RefreshError {
    /// The provider said no (`invalid_grant`): the sign-in is over.
    #[error("the provider refused to renew the sign-in: {0}")]
    Refused(String),
    /// The provider could not be asked; try again later.
    #[error("the provider could not renew the sign-in now: {0}")]
    Unavailable(String),
}

/// Where to send the browser, and what to remember until it comes back.
pub(crate) struct AuthorizationStart {
    pub url: url::Url,
    pub state: String,
    pub pkce_verifier: String,
    pub nonce: String,
}

/// Who logged in, as the provider said.
pub(crate) struct UpstreamIdentity {
    pub claims: Map<String, Value>,
    pub tokens: UpstreamTokens,
}

pub(crate) struct Upstream {
    metrics: Arc<Metrics>,
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    redirect_url: String,
    scopes: Vec<String>,
    userinfo: bool,
    http: reqwest::Client,
    client: RwLock<Option<Arc<DiscoveredClient>>>,
    last_discovery: Mutex<Option<Instant>>,
}

impl Upstream {
    pub(crate) fn new(settings: &Settings, metrics: Arc<Metrics>) -> Result<Self, UpstreamError> {
        let http = reqwest::ClientBuilder::new()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.config.upstream.timeout.0)
            .user_agent(concat!("mcp-oauth-proxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| UpstreamError::Configuration(e.to_string()))?;
        Ok(Upstream {
            metrics,
            issuer: settings.issuer_url.clone(),
            client_id: settings.upstream_client_id.clone(),
            client_secret: settings
                .upstream_client_secret
                .as_ref()
                .map(|s| s.expose().to_string()),
            redirect_url: settings.callback_url(),
            scopes: settings.config.upstream.scopes.clone(),
            userinfo: settings.config.upstream.userinfo,
            http,
            client: RwLock::new(None),
            last_discovery: Mutex::new(None),
        })
    }

    pub(crate) fn issuer(&self) -> &str {
        &self.issuer
    }

    fn observe(&self, operation: UpstreamOperation, started: Instant, ok: bool) {
        self.metrics
            .observe_upstream(operation, started.elapsed(), ok);
    }

    /// True once discovery succeeded (readiness).
    pub(crate) async fn is_discovered(&self) -> bool {
        self.client.read().await.is_some()
    }

    /// The discovered client, discovering on first use.
    pub(crate) async fn client(&self) -> Result<Arc<DiscoveredClient>, UpstreamError> {
        if let Some(client) = self.client.read().await.as_ref() {
            return Ok(client.clone());
        }
        self.rediscover(true).await
    }

    /// Fetches the provider metadata and keys again. Unless `force`d, at most
    /// once per `REDISCOVERY_INTERVAL`.
    async fn rediscover(&self, force: bool) -> Result<Arc<DiscoveredClient>, UpstreamError> {
        let mut last = self.last_discovery.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < REDISCOVERY_INTERVAL) {
            if let Some(client) = self.client.read().await.as_ref() {
                return Ok(client.clone());
            }
        }
        let discovery_error = |message: String| UpstreamError::Discovery {
            issuer: self.issuer.clone(),
            message,
        };
        let issuer =
            IssuerUrl::new(self.issuer.clone()).map_err(|e| discovery_error(e.to_string()))?;
        let started = Instant::now();
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http).await;
        self.observe(UpstreamOperation::Discovery, started, metadata.is_ok());
        let metadata = metadata.map_err(|e| discovery_error(error_chain(&e)))?;
        check_endpoints_are_https(&metadata)?;
        let redirect = RedirectUrl::new(self.redirect_url.clone())
            .map_err(|e| UpstreamError::Configuration(e.to_string()))?;
        let client = Arc::new(
            CoreClient::from_provider_metadata(
                metadata,
                ClientId::new(self.client_id.clone()),
                self.client_secret.clone().map(ClientSecret::new),
            )
            .set_redirect_uri(redirect),
        );
        *self.client.write().await = Some(client.clone());
        *last = Some(Instant::now());
        tracing::info!(issuer = %self.issuer, "OpenID provider discovered");
        Ok(client)
    }

    /// Starts a login: the provider URL with state, nonce and a PKCE S256
    /// challenge.
    pub(crate) async fn start(&self) -> Result<AuthorizationStart, UpstreamError> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in self.scopes.iter().filter(|s| s.as_str() != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        Ok(AuthorizationStart {
            url,
            state: state.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
        })
    }

    /// Exchanges the provider's code, verifies the id_token (issuer, audience,
    /// signature, expiry, nonce) and collects the claims.
    pub(crate) async fn finish(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<UpstreamIdentity, UpstreamError> {
        let client = self.client().await?;
        let started = Instant::now();
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| UpstreamError::Configuration(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&self.http)
            .await;
        self.observe(UpstreamOperation::Token, started, response.is_ok());
        let response = response.map_err(|e| UpstreamError::TokenExchange(error_chain(&e)))?;
        let id_token = response.id_token().ok_or_else(|| {
            UpstreamError::IdToken(
                "the token response has no id_token (is the `openid` scope granted?)".into(),
            )
        })?;
        let nonce = Nonce::new(nonce.to_string());
        let verified = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Ok(claims) => Ok(claims.subject().to_string()),
            // The provider may have rotated its keys: fetch them once more.
            Err(ClaimsVerificationError::SignatureVerification(_)) => {
                let fresh = self.rediscover(false).await?;
                let verifier = fresh.id_token_verifier();
                let subject = id_token
                    .claims(&verifier, &nonce)
                    .map(|c| c.subject().to_string());
                subject
            }
            Err(e) => Err(e),
        };
        let subject = verified.map_err(|e| UpstreamError::IdToken(e.to_string()))?;
        let id_token_text = id_token.to_string();
        let mut claims = jwt_payload(&id_token_text)?;
        let access_token = response.access_token().secret().clone();
        if self.userinfo {
            let info = self.userinfo(&client, &access_token, &subject).await?;
            for (k, v) in info {
                claims.entry(k).or_insert(v);
            }
        }
        let expires_at = response
            .expires_in()
            .map(|d| crate::now_unix() + d.as_secs() as i64);
        Ok(UpstreamIdentity {
            claims,
            tokens: UpstreamTokens {
                access_token,
                id_token: Some(id_token_text),
                refresh_token: response.refresh_token().map(|t| t.secret().clone()),
                expires_at,
            },
        })
    }

    /// Renews the provider's tokens with its refresh token, re-reading the
    /// claims (from a new id_token, or userinfo when configured). The
    /// subject must not change.
    pub(crate) async fn refresh(
        &self,
        current: &UpstreamTokens,
        claims: &Map<String, Value>,
    ) -> Result<UpstreamIdentity, RefreshError> {
        let refresh_token = current
            .refresh_token
            .as_deref()
            .ok_or_else(|| RefreshError::Refused("the provider issued no refresh token".into()))?;
        let client = self
            .client()
            .await
            .map_err(|e| RefreshError::Unavailable(e.to_string()))?;
        let started = Instant::now();
        let token = RefreshToken::new(refresh_token.to_string());
        let response = client
            .exchange_refresh_token(&token)
            .map_err(|e| RefreshError::Unavailable(e.to_string()))?
            .request_async(&self.http)
            .await;
        self.observe(UpstreamOperation::Refresh, started, response.is_ok());
        let response = response.map_err(|e| match &e {
            RequestTokenError::ServerResponse(r)
                if *r.error() == CoreErrorResponseType::InvalidGrant =>
            {
                RefreshError::Refused(error_chain(&e))
            }
            _ => RefreshError::Unavailable(error_chain(&e)),
        })?;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let (mut renewed, id_token_text) = match response.id_token() {
            Some(id_token) => renewed_id_token(&client, id_token, &subject)?,
            None => (claims.clone(), current.id_token.clone()),
        };
        let access_token = response.access_token().secret().clone();
        if self.userinfo {
            let info = self
                .userinfo(&client, &access_token, &subject)
                .await
                .map_err(|e| RefreshError::Unavailable(e.to_string()))?;
            for (k, v) in info {
                renewed.insert(k, v);
            }
        }
        Ok(UpstreamIdentity {
            claims: renewed,
            tokens: UpstreamTokens {
                access_token,
                id_token: id_token_text,
                // Providers that do not rotate send no new refresh token.
                refresh_token: response
                    .refresh_token()
                    .map(|t| t.secret().clone())
                    .or_else(|| current.refresh_token.clone()),
                expires_at: response
                    .expires_in()
                    .map(|d| crate::now_unix() + d.as_secs() as i64),
            },
        })
    }

    async fn userinfo(
        &self,
        client: &DiscoveredClient,
        access_token: &str,
        subject: &str,
    ) -> Result<Map<String, Value>, UpstreamError> {
        let url = client
            .user_info_url()
            .ok_or_else(|| {
                UpstreamError::Userinfo(
                    "upstream.userinfo is on but the provider has no userinfo_endpoint".into(),
                )
            })?
            .url()
            .clone();
        let started = Instant::now();
        let response = self
            .http
            .get(url)
            .bearer_auth(access_token)
            .header("accept", "application/json")
            .send()
            .await;
        self.observe(
            UpstreamOperation::Userinfo,
            started,
            response.as_ref().is_ok_and(|r| r.status().is_success()),
        );
        let response = response.map_err(|e| UpstreamError::Userinfo(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(UpstreamError::Userinfo(format!(
                "status {}",
                response.status()
            )));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| UpstreamError::Userinfo(error_chain(&e)))?;
        let info: Map<String, Value> = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Userinfo(format!("not a JSON object: {e}")))?;
        // OIDC Core §5.3.2: the userinfo sub must equal the id_token's.
        if info.get("sub").and_then(Value::as_str) != Some(subject) {
            return Err(UpstreamError::Userinfo(
                "its `sub` differs from the id_token's".into(),
            ));
        }
        Ok(info)
    }
}

/// Every URL discovery names (the issuer, where the browser is sent, where
/// codes, tokens and keys travel) must be https, unless the provider runs on
/// a loopback address (development, tests): over plain http anyone on the
/// path could read the codes and tokens or swap the signing keys.
fn check_endpoints_are_https(metadata: &CoreProviderMetadata) -> Result<(), UpstreamError> {
    let endpoints = [
        ("issuer", Some(metadata.issuer().url())),
        (
            "authorization_endpoint",
            Some(metadata.authorization_endpoint().url()),
        ),
        ("token_endpoint", metadata.token_endpoint().map(|u| u.url())),
        (
            "userinfo_endpoint",
            metadata.userinfo_endpoint().map(|u| u.url()),
        ),
        ("jwks_uri", Some(metadata.jwks_uri().url())),
        (
            "registration_endpoint",
            metadata.registration_endpoint().map(|u| u.url()),
        ),
    ];
    for (endpoint, url) in endpoints {
        let Some(url) = url else { continue };
        let loopback = url.host_str().is_some_and(crate::net::is_loopback_host);
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(UpstreamError::InsecureEndpoint {
                endpoint,
                url: url.to_string(),
            });
        }
    }
    Ok(())
}

/// The claims of an already verified JWT, as a map.
/// The claims a renewed id_token carries, once it is checked (no nonce on a
/// refresh, OIDC Core §12.2; everything else is) and names the same subject.
fn renewed_id_token(
    client: &DiscoveredClient,
    id_token: &CoreIdToken,
    subject: &str,
) -> Result<(Map<String, Value>, Option<String>), RefreshError> {
    let verifier = client.id_token_verifier();
    let verified = id_token
        .claims(&verifier, |_: Option<&Nonce>| Ok(()))
        .map(|c| c.subject().to_string())
        .map_err(|e| {
            RefreshError::Unavailable(format!("the renewed id_token was not accepted: {e}"))
        })?;
    if verified != subject {
        return Err(RefreshError::Refused(
            "the renewed id_token names another subject".into(),
        ));
    }
    let text = id_token.to_string();
    let claims = jwt_payload(&text).map_err(|e| RefreshError::Unavailable(e.to_string()))?;
    Ok((claims, Some(text)))
}

fn jwt_payload(jwt: &str) -> Result<Map<String, Value>, UpstreamError> {
    let payload = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| UpstreamError::IdToken("not a JWS".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| UpstreamError::IdToken(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| UpstreamError::IdToken(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metadata(issuer: &str, overrides: Value) -> CoreProviderMetadata {
        let mut document = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "userinfo_endpoint": format!("{issuer}/userinfo"),
            "jwks_uri": format!("{issuer}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        for (k, v) in overrides.as_object().unwrap() {
            document[k] = v.clone();
        }
        serde_json::from_value(document).unwrap()
    }

    #[test]
    fn discovered_endpoints_must_be_https_except_on_loopback() {
        for endpoint in [
            "authorization_endpoint",
            "token_endpoint",
            "userinfo_endpoint",
            "jwks_uri",
            "registration_endpoint",
        ] {
            let m = metadata(
                "https://idp.example.com",
                json!({ endpoint: "http://idp.example.com/x" }),
            );
            let err = check_endpoints_are_https(&m).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(endpoint), "{text}");
            assert!(text.contains("http://idp.example.com/x"), "{text}");
        }
        let err =
            check_endpoints_are_https(&metadata("http://idp.example.com", json!({}))).unwrap_err();
        assert!(err.to_string().contains("issuer"), "{err}");
        for ok in [
            "https://idp.example.com",
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
        ] {
            assert!(
                check_endpoints_are_https(&metadata(ok, json!({}))).is_ok(),
                "{ok}"
            );
        }
        // Loopback means the endpoint's own host, not the issuer's.
        let m = metadata(
            "http://127.0.0.1:8080",
            json!({"token_endpoint": "http://10.0.0.5/token"}),
        );
        assert!(check_endpoints_are_https(&m).is_err());
    }
}
