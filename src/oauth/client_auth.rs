//! Client authentication at the token and revocation endpoints: `none`,
//! `client_secret_post` or `client_secret_basic`, secrets compared in
//! constant time (invariant 8).

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::crypto;
use crate::error::OAuthError;
use crate::now_unix;
use crate::oauth::{OAuthState, Params};
use crate::store::{ClientRecord, Namespace};

/// A client's `last_used_at` is written at most this often.
const TOUCH_INTERVAL_SECS: i64 = 3600;

/// Identifies and authenticates the client of a token or revocation request.
pub(crate) async fn authenticate(
    app: &OAuthState,
    headers: &HeaderMap,
    params: &Params,
) -> Result<ClientRecord, OAuthError> {
    let basic = basic_credentials(headers)?;
    let form_id = params.get("client_id");
    let form_secret = params.get("client_secret");
    if basic.is_some() && form_secret.is_some() {
        return Err(OAuthError::invalid_request(
            "use one client authentication method, not two",
        ));
    }
    let client_id = match (&basic, form_id) {
        (Some((id, _)), Some(form)) if id != form => {
            return Err(OAuthError::invalid_request(
                "client_id differs from the Authorization header's",
            ))
        }
        (Some((id, _)), _) => id.clone(),
        (None, Some(form)) => form.to_string(),
        (None, None) => return Err(OAuthError::invalid_client("client_id is missing")),
    };
    let challenge = |e: OAuthError| {
        if basic.is_some() {
            e.with_basic_challenge()
        } else {
            e
        }
    };
    let client: ClientRecord = crate::oauth::cimd::find_client(app, &client_id)
        .await
        .map_err(|e| match e {
            crate::oauth::cimd::CimdError::Store(e) => OAuthError::from(e),
            other => challenge(OAuthError::invalid_client(other.to_string())),
        })?
        .ok_or_else(|| challenge(OAuthError::invalid_client("unknown client; register again")))?;
    let presented = basic.as_ref().map(|(_, s)| s.as_str()).or(form_secret);
    if client.is_public() {
        if presented.is_some() {
            return Err(challenge(OAuthError::invalid_client(
                "this client is registered as public (token_endpoint_auth_method none) and must not send a secret",
            )));
        }
    } else {
        let expected = client.client_secret_hash.as_deref().unwrap_or_default();
        let ok = presented.is_some_and(|s| {
            crypto::constant_time_eq(crypto::token_hash(s).as_bytes(), expected.as_bytes())
        });
        if !ok {
            return Err(challenge(OAuthError::invalid_client(
                "client authentication failed",
            )));
        }
    }
    touch(app, &client).await;
    Ok(client)
}

/// Keeps a used client registered for another `registration.client_ttl`.
pub(crate) async fn touch(app: &OAuthState, client: &ClientRecord) {
    let now = now_unix();
    // A metadata document's record lives as long as its cache lifetime.
    if now - client.last_used_at < TOUCH_INTERVAL_SECS
        || client
            .metadata
            .contains_key(crate::oauth::cimd::FROM_DOCUMENT)
        || client.is_configured()
    {
        return;
    }
    let mut updated = client.clone();
    updated.last_used_at = now;
    let ttl = app.settings.registration.client_ttl.0;
    if let Err(e) = app
        .records
        .put(Namespace::Client, &client.client_id, &updated, ttl)
        .await
    {
        tracing::warn!(error = %e, client_id = %client.client_id, "could not extend the client's registration");
    }
}

/// RFC 6749 §2.3.1: HTTP Basic with form-urlencoded id and secret.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        OAuthError::invalid_client("malformed Basic authorization header").with_basic_challenge()
    };
    let text = value.to_str().map_err(|_| bad())?;
    let Some(encoded) = text
        .strip_prefix("Basic ")
        .or_else(|| text.strip_prefix("basic "))
    else {
        return Err(bad());
    };
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let unescape = |s: &str| -> String {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), unescape(secret))))
}
