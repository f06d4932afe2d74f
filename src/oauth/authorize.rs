//! `/authorize` → consent → the provider's login → `/callback` → a code for
//! the client.
//!
//! Until the client and its redirect URI are trusted, every error is an HTML
//! page; after that, errors go back to the client with `state` and `iss`.
//! The browser that starts a flow carries a signed cookie; the consent form
//! and the callback must come from that same browser.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::crypto;
use crate::error::{redirect_with_params, AppError, PageError, RedirectError};
use crate::now_unix;
use crate::oauth::pages::found;
use crate::oauth::{cimd, client_auth, cookie, pages, redirect_uri, validate_resource, Params};
use crate::policy::{user_value, Decision, UserFacts};
use crate::server::AppState;
use crate::store::StoreError;
use crate::store::{
    decode, encode, ClientRecord, ConsentRecord, GrantSecrets, Namespace, PendingAuthorization,
    UpstreamLeg,
};
use crate::upstream::UpstreamError;

/// How long a person has to finish signing in (as the original worker).
pub const PENDING_TTL: Duration = Duration::from_secs(600);
const BROWSER_COOKIE: &str = "mcp-browser";

/// GET /authorize
pub async fn authorize(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let result = authorize_inner(&app, &headers, query).await;
    let outcome = match &result {
        Ok(r) if r.status() == StatusCode::OK => "consent_required",
        Ok(_) => "consent_remembered",
        Err(AppError::Redirect(_)) => "error_redirect",
        Err(_) => "rejected",
    };
    app.metrics
        .authorizations
        .with_label_values(&[outcome])
        .inc();
    result
}

