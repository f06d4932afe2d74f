//! `/authorize` → consent → the provider's login → `/callback` → a code for
//! the client.
//!
//! Until the client and its redirect URI are trusted, every error is an HTML
//! page; after that, errors go back to the client with `state` and `iss`.
//! The browser that starts a flow carries a signed cookie; the consent form
//! and the callback must come from that same browser.
//!
//! Here: `GET /authorize` and the steps it shares with the others;
//! `consent.rs` and `callback.rs` the other two routes; `browser.rs` the
//! browser cookie; `pending.rs` the flows in progress.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use sha2::{Digest, Sha256};

use crate::crypto;
use crate::error::{AppError, PageError, RedirectError};
use crate::metrics::labels::AuthorizationResult;
use crate::now_unix;
use crate::oauth::pages::found;
use crate::oauth::{cimd, client_auth, pages, redirect_uri, validate_resource, OAuthState, Params};
use crate::store::{ClientRecord, ConsentRecord, Namespace, PendingAuthorization, UpstreamLeg};
use crate::upstream::UpstreamError;

mod browser;
mod callback;
mod consent;
mod pending;

pub(crate) use callback::callback;
pub(crate) use consent::consent;

use browser::browser_identity;
use callback::upstream_page;
use pending::put_pending;

/// How long a person has to finish signing in (as the original worker).
pub(crate) const PENDING_TTL: Duration = Duration::from_secs(600);

/// GET /authorize
pub(crate) async fn authorize(
    State(app): State<OAuthState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let result = authorize_inner(&app, &headers, query).await;
    let outcome = match &result {
        Ok(r) if r.status() == StatusCode::OK => AuthorizationResult::ConsentRequired,
        Ok(_) => AuthorizationResult::ConsentRemembered,
        Err(AppError::Redirect(_)) => AuthorizationResult::ErrorRedirect,
        Err(_) => AuthorizationResult::Rejected,
    };
    app.metrics.authorization(outcome);
    result
}

async fn authorize_inner(
    app: &OAuthState,
    headers: &HeaderMap,
    query: Option<String>,
) -> Result<Response, AppError> {
    let app = app.clone();
    let params = Params::parse(query.as_deref().unwrap_or_default());
    let (client, redirect_uri) = trusted_client_and_redirect(&app, &params).await?;
    let (browser_id, set_cookie) = browser_identity(&app, headers);
    let consent_key = consent_key(&browser_id, &client.client_id, &redirect_uri);
    let consent = app
        .records
        .get::<ConsentRecord>(Namespace::Consent, &consent_key)
        .await
        .map_err(PageError::from)?;
    // Anyone can register a redirect URI, so until this person has approved
    // this client and URI an error is a page here: redirecting it would make
    // the proxy an open redirector (RFC 9700 §4.11.2, DESIGN invariant 12).
    let redirect_trusted = consent.is_some();
    let pending = validate_request(&app, &params, &client, &redirect_uri).map_err(|e| {
        if redirect_trusted {
            AppError::from(e)
        } else {
            AppError::from(unapproved_client_error(e))
        }
    })?;
    // An approval covers the servers it named: a client approved for one
    // route asks again before it reaches another.
    let servers: Vec<&str> = app
        .routes_for(pending.resource.as_deref())
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    let approved = consent.is_some_and(|c| c.covers(&servers));
    let pending = PendingAuthorization {
        browser_id,
        ..pending
    };
    client_auth::touch(&app, &client).await;

    let mut response = if approved {
        go_upstream(&app, pending).await?
    } else {
        let request_id = crypto::random_token();
        put_pending(&app, &request_id, &pending, PENDING_TTL).await?;
        let csrf = app.keys.csrf_token(&request_id, &pending.browser_id);
        let host = redirect_uri::display_host(&redirect_uri);
        pages::html_response(
            StatusCode::OK,
            pages::consent_page(&pages::ConsentPage {
                client_name: client.display_name(),
                client_id: &client.client_id,
                redirect_host: &host,
                redirect_uri: &redirect_uri,
                request_id: &request_id,
                csrf_token: &csrf,
                resource: pending.resource.as_deref(),
                servers: &servers,
            }),
        )
    };
    if let Some(cookie) = set_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// The client and redirect URI, or a page: never redirect to an untrusted URI.
async fn trusted_client_and_redirect(
    app: &OAuthState,
    params: &Params,
) -> Result<(ClientRecord, String), PageError> {
    for name in ["client_id", "redirect_uri"] {
        if params.is_duplicated(name) {
            return Err(PageError::bad_request(
                "Invalid request",
                format!("The parameter {name} appears more than once."),
            ));
        }
    }
    let client_id = params.get("client_id").ok_or_else(|| {
        PageError::bad_request(
            "Invalid request",
            "The application did not say who it is (client_id is missing).",
        )
    })?;
    let found = cimd::find_client(app, client_id)
        .await
        .map_err(|e| match e {
            cimd::CimdError::Store(e) => PageError::from(e),
            other => {
                tracing::info!(client_id, error = %other, "client metadata document refused");
                PageError::bad_request("Unknown application", other.to_string())
            }
        })?;
    let client: ClientRecord = found.ok_or_else(|| {
        PageError::bad_request(
            "Unknown application",
            "This application is not registered here, or its registration expired. Remove the server from the application and add it again.",
        )
    })?;
    let redirect_uri = match params.get("redirect_uri") {
        Some(uri) if redirect_uri::matches_registered(&client.redirect_uris, uri) => uri.to_string(),
        Some(_) => {
            return Err(PageError::bad_request(
                "Invalid redirect URI",
                "The application asked to be sent to an address it did not register. For your safety, sign-in stops here.",
            ))
        }
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => {
            return Err(PageError::bad_request(
                "Invalid request",
                "The application registered several redirect addresses and did not say which to use (redirect_uri is missing).",
            ))
        }
    };
    Ok((client, redirect_uri))
}

/// Checks the rest of the request; errors go back to the client.
fn validate_request(
    app: &OAuthState,
    params: &Params,
    client: &ClientRecord,
    redirect_uri: &str,
) -> Result<PendingAuthorization, RedirectError> {
    let state = params.get("state").map(str::to_string);
    let error = |code: &'static str, description: &str| RedirectError {
        redirect_uri: redirect_uri.to_string(),
        code,
        description: description.to_string(),
        state: state.clone(),
        issuer: app.settings.public_url.clone(),
    };
    if let Some(name) = params.duplicated.first() {
        return Err(error(
            "invalid_request",
            &format!("parameter {name} appears more than once"),
        ));
    }
    match params.get("response_type") {
        Some("code") => {}
        None => return Err(error("invalid_request", "response_type is required")),
        Some(_) => {
            return Err(error(
                "unsupported_response_type",
                "only response_type=code is supported",
            ))
        }
    }
    if !client.allows_grant("authorization_code") {
        return Err(error(
            "unauthorized_client",
            "this client may not use the authorization code grant",
        ));
    }
    let challenge = params.get("code_challenge").ok_or_else(|| {
        error(
            "invalid_request",
            "code_challenge is required (PKCE with S256)",
        )
    })?;
    match params.get("code_challenge_method") {
        Some("S256") => {}
        None => {
            return Err(error(
                "invalid_request",
                "code_challenge_method is required and must be S256",
            ))
        }
        Some(_) => {
            return Err(error(
                "invalid_request",
                "code_challenge_method must be S256; plain is not accepted",
            ))
        }
    }
    if !crypto::is_valid_s256_challenge(challenge) {
        return Err(error(
            "invalid_request",
            "code_challenge is not a base64url SHA-256 value",
        ));
    }
    let resource = params
        .get("resource")
        .map(|r| validate_resource(&app.settings.public_url, &app.routes, r))
        .transpose()
        .map_err(|e| error("invalid_target", &e))?;
    Ok(PendingAuthorization {
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.to_string(),
        state,
        code_challenge: challenge.to_string(),
        scope: params.get("scope").map(str::to_string),
        resource,
        browser_id: String::new(),
        created_at: now_unix(),
        upstream: None,
    })
}

