//! RFC 7591 dynamic client registration.
//!
//! Accepts what MCP clients send (the TypeScript SDK, mcp-remote, Cursor,
//! MCP Inspector), within bounds: sizes, counts and redirect URI rules.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use icu_properties::props::GeneralCategory;
use icu_properties::CodePointMapData;
use serde_json::{Map, Value};
use url::Url;

use crate::crypto;
use crate::error::OAuthError;
use crate::metrics::labels::oauth_result;
use crate::now_unix;
use crate::oauth::{redirect_uri, OAuthState};
use crate::store::{ClientRecord, Namespace};

/// The largest registration request accepted.
pub(crate) const MAX_REGISTRATION_BYTES: usize = 16 * 1024;
const MAX_STRING_LEN: usize = 2048;
const MAX_NAME_LEN: usize = 200;
const MAX_LIST_LEN: usize = 10;

/// Metadata that names a web page of the client; each must be an http(s)
/// URL with a readable host.
const URL_STRINGS: [&str; 4] = ["client_uri", "logo_uri", "tos_uri", "policy_uri"];

/// Metadata stored and echoed as given (after checks).
const ECHOED_STRINGS: [&str; 8] = [
    "client_uri",
    "logo_uri",
    "tos_uri",
    "policy_uri",
    "scope",
    "software_id",
    "software_version",
    "application_type",
];

const AUTH_METHODS: [&str; 3] = ["none", "client_secret_post", "client_secret_basic"];
const GRANT_TYPES: [&str; 2] = ["authorization_code", "refresh_token"];

/// POST /register
pub(crate) async fn register(
    State(app): State<OAuthState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let result = register_inner(&app, &headers, body).await;
    app.metrics.registration(oauth_result(&result));
    result
}

async fn register_inner(
    app: &OAuthState,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    check_json_content_type(headers)?;
    if body.len() > MAX_REGISTRATION_BYTES {
        return Err(OAuthError::invalid_client_metadata(format!(
            "registration request larger than {MAX_REGISTRATION_BYTES} bytes"
        )));
    }
    let request: Map<String, Value> = serde_json::from_slice(&body).map_err(|e| {
        OAuthError::invalid_client_metadata(format!("body is not a JSON object: {e}"))
    })?;
    let settings = &app.settings.registration;
    let mut client = parse_registration(
        &request,
        &settings.allowed_schemes,
        settings.max_redirect_uris,
    )?;

    let secret = (!client.is_public()).then(crypto::random_token);
    client.client_secret_hash = secret.as_deref().map(crypto::token_hash);
    let ttl = settings.client_ttl.0;
    let inserted = app
        .records
        .insert_new(Namespace::Client, &client.client_id.clone(), &client, ttl)
        .await?;
    if !inserted {
        return Err(OAuthError::server_error(
            "client id collision",
            &"random client id already taken",
        ));
    }
    tracing::info!(client_id = %client.client_id, client_name = client.client_name.as_deref().unwrap_or_default(), "client registered");
    let mut response = (
        StatusCode::CREATED,
        Json(registration_response(&client, secret.as_deref())),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// RFC 7591 §3.1 registrations are `application/json`. Anything else is
/// refused, so a cross-site HTML form (which can only send form, multipart
/// or `text/plain` bodies without a CORS preflight) cannot register clients.
fn check_json_content_type(headers: &HeaderMap) -> Result<(), OAuthError> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if media_type.is_some_and(|m| m.eq_ignore_ascii_case("application/json")) {
        return Ok(());
    }
    Err(OAuthError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request",
        "registration requests must be sent as Content-Type: application/json",
    ))
}

