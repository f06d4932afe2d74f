//! POST /consent: the person allows or denies the client, from the browser
//! that started the flow, with the form this server issued to it.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::browser::signed_browser_id;
use super::pending::{expired_state, take_pending};
use super::{consent_key, go_upstream, unapproved_client_error, ACCESS_DENIED_TITLE};
use crate::crypto;
use crate::error::{AppError, PageError, RedirectError};
use crate::metrics::labels::ConsentDecision;
use crate::now_unix;
use crate::oauth::OAuthState;
use crate::store::{ConsentRecord, Namespace, PendingAuthorization};

/// The consent page's form: the pending request, its CSRF token and the
/// person's answer.
#[derive(Debug, Deserialize)]
pub(crate) struct ConsentForm {
    #[serde(default)]
    request: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    decision: String,
}

/// POST /consent: the person's answer.
pub(crate) async fn consent(
    State(app): State<OAuthState>,
    headers: HeaderMap,
    Form(form): Form<ConsentForm>,
) -> Result<Response, AppError> {
    let decision = match form.decision.as_str() {
        "approve" => ConsentDecision::Approve,
        "deny" => ConsentDecision::Deny,
        _ => ConsentDecision::Invalid,
    };
    let result = consent_inner(app.clone(), headers, form).await;
    let label = match &result {
        Err(AppError::Page(page)) if page.title == ACCESS_DENIED_TITLE => ConsentDecision::Deny,
        Err(AppError::Page(_)) => ConsentDecision::Invalid,
        _ => decision,
    };
    app.metrics.consent(label);
    result
}

async fn consent_inner(
    app: OAuthState,
    headers: HeaderMap,
    form: ConsentForm,
) -> Result<Response, AppError> {
    let browser_id = signed_browser_id(&app, &headers).ok_or_else(|| {
        PageError::new(
            StatusCode::FORBIDDEN,
            "Sign-in cookie missing",
            "Your browser did not send back the sign-in cookie. Allow cookies for this site and start again from your application.",
        )
    })?;
    if !app.keys.verify_csrf(&form.request, &browser_id, &form.csrf) {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "Invalid consent form",
            "This form was not issued to your browser. Start again from your application.",
        )
        .into());
    }
    let pending = take_pending(&app, &form.request)
        .await?
        .ok_or_else(expired_state)?;
    if !crypto::constant_time_eq(pending.browser_id.as_bytes(), browser_id.as_bytes()) {
        return Err(expired_state().into());
    }
    let redirect_error = |code: &'static str, description: &str| RedirectError {
        redirect_uri: pending.redirect_uri.clone(),
        code,
        description: description.to_string(),
        state: pending.state.clone(),
        issuer: app.settings.public_url.clone(),
    };
    match form.decision.as_str() {
        "approve" => {
            remember_approval(&app, &browser_id, &pending).await?;
            tracing::info!(client_id = %pending.client_id, "consent approved");
            go_upstream(&app, pending).await
        }
        "deny" => {
            // Not approved: the registered URI is still untrusted (invariant 12).
            tracing::info!(client_id = %pending.client_id, "consent denied");
            Err(unapproved_client_error(redirect_error(
                "access_denied",
                "the user denied the request",
            ))
            .into())
        }
        _ => Err(PageError::bad_request(
            "Invalid consent form",
            "The form did not say whether to allow or deny.",
        )
        .into()),
    }
}

/// Remembers that this browser's person approved the client (and its
/// redirect URI) for the servers the authorization names; the servers
/// approved before stay approved.
async fn remember_approval(
    app: &OAuthState,
    browser_id: &str,
    pending: &PendingAuthorization,
) -> Result<(), PageError> {
    let key = consent_key(browser_id, &pending.client_id, &pending.redirect_uri);
    let mut servers = app
        .records
        .get::<ConsentRecord>(Namespace::Consent, &key)
        .await?
        .map(|earlier| earlier.servers())
        .unwrap_or_default();
    for route in app.routes_for(pending.resource.as_deref()) {
        if !servers.contains(&route.name) {
            servers.push(route.name.clone());
        }
    }
    let record = ConsentRecord {
        client_id: pending.client_id.clone(),
        redirect_uri: pending.redirect_uri.clone(),
        approved_at: now_unix(),
        servers,
    };
    app.records
        .put(
            Namespace::Consent,
            &key,
            &record,
            app.settings.consent_remember,
        )
        .await?;
    Ok(())
}
