//! `/token` (authorization_code and refresh_token grants) and `/revoke`
//! (RFC 7009). Responses are never cached.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::OAuthError;
use crate::oauth::grants::{CodeRedemption, GrantError, IssuedTokens};
use crate::oauth::{client_auth, validate_resource, Params};
use crate::server::AppState;

/// The largest token or revocation request body accepted.
pub const MAX_FORM_BYTES: usize = 8 * 1024;

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

fn grant_error(e: GrantError) -> OAuthError {
    match e {
        GrantError::Invalid(m) => OAuthError::invalid_grant(m),
        GrantError::Replay(m) => {
            tracing::warn!(reason = m, "token replay detected; grant revoked");
            OAuthError::invalid_grant(m)
        }
        GrantError::Scope(m) => OAuthError::invalid_scope(m),
        GrantError::Target(m) => OAuthError::invalid_target(m),
        GrantError::Store(e) => OAuthError::from(e),
        GrantError::Sealed(e) => OAuthError::server_error("grant data could not be opened", &e),
    }
}

/// POST /token
pub async fn token(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let grant_type =
        match Params::parse(std::str::from_utf8(&body).unwrap_or_default()).get("grant_type") {
            Some("authorization_code") => "authorization_code",
            Some("refresh_token") => "refresh_token",
            _ => "other",
        };
    let result = token_inner(app.clone(), headers, body).await;
    let outcome = match &result {
        Ok(_) => "success",
        Err(e) => e.code,
    };
    app.metrics
        .token_grants
        .with_label_values(&[grant_type, outcome])
        .inc();
    result
}

async fn token_inner(
    app: AppState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let params = form(&headers, &body)?;
    let grant_type = params
        .get("grant_type")
        .ok_or_else(|| OAuthError::invalid_request("grant_type is required"))?
        .to_string();
    if grant_type != "authorization_code" && grant_type != "refresh_token" {
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
    let resource = params
        .get("resource")
        .map(|r| validate_resource(&app.settings.public_url, r))
        .transpose()
        .map_err(OAuthError::invalid_target)?;
    let issued = if grant_type == "authorization_code" {
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
            .map_err(grant_error)?
    } else {
        let refresh_token = params
            .get("refresh_token")
            .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
        let scope = params.get("scope");
        app.grants
            .refresh(refresh_token, &client.client_id, scope, resource)
            .await
            .map_err(grant_error)?
    };
    tracing::info!(client_id = %client.client_id, grant_type, "tokens issued");
    Ok(token_response(&issued))
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
pub async fn revoke(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let result = revoke_inner(app.clone(), headers, body).await;
    let outcome = match &result {
        Ok(_) => "success",
        Err(e) => e.code,
    };
    app.metrics.revocations.with_label_values(&[outcome]).inc();
    result
}

async fn revoke_inner(
    app: AppState,
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