/// Checks a registration request and builds the client it describes.
pub fn parse_registration(
    request: &Map<String, Value>,
    allowed_schemes: &[String],
    max_redirect_uris: usize,
) -> Result<ClientRecord, OAuthError> {
    let redirect_uris = redirect_uris(request, allowed_schemes, max_redirect_uris)?;

    let auth_method = string(request, "token_endpoint_auth_method", 64)?
        .unwrap_or_else(|| "client_secret_basic".into());
    if !AUTH_METHODS.contains(&auth_method.as_str()) {
        return Err(OAuthError::invalid_client_metadata(format!(
            "token_endpoint_auth_method `{auth_method}` is not supported; use one of {AUTH_METHODS:?}"
        )));
    }
    // Clients that do not say get both grants: MCP clients expect refresh.
    let grant_types = string_list(request, "grant_types", MAX_LIST_LEN)?
        .unwrap_or_else(|| GRANT_TYPES.iter().map(|s| s.to_string()).collect());
    if let Some(bad) = grant_types
        .iter()
        .find(|g| !GRANT_TYPES.contains(&g.as_str()))
    {
        return Err(OAuthError::invalid_client_metadata(format!(
            "grant type `{bad}` is not supported"
        )));
    }
    if !grant_types.iter().any(|g| g == "authorization_code") {
        return Err(OAuthError::invalid_client_metadata(
            "grant_types must include authorization_code",
        ));
    }
    let response_types = string_list(request, "response_types", MAX_LIST_LEN)?
        .unwrap_or_else(|| vec!["code".into()]);
    if response_types.iter().any(|r| r != "code") {
        return Err(OAuthError::invalid_client_metadata(
            "only the `code` response type is supported",
        ));
    }
    let client_name = string(request, "client_name", MAX_NAME_LEN)?;

    let metadata = echoed_metadata(request)?;
    let now = now_unix();
    Ok(ClientRecord {
        client_id: crypto::random_id(),
        client_secret_hash: None,
        redirect_uris,
        token_endpoint_auth_method: auth_method,
        grant_types,
        response_types,
        client_name,
        metadata,
        client_id_issued_at: now,
        last_used_at: now,
    })
}

/// The redirect URIs: at least one, each passing the registration rules.
fn redirect_uris(
    request: &Map<String, Value>,
    allowed_schemes: &[String],
    max_redirect_uris: usize,
) -> Result<Vec<String>, OAuthError> {
    let redirect_uris = string_list(request, "redirect_uris", max_redirect_uris)?
        .ok_or_else(|| OAuthError::invalid_redirect_uri("redirect_uris is required"))?;
    if redirect_uris.is_empty() {
        return Err(OAuthError::invalid_redirect_uri(
            "redirect_uris must list at least one URI",
        ));
    }
    for uri in &redirect_uris {
        redirect_uri::validate_for_registration(uri, allowed_schemes)
            .map_err(OAuthError::invalid_redirect_uri)?;
    }
    Ok(redirect_uris)
}

/// The metadata stored and echoed back: readable strings, web pages with
/// readable hosts, contacts, and a known application type.
fn echoed_metadata(request: &Map<String, Value>) -> Result<Map<String, Value>, OAuthError> {
    let mut metadata = Map::new();
    for key in ECHOED_STRINGS {
        if let Some(value) = string(request, key, MAX_STRING_LEN)? {
            if URL_STRINGS.contains(&key) {
                check_web_url(key, &value)?;
            }
            metadata.insert(key.into(), Value::String(value));
        }
    }
    if let Some(contacts) = string_list(request, "contacts", MAX_LIST_LEN)? {
        metadata.insert("contacts".into(), Value::from(contacts));
    }
    if let Some(app_type) = metadata.get("application_type").and_then(Value::as_str) {
        if app_type != "web" && app_type != "native" {
            return Err(OAuthError::invalid_client_metadata(
                "application_type must be `web` or `native`",
            ));
        }
    }
    Ok(metadata)
}

