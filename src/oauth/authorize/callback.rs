//! GET /callback: the provider sends the browser back; the id_token is
//! checked, the policy's `login()` runs, and the client gets its code.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::browser::signed_browser_id;
use super::pending::{expired_state, take_pending, INVALID_STATE_TITLE};
use crate::crypto;
use crate::error::{redirect_with_params, AppError, PageError, RedirectError};
use crate::metrics::labels::CallbackResult;
use crate::oauth::pages::found;
use crate::oauth::OAuthState;
use crate::policy::login::{Login, LoginRefused};
use crate::store::{GrantSecrets, PendingAuthorization, UpstreamLeg};
use crate::upstream::UpstreamError;

/// What the provider sends back: a code, or an error, with our `state`.
#[derive(Debug, Deserialize)]
pub(crate) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// GET /callback: the provider sends the browser back here.
pub(crate) async fn callback(
    State(app): State<OAuthState>,
    headers: HeaderMap,
    query: axum::extract::Query<CallbackQuery>,
) -> Result<Response, AppError> {
    let result = callback_inner(app.clone(), headers, query).await;
    let outcome = match &result {
        Ok(_) => CallbackResult::Success,
        Err(AppError::Redirect(_)) => CallbackResult::ProviderError,
        Err(AppError::Page(page)) => match page.title.as_str() {
            INVALID_STATE_TITLE | OTHER_BROWSER_TITLE => CallbackResult::InvalidState,
            TOKEN_EXCHANGE_TITLE => CallbackResult::TokenExchangeFailed,
            UNVERIFIED_TITLE => CallbackResult::IdTokenInvalid,
            LOGIN_DENIED_TITLE => CallbackResult::LoginDenied,
            _ => CallbackResult::Error,
        },
        Err(_) => CallbackResult::Error,
    };
    app.metrics.callback(outcome);
    result
}

const OTHER_BROWSER_TITLE: &str = "Sign-in started elsewhere";
const TOKEN_EXCHANGE_TITLE: &str = "Token exchange failed";
const UNVERIFIED_TITLE: &str = "Login could not be verified";
const LOGIN_DENIED_TITLE: &str = "Sign-in not allowed";

async fn callback_inner(
    app: OAuthState,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<CallbackQuery>,
) -> Result<Response, AppError> {
    let (pending, leg) = returning_flow(&app, &headers, query.state.as_deref()).await?;
    if let Some(error) = query.error.as_deref() {
        let description = query.error_description.as_deref();
        return Err(provider_refusal(&app, &pending, error, description).into());
    }
    let code = query
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            PageError::bad_request(
                "Invalid callback",
                "The identity provider sent no authorization code.",
            )
        })?;
    let identity = app
        .upstream
        .finish(code, &leg.pkce_verifier, &leg.nonce)
        .await
        .map_err(upstream_page)?;
    let secrets = GrantSecrets {
        claims: identity.claims,
        upstream: identity.tokens,
    };
    let login = Login {
        client_id: &pending.client_id,
        claims: &secrets.claims,
        issuer: app.upstream.issuer(),
    };
    match app
        .login_for_resource(pending.resource.as_deref(), &login)
        .await
    {
        Ok(()) => {}
        Err(LoginRefused::Denied { status, reason }) => {
            return Err(PageError::new(status, LOGIN_DENIED_TITLE, reason).into())
        }
        Err(LoginRefused::Store(e)) => return Err(PageError::from(e).into()),
    }
    let client_code = app
        .grants
        .create_with_code(&pending, &secrets)
        .await
        .map_err(|e| match e {
            crate::grants::GrantError::Invalid(m) => {
                PageError::new(StatusCode::BAD_GATEWAY, "Login could not be completed", m)
            }
            other => PageError::internal("creating the grant failed", &other),
        })?;
    tracing::info!(
        client_id = %pending.client_id,
        sub = secrets.claims.get("sub").and_then(serde_json::Value::as_str).unwrap_or_default(),
        "login completed"
    );
    Ok(found(&code_redirect(&app, &pending, &client_code)?))
}

