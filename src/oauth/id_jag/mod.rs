//! The RFC 7523 `jwt-bearer` grant for Identity Assertion JWT
//! Authorization Grants (ID-JAGs; draft-ietf-oauth-identity-assertion-authz-grant,
//! MCP's `io.modelcontextprotocol/enterprise-managed-authorization`).
//!
//! A pre-registered confidential client presents an ID-JAG its company's
//! provider minted for this authorization server. It is checked (header,
//! trusted issuer, signature with the issuer's published keys, `aud`,
//! `client_id`, times, `resource`, `scope`), spent (`jti`, in the store so
//! replicas share it), `login()` runs on its claims, and the tokens are
//! issued exactly as after a browser sign-in — through a grant and a code
//! redeemed at once — but without a refresh token: the provider decides
//! how long access lasts by minting the next ID-JAG (draft §5.2).

mod claims;
pub(crate) mod keys;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{Settings, TrustedIssuer};
use crate::error::OAuthError;
use crate::grants::{CodeRedemption, IssuedTokens};
use crate::now_unix;
use crate::oauth::{validate_resource, OAuthState, Params};
use crate::policy::login::{Login, LoginRefused};
use crate::session::UpstreamTokens;
use crate::store::{ClientRecord, GrantSecrets, PendingAuthorization};
use crate::upstream::UpstreamError;
use keys::{KeyError, KeySets};

/// The grant profile the authorization server metadata advertises
/// (draft §7.2, `authorization_grant_profiles_supported`).
pub(crate) const ID_JAG_PROFILE: &str = "urn:ietf:params:oauth:grant-profile:id-jag";

/// What the grant checks assertions against, built once at start.
pub(crate) struct IdJag {
    keys: KeySets,
    issuers: Vec<TrustedIssuer>,
    algorithms: Vec<Algorithm>,
    skew: i64,
    max_lifetime: i64,
}

impl IdJag {
    /// The trusted issuers and limits of `[id_jag]`.
    pub(crate) fn from_settings(settings: &Settings) -> Result<Self, UpstreamError> {
        let config = &settings.config.id_jag;
        let keys = KeySets::new(config.jwks_cache.0, config.jwks_min_refetch.0)
            .map_err(UpstreamError::Configuration)?;
        Ok(IdJag {
            keys,
            issuers: settings.id_jag_issuers.clone(),
            // Validation admitted only names this parse knows.
            algorithms: config
                .algorithms
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            skew: config.clock_skew.0.as_secs() as i64,
            max_lifetime: config.max_lifetime.0.as_secs() as i64,
        })
    }
}

/// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` at `/token`,
/// for an authenticated `client` allowed the grant. Every refusal is
/// logged with its reason (never the assertion).
pub(crate) async fn exchange(
    app: &OAuthState,
    client: &ClientRecord,
    params: &Params,
) -> Result<IssuedTokens, OAuthError> {
    let result = exchange_inner(app, client, params).await;
    if let Err(e) = &result {
        tracing::info!(client_id = %client.client_id, error = e.code, reason = %e.description, "ID-JAG refused");
    }
    result
}

async fn exchange_inner(
    app: &OAuthState,
    client: &ClientRecord,
    params: &Params,
) -> Result<IssuedTokens, OAuthError> {
    // Draft §9.1: only confidential clients may present an ID-JAG.
    if client.is_public() {
        return Err(OAuthError::unauthorized_client(
            "the jwt-bearer grant needs a confidential client",
        ));
    }
    let assertion = params
        .get("assertion")
        .ok_or_else(|| OAuthError::invalid_request("assertion is required"))?;
    let (issuer, claims) = verified_claims(app, assertion).await?;
    let jag = &app.id_jag;
    let now = now_unix();
    let exp = claims::check_times(&claims, now, jag.skew, jag.max_lifetime)?;
    claims::check_audience(&claims, &app.settings.public_url)?;
    claims::string_claim(&claims, "sub")?;
    if claims::string_claim(&claims, "client_id")? != client.client_id {
        return Err(OAuthError::invalid_grant(
            "the assertion was issued for another client (client_id)",
        ));
    }
    let jti = claims::string_claim(&claims, "jti")?;
    let resource = choose_resource(app, &claims, params.get("resource"))?;
    let scope = claims::narrow_scope(&claims, params.get("scope"))?;
    // Spent before anything else happens, on every replica sharing the
    // store; remembered until it could no longer pass the time checks.
    let ttl = Duration::from_secs((exp + jag.skew - now).max(1) as u64);
    if !app
        .records
        .first_use_of_assertion(&issuer.issuer, jti, ttl)
        .await?
    {
        return Err(OAuthError::invalid_grant(
            "the assertion was already used; ask the identity provider for a new one",
        ));
    }
    let login = Login {
        client_id: &client.client_id,
        claims: &claims,
        issuer: &issuer.issuer,
    };
    match app.login_for_resource(resource.as_deref(), &login).await {
        Ok(()) => {}
        Err(LoginRefused::Denied { reason, .. }) => {
            return Err(OAuthError::invalid_grant(format!(
                "the login policy refused this person: {reason}"
            )))
        }
        Err(LoginRefused::Store(e)) => return Err(e.into()),
    }
    let issued = issue(app, client, claims, resource, scope).await?;
    tracing::info!(client_id = %client.client_id, issuer = %issuer.issuer, "ID-JAG accepted");
    Ok(issued)
}