fn registration_response(client: &ClientRecord, secret: Option<&str>) -> Value {
    let mut body = client.metadata.clone();
    body.insert("client_id".into(), client.client_id.clone().into());
    body.insert(
        "client_id_issued_at".into(),
        client.client_id_issued_at.into(),
    );
    if let Some(secret) = secret {
        body.insert("client_secret".into(), secret.into());
        // The secret lives as long as the registration; unused clients are
        // forgotten after `registration.client_ttl`.
        body.insert("client_secret_expires_at".into(), 0.into());
    }
    body.insert("redirect_uris".into(), client.redirect_uris.clone().into());
    body.insert(
        "token_endpoint_auth_method".into(),
        client.token_endpoint_auth_method.clone().into(),
    );
    body.insert("grant_types".into(), client.grant_types.clone().into());
    body.insert(
        "response_types".into(),
        client.response_types.clone().into(),
    );
    if let Some(name) = &client.client_name {
        body.insert("client_name".into(), name.clone().into());
    }
    Value::Object(body)
}

/// A client's web page: an http(s) URL without credentials whose host a
/// person can read.
fn check_web_url(key: &str, value: &str) -> Result<(), OAuthError> {
    let bad = |why: &str| OAuthError::invalid_client_metadata(format!("{key} {why}"));
    let url = Url::parse(value).map_err(|e| bad(&format!("is not an absolute URL ({e})")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(bad("must be an https URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not contain user information"));
    }
    let host = url.host().ok_or_else(|| bad("has no host"))?;
    redirect_uri::check_host(&host).map_err(|why| bad(&why))
}

/// Refuses text that would not read as written wherever metadata is shown
/// (the consent page, logs, terminal listings): control characters (Cc),
/// format characters such as bidi overrides and zero-width joiners (Cf),
/// line and paragraph separators (Zl, Zp), private-use (Co) and unassigned
/// (Cn) code points, and spaces other than U+0020 (Zs).
pub(crate) fn check_readable_text(value: &str) -> Result<(), String> {
    let categories = CodePointMapData::<GeneralCategory>::new();
    let unreadable = value.chars().find(|&c| {
        matches!(
            categories.get(c),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
                | GeneralCategory::PrivateUse
                | GeneralCategory::Surrogate
                | GeneralCategory::Unassigned
        ) || (categories.get(c) == GeneralCategory::SpaceSeparator && c != ' ')
    });
    match unreadable {
        Some(c) => Err(format!(
            "contains U+{:04X}, a control, formatting, invisible or unassigned character",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

fn string(
    request: &Map<String, Value>,
    key: &str,
    max: usize,
) -> Result<Option<String>, OAuthError> {
    match request.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= max => check_readable_text(s)
            .map(|()| Some(s.clone()))
            .map_err(|why| OAuthError::invalid_client_metadata(format!("{key} {why}"))),
        Some(Value::String(_)) => Err(OAuthError::invalid_client_metadata(format!(
            "{key} is longer than {max} characters"
        ))),
        Some(_) => Err(OAuthError::invalid_client_metadata(format!(
            "{key} must be a string"
        ))),
    }
}

fn string_list(
    request: &Map<String, Value>,
    key: &str,
    max_items: usize,
) -> Result<Option<Vec<String>>, OAuthError> {
    let items = match request.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(list_error(key, "must be an array of strings")),
    };
    if items.len() > max_items {
        return Err(list_error(
            key,
            &format!("may list at most {max_items} entries"),
        ));
    }
    items
        .iter()
        .map(|v| match v {
            Value::String(s) if s.len() <= MAX_STRING_LEN => check_readable_text(s)
                .map(|()| s.clone())
                .map_err(|why| list_error(key, &why)),
            Value::String(_) => Err(list_error(
                key,
                &format!("entries must be at most {MAX_STRING_LEN} characters"),
            )),
            _ => Err(list_error(key, "must be an array of strings")),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn list_error(key: &str, message: &str) -> OAuthError {
    let description = format!("{key} {message}");
    if key == "redirect_uris" {
        OAuthError::invalid_redirect_uri(description)
    } else {
        OAuthError::invalid_client_metadata(description)
    }
}

#[cfg(test)]
mod tests;