/// The flow this callback ends, taken from the store (so it is used once),
/// and its provider leg; only the browser that started it may end it.
async fn returning_flow(
    app: &OAuthState,
    headers: &HeaderMap,
    state: Option<&str>,
) -> Result<(PendingAuthorization, UpstreamLeg), PageError> {
    let state = state.filter(|s| !s.is_empty()).ok_or_else(expired_state)?;
    let pending = take_pending(app, state).await?.ok_or_else(expired_state)?;
    let same_browser = signed_browser_id(app, headers)
        .is_some_and(|id| crypto::constant_time_eq(id.as_bytes(), pending.browser_id.as_bytes()));
    if !same_browser {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            OTHER_BROWSER_TITLE,
            "This sign-in was started in another browser, or your browser dropped the sign-in cookie. Start again from your application.",
        ));
    }
    let leg = pending.upstream.clone().ok_or_else(expired_state)?;
    Ok((pending, leg))
}

/// The provider ended the login with an error: the client hears of it at
/// its (approved) redirect URI.
fn provider_refusal(
    app: &OAuthState,
    pending: &PendingAuthorization,
    error: &str,
    description: Option<&str>,
) -> RedirectError {
    tracing::info!(
        error,
        description = description.unwrap_or_default(),
        "the provider ended the login with an error"
    );
    let code = match error {
        "access_denied" => "access_denied",
        "temporarily_unavailable" => "temporarily_unavailable",
        _ => "server_error",
    };
    RedirectError {
        redirect_uri: pending.redirect_uri.clone(),
        code,
        description: format!("the identity provider answered `{error}`"),
        state: pending.state.clone(),
        issuer: app.settings.public_url.clone(),
    }
}

/// The client's redirect URI with the code, its `state` and our `iss`.
fn code_redirect(
    app: &OAuthState,
    pending: &PendingAuthorization,
    client_code: &str,
) -> Result<String, PageError> {
    let mut params: Vec<(&str, &str)> = vec![("code", client_code)];
    if let Some(state) = &pending.state {
        params.push(("state", state));
    }
    params.push(("iss", &app.settings.public_url));
    redirect_with_params(&pending.redirect_uri, &params).ok_or_else(|| {
        PageError::bad_request(
            "Invalid redirect URI",
            "The application's redirect address is not a valid URL.",
        )
    })
}

/// The page for a login the provider could not complete; the cause goes to
/// the log when the page is rendered.
pub(super) fn upstream_page(e: UpstreamError) -> PageError {
    let page = match &e {
        UpstreamError::TokenExchange(_) => PageError::new(
            StatusCode::BAD_GATEWAY,
            TOKEN_EXCHANGE_TITLE,
            "The identity provider did not accept this proxy's code exchange. Administrators: check upstream.client_id, upstream.client_secret and that the provider allows the redirect URL <public_url>/callback.",
        ),
        UpstreamError::IdToken(_) => PageError::new(
            StatusCode::BAD_GATEWAY,
            UNVERIFIED_TITLE,
            "The identity provider's answer did not pass verification (issuer, audience, signature, expiry or nonce). Administrators: see the proxy's log.",
        ),
        UpstreamError::Discovery { .. } => PageError::new(
            StatusCode::BAD_GATEWAY,
            "Identity provider unreachable",
            "The proxy could not reach the identity provider. Try again later.",
        ),
        UpstreamError::InsecureEndpoint { endpoint, .. } => PageError::new(
            StatusCode::BAD_GATEWAY,
            "Identity provider not secure",
            format!("The identity provider's {endpoint} is not an https address, so this proxy will not sign you in through it. Administrators: see the proxy's log and upstream.issuer."),
        ),
        UpstreamError::Userinfo(_) | UpstreamError::Configuration(_) => PageError::new(
            StatusCode::BAD_GATEWAY,
            "Login could not be completed",
            "The identity provider's answer could not be used. Administrators: see the proxy's log.",
        ),
    };
    page.caused_by("provider login failed", &e)
}
