//! `/token` (authorization_code, refresh_token and — in `id_jag/` — the
//! jwt-bearer grant) and `/revoke`
//! (RFC 7009). Responses are never cached.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::OAuthError;
use crate::grants::{CodeRedemption, GrantError, IssuedTokens, PreparedRefresh};
use crate::metrics::labels::{oauth_result, GrantType};
use crate::now_unix;
use crate::oauth::{client_auth, validate_resource, OAuthState, Params};
use crate::policy::login::{Login, LoginRefused};
use crate::store::{ClientRecord, GrantSecrets};
use crate::upstream::RefreshError;

/// The largest token or revocation request body accepted.
pub(crate) const MAX_FORM_BYTES: usize = 8 * 1024;

fn form(headers: &HeaderMap, body: &Bytes) -> Result<Params, OAuthError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| OAuthError::invalid_request("the body is not UTF-8"))?;
    let params = Params::parse(text);
    if let Some(name) = params.duplicated.first() {
        return Err(OAuthError::invalid_request(format!(
            "parameter {name} appears more than once"
        )));
    }
    Ok(params)
}

/// The OAuth error a grant operation's failure is.
pub(crate) fn grant_error(e: GrantError) -> OAuthError {
    match e {
        GrantError::Invalid(m) => OAuthError::invalid_grant(m),
        GrantError::Replay(m) => {
            tracing::warn!(reason = m, "token replay detected; grant revoked");
            OAuthError::invalid_grant(m)
        }
        GrantError::Scope(m) => OAuthError::invalid_scope(m),
        GrantError::Busy(m) => OAuthError::temporarily_unavailable(m),
        GrantError::Target(m) => OAuthError::invalid_target(m),
        GrantError::Store(e) => OAuthError::from(e),
        GrantError::Sealed(e) => OAuthError::server_error("grant data could not be opened", &e),
    }
}

/// POST /token
pub(crate) async fn token(
    State(app): State<OAuthState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let grant_type = GrantType::of(
        Params::parse(std::str::from_utf8(&body).unwrap_or_default()).get("grant_type"),
    );
    let result = token_inner(app.clone(), headers, body).await;
    app.metrics.token_grant(grant_type, oauth_result(&result));
    result
}

async fn token_inner(
    app: OAuthState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let params = form(&headers, &body)?;
    let grant_type = params
        .get("grant_type")
        .ok_or_else(|| OAuthError::invalid_request("grant_type is required"))?
        .to_string();
    let jwt_bearer = grant_type == crate::config::JWT_BEARER_GRANT;
    if grant_type != "authorization_code" && grant_type != "refresh_token" && !jwt_bearer {
        return Err(OAuthError::unsupported_grant_type(format!(
            "grant_type `{grant_type}` is not supported"
        )));
    }
    let client = client_auth::authenticate(&app, &headers, &params).await?;
    if !client.allows_grant(&grant_type) {
        return Err(OAuthError::unauthorized_client(format!(
            "this client did not register the {grant_type} grant"
        )));
    }
    if jwt_bearer {
        let issued = crate::oauth::id_jag::exchange(&app, &client, &params).await?;
        return Ok(token_response(&issued));
    }
    let resource = params
        .get("resource")
        .map(|r| validate_resource(&app.settings.public_url, &app.routes, r))
        .transpose()
        .map_err(OAuthError::invalid_target)?;
    let issued = if grant_type == "authorization_code" {
        redeem_code(&app, &client, &params, resource).await?
    } else {
        let refresh_token = params
            .get("refresh_token")
            .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
        let scope = params.get("scope");
        let prepared = app
            .grants
            .prepare_refresh(refresh_token, &client.client_id, scope, resource)
            .await
            .map_err(grant_error)?;
        let grant_id = prepared.grant.grant_id.clone();
        let (renewed, locked) = renew_upstream(&app, &prepared).await?;
        let issued = app
            .grants
            .complete_refresh(prepared, renewed)
            .await
            .map_err(grant_error);
        if locked {
            app.grants.unlock_renewal(&grant_id).await;
        }
        issued?
    };
    tracing::info!(client_id = %client.client_id, grant_type, "tokens issued");
    Ok(token_response(&issued))
}

/// The authorization_code grant: PKCE and redirect URI checked, the code
/// redeemed once.
async fn redeem_code(
    app: &OAuthState,
    client: &ClientRecord,
    params: &Params,
    resource: Option<String>,
) -> Result<IssuedTokens, OAuthError> {
    let code = params
        .get("code")
        .ok_or_else(|| OAuthError::invalid_request("code is required"))?;
    let code_verifier = params
        .get("code_verifier")
        .ok_or_else(|| OAuthError::invalid_request("code_verifier is required (PKCE)"))?;
    if !crate::crypto::is_valid_pkce_verifier(code_verifier) {
        return Err(OAuthError::invalid_grant(
            "code_verifier is not a valid PKCE verifier",
        ));
    }
    if params.get("redirect_uri").is_none() && client.redirect_uris.len() > 1 {
        return Err(OAuthError::invalid_request("redirect_uri is required"));
    }
    app.grants
        .redeem_code(CodeRedemption {
            code,
            client_id: &client.client_id,
            redirect_uri: params.get("redirect_uri"),
            code_verifier,
            resource,
            issue_refresh: client.allows_grant("refresh_token"),
        })
        .await
        .map_err(grant_error)
}