async fn authorize_inner(
    app: &AppState,
    headers: &HeaderMap,
    query: Option<String>,
) -> Result<Response, AppError> {
    let app = app.clone();
    let params = Params::parse(query.as_deref().unwrap_or_default());
    let (client, redirect_uri) = trusted_client_and_redirect(&app, &params).await?;
    let (browser_id, set_cookie) = browser_identity(&app, headers);
    let consent_key = consent_key(&browser_id, &client.client_id, &redirect_uri);
    let approved = app
        .records
        .get::<ConsentRecord>(Namespace::Consent, &consent_key)
        .await
        .map_err(PageError::from)?
        .is_some();
    // Anyone can register a redirect URI, so until this person has approved
    // this client and URI an error is a page here: redirecting it would make
    // the proxy an open redirector (RFC 9700 §4.11.2, DESIGN invariant 12).
    let pending = validate_request(&app, &params, &client, &redirect_uri).map_err(|e| {
        if approved {
            AppError::from(e)
        } else {
            AppError::from(unapproved_client_error(e))
        }
    })?;
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
    app: &AppState,
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
    app: &AppState,
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
        .map(|r| validate_resource(&app.settings.public_url, r))
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

#[derive(Debug, Deserialize)]
pub struct ConsentForm {
    #[serde(default)]
    request: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    decision: String,
}

/// POST /consent: the person's answer.
pub async fn consent(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<ConsentForm>,
) -> Result<Response, AppError> {
    let decision = match form.decision.as_str() {
        "approve" => "approve",
        "deny" => "deny",
        _ => "invalid",
    };
    let result = consent_inner(app.clone(), headers, form).await;
    let label = match &result {
        Err(AppError::Page(page)) if page.title == ACCESS_DENIED_TITLE => "deny",
        Err(AppError::Page(_)) => "invalid",
        _ => decision,
    };
    app.metrics.consents.with_label_values(&[label]).inc();
    result
}

async fn consent_inner(
    app: AppState,
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
            let record = ConsentRecord {
                client_id: pending.client_id.clone(),
                redirect_uri: pending.redirect_uri.clone(),
                approved_at: now_unix(),
            };
            let key = consent_key(&browser_id, &pending.client_id, &pending.redirect_uri);
            app.records
                .put(
                    Namespace::Consent,
                    &key,
                    &record,
                    app.settings.config.consent.remember.0,
                )
                .await
                .map_err(PageError::from)?;
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
    app: &AppState,
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

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// GET /callback: the provider sends the browser back here.
pub async fn callback(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: axum::extract::Query<CallbackQuery>,
) -> Result<Response, AppError> {
    let result = callback_inner(app.clone(), headers, query).await;
    let outcome = match &result {
        Ok(_) => "success",
        Err(AppError::Redirect(_)) => "provider_error",
        Err(AppError::Page(page)) => match page.title.as_str() {
            INVALID_STATE_TITLE | OTHER_BROWSER_TITLE => "invalid_state",
            TOKEN_EXCHANGE_TITLE => "token_exchange_failed",
            UNVERIFIED_TITLE => "id_token_invalid",
            LOGIN_DENIED_TITLE => "login_denied",
            _ => "error",
        },
        Err(_) => "error",
    };
    app.metrics.callbacks.with_label_values(&[outcome]).inc();
    result
}

const ACCESS_DENIED_TITLE: &str = "Access denied";
const INVALID_STATE_TITLE: &str = "Invalid or expired state";
const OTHER_BROWSER_TITLE: &str = "Sign-in started elsewhere";
const TOKEN_EXCHANGE_TITLE: &str = "Token exchange failed";
const UNVERIFIED_TITLE: &str = "Login could not be verified";
const LOGIN_DENIED_TITLE: &str = "Sign-in not allowed";

async fn callback_inner(
    app: AppState,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<CallbackQuery>,
) -> Result<Response, AppError> {
    let state = query
        .state
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(expired_state)?;
    let pending = take_pending(&app, state).await?.ok_or_else(expired_state)?;
    let same_browser = signed_browser_id(&app, &headers)
        .is_some_and(|id| crypto::constant_time_eq(id.as_bytes(), pending.browser_id.as_bytes()));
    if !same_browser {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            OTHER_BROWSER_TITLE,
            "This sign-in was started in another browser, or your browser dropped the sign-in cookie. Start again from your application.",
        )
        .into());
    }
    let leg = pending.upstream.clone().ok_or_else(expired_state)?;
    let to_client = |code: &'static str, description: String| RedirectError {
        redirect_uri: pending.redirect_uri.clone(),
        code,
        description,
        state: pending.state.clone(),
        issuer: app.settings.public_url.clone(),
    };
    if let Some(error) = query.error.as_deref() {
        tracing::info!(
            error,
            description = query.error_description.as_deref().unwrap_or_default(),
            "the provider ended the login with an error"
        );
        let code = match error {
            "access_denied" => "access_denied",
            "temporarily_unavailable" => "temporarily_unavailable",
            _ => "server_error",
        };
        return Err(to_client(code, format!("the identity provider answered `{error}`")).into());
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
    if let Err((status, reason)) = login_allowed(&app, &pending.client_id, &secrets.claims)
        .await
        .map_err(PageError::from)?
    {
        return Err(PageError::new(status, LOGIN_DENIED_TITLE, reason).into());
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
    let mut params: Vec<(&str, &str)> = vec![("code", &client_code)];
    if let Some(state) = &pending.state {
        params.push(("state", state));
    }
    params.push(("iss", &app.settings.public_url));
    let location = redirect_with_params(&pending.redirect_uri, &params).ok_or_else(|| {
        PageError::bad_request(
            "Invalid redirect URI",
            "The application's redirect address is not a valid URL.",
        )
    })?;
    Ok(found(&location))
}

/// The policy's `login(user)`, once per sign-in (and again when the
/// provider's tokens are renewed): a denial ends it there, before any code
/// or token exists. Returns the denial's status and reason.
pub(crate) async fn login_allowed(
    app: &AppState,
    client_id: &str,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<Result<(), (StatusCode, String)>, StoreError> {
    let policy = app.policy.current();
    if !policy.has_login {
        return Ok(Ok(()));
    }
    let client: Option<ClientRecord> = app.records.get(Namespace::Client, client_id).await?;
    let sub = claims
        .get("sub")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let user = user_value(&UserFacts {
        sub,
        email: claims.get("email").and_then(serde_json::Value::as_str),
        claims,
        issuer: app.upstream.issuer(),
        client_id,
        client_name: client.as_ref().and_then(|c| c.client_name.as_deref()),
    });
    Ok(match app.policy.login(&policy, user) {
        Decision::Allow { .. } => Ok(()),
        Decision::Deny { status, reason } => {
            tracing::info!(sub, client_id, %reason, "login denied by policy");
            Err((status, reason))
        }
    })
}

fn upstream_page(e: UpstreamError) -> PageError {
    tracing::error!(error = %e, "provider login failed");
    match e {
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
    }
}

fn expired_state() -> PageError {
    PageError::bad_request(
        INVALID_STATE_TITLE,
        "This sign-in link has expired (after 10 minutes) or was already used. Start again from your application.",
    )
}

fn consent_key(browser_id: &str, client_id: &str, redirect_uri: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [browser_id, client_id, redirect_uri] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

async fn put_pending(
    app: &AppState,
    id: &str,
    pending: &PendingAuthorization,
    ttl: Duration,
) -> Result<(), PageError> {
    let key = crypto::token_hash(id);
    let sealed = app.keys.seal_pending(&key, &encode(pending)?);
    app.records
        .store
        .put(Namespace::Pending, &key, &sealed, ttl)
        .await?;
    Ok(())
}

/// Takes a pending authorization: each can be used once.
async fn take_pending(app: &AppState, id: &str) -> Result<Option<PendingAuthorization>, PageError> {
    let key = crypto::token_hash(id);
    let Some(sealed) = app.records.store.take(Namespace::Pending, &key).await? else {
        return Ok(None);
    };
    let plain = app
        .keys
        .open_pending(&key, &sealed)
        .map_err(|e| PageError::internal("pending authorization could not be opened", &e))?;
    Ok(Some(decode(&plain)?))
}

fn browser_cookie_name(app: &AppState) -> String {
    if app.settings.secure_cookies {
        format!("__Host-{BROWSER_COOKIE}")
    } else {
        BROWSER_COOKIE.to_string()
    }
}

fn signed_browser_id(app: &AppState, headers: &HeaderMap) -> Option<String> {
    let name = browser_cookie_name(app);
    let value = cookie(headers, &name)?;
    app.keys.verify_cookie(&name, value).map(str::to_string)
}

/// The browser's id, and a `Set-Cookie` when it is new.
fn browser_identity(app: &AppState, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    if let Some(id) = signed_browser_id(app, headers) {
        return (id, None);
    }
    let id = crypto::random_token();
    let name = browser_cookie_name(app);
    let secure = if app.settings.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let max_age = app.settings.config.consent.remember.0.as_secs();
    let text = format!(
        "{name}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        app.keys.sign_cookie(&name, &id)
    );
    (id, HeaderValue::from_str(&text).ok())
}