/// The header, the trusted issuer and the signature; returns the issuer
/// and the verified claims.
async fn verified_claims(
    app: &OAuthState,
    assertion: &str,
) -> Result<(TrustedIssuer, Map<String, Value>), OAuthError> {
    let jag = &app.id_jag;
    let header = claims::header(assertion, &jag.algorithms)?;
    let iss = claims::unverified_issuer(assertion)?;
    let issuer = jag
        .issuers
        .iter()
        .find(|t| t.issuer == iss)
        .ok_or_else(|| OAuthError::invalid_grant("the assertion's issuer is not trusted here"))?;
    let key = jag
        .keys
        .key(issuer, header.kid.as_deref())
        .await
        .map_err(|e| match e {
            KeyError::Unavailable(why) => {
                tracing::warn!(issuer = %issuer.issuer, %why, "an ID-JAG issuer's keys could not be fetched");
                OAuthError::temporarily_unavailable(
                    "the identity provider's keys could not be fetched; try again shortly",
                )
            }
            KeyError::NoKey(why) => OAuthError::invalid_grant(format!(
                "the assertion is not signed with a key of its issuer: {why}"
            )),
        })?;
    let claims = claims::verify(assertion, header.alg, &key)?;
    if claims::string_claim(&claims, "iss")? != issuer.issuer {
        return Err(OAuthError::invalid_grant(
            "the assertion's issuer is not trusted here",
        ));
    }
    Ok((issuer.clone(), claims))
}

/// The resource the tokens are bound to: the one asked for, which must be
/// one the assertion names (when it names any); else the assertion's one;
/// else the proxy as a whole. Always one of ours.
fn choose_resource(
    app: &OAuthState,
    claims: &Map<String, Value>,
    requested: Option<&str>,
) -> Result<Option<String>, OAuthError> {
    let ours = |r: &str| {
        validate_resource(&app.settings.public_url, &app.routes, r)
            .map_err(OAuthError::invalid_target)
    };
    let named = claims::resources(claims);
    let chosen =
        match (requested, named.as_slice()) {
            (None, []) => return Ok(None),
            (None, [one]) => one.as_str(),
            (None, _) => return Err(OAuthError::invalid_target(
                "the assertion names several resources; ask for one with the resource parameter",
            )),
            (Some(asked), _) => asked,
        };
    let chosen = ours(chosen)?;
    if !named.is_empty()
        && !named
            .iter()
            .any(|n| n.trim_end_matches('/') == chosen.trim_end_matches('/'))
    {
        return Err(OAuthError::invalid_target(
            "the resource asked for is not one the assertion was issued for",
        ));
    }
    Ok(Some(chosen))
}

/// Issues the tokens the way a browser sign-in does: a grant holding the
/// claims (sealed), a code, and the code's redemption by this client at
/// once. No provider tokens (the provider's word is the ID-JAG, which never
/// leaves this server), no refresh token.
async fn issue(
    app: &OAuthState,
    client: &ClientRecord,
    claims: Map<String, Value>,
    resource: Option<String>,
    scope: Option<String>,
) -> Result<IssuedTokens, OAuthError> {
    let verifier = crate::crypto::random_token();
    let pending = PendingAuthorization {
        client_id: client.client_id.clone(),
        redirect_uri: String::new(),
        state: None,
        code_challenge: URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
        scope,
        resource: resource.clone(),
        browser_id: String::new(),
        created_at: now_unix(),
        upstream: None,
    };
    let secrets = GrantSecrets {
        claims,
        upstream: UpstreamTokens {
            access_token: String::new(),
            id_token: None,
            refresh_token: None,
            expires_at: None,
        },
    };
    let code = app
        .grants
        .create_with_code(&pending, &secrets)
        .await
        .map_err(crate::oauth::token::grant_error)?;
    app.grants
        .redeem_code(CodeRedemption {
            code: &code,
            client_id: &client.client_id,
            redirect_uri: None,
            code_verifier: &verifier,
            resource,
            issue_refresh: false,
        })
        .await
        .map_err(crate::oauth::token::grant_error)
}