/// Renews the provider's tokens when they are about to expire or the
/// person is due to be confirmed again, so people stay signed in for the
/// refresh token's lifetime only while the provider agrees; the claims are
/// read again and the login policy runs again. A provider that refuses ends
/// the grant; one that cannot be reached gets no new tokens issued (fail
/// closed: access ends with the tokens in hand). Returns the renewed secrets
/// and whether the renewal lock is held.
async fn renew_upstream(
    app: &OAuthState,
    prepared: &PreparedRefresh,
) -> Result<(Option<GrantSecrets>, bool), OAuthError> {
    let upstream = &prepared.secrets.upstream;
    let margin = app.settings.refresh_before.as_secs() as i64;
    let now = now_unix();
    // Renew when the provider's token is about to expire, and in any case
    // before the provider's last confirmation of the person runs out
    // (`upstream.revalidate_after`): a refresh never extends access on
    // stale claims. Without a provider refresh token the grant simply ends
    // at `tokens.max_grant_age` (see `Grants::grant_end`).
    let due = upstream.refresh_token.is_some()
        && (upstream.expires_at.is_some_and(|at| at - now <= margin)
            || prepared.access_deadline - now <= margin);
    if !due {
        return Ok((None, false));
    }
    let grant_id = &prepared.grant.grant_id;
    if !app.grants.lock_renewal(grant_id).await? {
        return Err(OAuthError::temporarily_unavailable(
            "the sign-in is being renewed by another request; retry in a moment",
        ));
    }
    let revoke_with = |reason: &'static str| async move {
        if let Err(e) = app.grants.revoke_grant(grant_id).await {
            tracing::error!(error = %e, "could not revoke a grant the provider ended");
        }
        app.grants.unlock_renewal(grant_id).await;
        OAuthError::invalid_grant(reason)
    };
    match app
        .upstream
        .refresh(upstream, &prepared.secrets.claims)
        .await
    {
        Ok(identity) => {
            let login = Login {
                client_id: &prepared.grant.client_id,
                claims: &identity.claims,
                issuer: app.upstream.issuer(),
            };
            let resource = prepared.grant.resource.as_deref();
            match app.login_for_resource(resource, &login).await {
                Ok(()) => {
                    tracing::info!(grant_id, "provider tokens renewed");
                    Ok((
                        Some(GrantSecrets {
                            claims: identity.claims,
                            upstream: identity.tokens,
                        }),
                        true,
                    ))
                }
                Err(LoginRefused::Denied { reason, .. }) => {
                    tracing::info!(grant_id, %reason, "login policy denied on renewal; grant revoked");
                    Err(revoke_with(
                        "the login policy no longer allows this sign-in; sign in again",
                    )
                    .await)
                }
                Err(LoginRefused::Store(e)) => {
                    app.grants.unlock_renewal(grant_id).await;
                    Err(OAuthError::from(e))
                }
            }
        }
        Err(RefreshError::Refused(message)) => {
            tracing::info!(grant_id, %message, "the provider refused to renew; grant revoked");
            Err(revoke_with("the identity provider ended this sign-in; sign in again").await)
        }
        Err(RefreshError::Unavailable(message)) => {
            tracing::warn!(grant_id, %message, "the provider could not renew the sign-in");
            app.grants.unlock_renewal(grant_id).await;
            Err(OAuthError::temporarily_unavailable(
                "the identity provider could not be reached to renew the sign-in; try again shortly",
            ))
        }
    }
}

fn token_response(issued: &IssuedTokens) -> Response {
    let mut body = json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
    });
    if let Some(refresh) = &issued.refresh_token {
        body["refresh_token"] = json!(refresh);
    }
    if let Some(scope) = &issued.scope {
        body["scope"] = json!(scope);
    }
    no_store((StatusCode::OK, Json(body)).into_response())
}

fn no_store(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// POST /revoke (RFC 7009): 200 whether or not the token was known.
pub(crate) async fn revoke(
    State(app): State<OAuthState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let result = revoke_inner(app.clone(), headers, body).await;
    app.metrics.revocation(oauth_result(&result));
    result
}

async fn revoke_inner(
    app: OAuthState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let params = form(&headers, &body)?;
    let client = client_auth::authenticate(&app, &headers, &params).await?;
    let token = params
        .get("token")
        .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    if let Some(hint) = params.get("token_type_hint") {
        if hint != "access_token" && hint != "refresh_token" {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_token_type",
                "token_type_hint must be access_token or refresh_token",
            ));
        }
    }
    app.grants.revoke_token(token, &client.client_id).await?;
    Ok(no_store(StatusCode::OK.into_response()))
}