/// The page shown instead of redirecting an error to a redirect URI the
/// person has not approved.
fn unapproved_client_error(e: RedirectError) -> PageError {
    tracing::info!(code = e.code, description = %e.description, "authorization request refused before consent");
    if e.code == "access_denied" {
        return PageError::new(
            StatusCode::FORBIDDEN,
            ACCESS_DENIED_TITLE,
            "You did not allow the application to use your access. You can close this window.",
        );
    }
    PageError::bad_request(
        "Invalid authorization request",
        format!(
            "The application sent a request this server cannot accept ({}: {}). Nothing was shared with it; you can close this window.",
            e.code, e.description
        ),
    )
}

/// Sends the browser to the provider, remembering the flow under its state.
async fn go_upstream(
    app: &OAuthState,
    mut pending: PendingAuthorization,
) -> Result<Response, AppError> {
    let start = match app.upstream.start().await {
        Ok(start) => start,
        // Not a passing outage: the person and the administrator need to know.
        Err(e @ UpstreamError::InsecureEndpoint { .. }) => return Err(upstream_page(e).into()),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the provider login");
            return Err(RedirectError {
                redirect_uri: pending.redirect_uri.clone(),
                code: "temporarily_unavailable",
                description: "the identity provider is unreachable; try again later".into(),
                state: pending.state.clone(),
                issuer: app.settings.public_url.clone(),
            }
            .into());
        }
    };
    pending.upstream = Some(UpstreamLeg {
        pkce_verifier: start.pkce_verifier,
        nonce: start.nonce,
    });
    // The whole flow, consent included, must finish within PENDING_TTL.
    let remaining = Duration::from_secs(
        (pending.created_at + PENDING_TTL.as_secs() as i64 - now_unix()).max(1) as u64,
    );
    put_pending(app, &start.state, &pending, remaining).await?;
    Ok(found(start.url.as_str()))
}

/// The title of the page for a person who denied the client.
const ACCESS_DENIED_TITLE: &str = "Access denied";

/// Where an approval is remembered: for this browser, client and redirect
/// URI together, hashed so the store holds no browser id.
fn consent_key(browser_id: &str, client_id: &str, redirect_uri: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [browser_id, client_id, redirect_uri] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}
