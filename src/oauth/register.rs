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
use crate::now_unix;
use crate::oauth::redirect_uri;
use crate::server::AppState;
use crate::store::{ClientRecord, Namespace};

/// The largest registration request accepted.
pub const MAX_REGISTRATION_BYTES: usize = 16 * 1024;
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

pub async fn register(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let result = register_inner(&app, &headers, body).await;
    let outcome = match &result {
        Ok(_) => "success",
        Err(e) => e.code,
    };
    app.metrics
        .registrations
        .with_label_values(&[outcome])
        .inc();
    result
}

async fn register_inner(
    app: &AppState,
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
    let settings = &app.settings.config.registration;
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
pub fn check_readable_text(value: &str) -> Result<(), String> {
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
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ClientRecord, OAuthError> {
        parse_registration(v.as_object().unwrap(), &["cursor".into()], 3)
    }

    #[test]
    fn mcp_sdk_style_registration_is_accepted() {
        let c = parse(json!({
            "redirect_uris": ["http://localhost:3000/callback"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "client_name": "MCP Inspector",
            "client_uri": "https://github.com/modelcontextprotocol/inspector",
            "scope": "mcp",
            "software_id": "inspector",
            "application_type": "native",
            "unknown_extension": {"ignored": true}
        }))
        .unwrap();
        assert!(c.is_public());
        assert_eq!(c.metadata["scope"], "mcp");
        assert!(!c.metadata.contains_key("unknown_extension"));
    }

    #[test]
    fn defaults_follow_rfc7591_with_refresh_for_mcp() {
        let c = parse(json!({"redirect_uris": ["https://a.example/cb"]})).unwrap();
        assert_eq!(c.token_endpoint_auth_method, "client_secret_basic");
        assert_eq!(c.grant_types, vec!["authorization_code", "refresh_token"]);
    }

    #[test]
    fn bad_metadata_is_refused_with_the_right_code() {
        let cases = [
            (json!({}), "invalid_redirect_uri"),
            (json!({"redirect_uris": []}), "invalid_redirect_uri"),
            (
                json!({"redirect_uris": "https://a.example/cb"}),
                "invalid_redirect_uri",
            ),
            (
                json!({"redirect_uris": ["javascript:alert(1)"]}),
                "invalid_redirect_uri",
            ),
            (
                json!({"redirect_uris": ["https://a/1", "https://a/2", "https://a/3", "https://a/4"]}),
                "invalid_redirect_uri",
            ),
            (
                json!({"redirect_uris": ["https://a/1"], "grant_types": ["password"]}),
                "invalid_client_metadata",
            ),
            (
                json!({"redirect_uris": ["https://a/1"], "response_types": ["token"]}),
                "invalid_client_metadata",
            ),
            (
                json!({"redirect_uris": ["https://a/1"], "token_endpoint_auth_method": "private_key_jwt"}),
                "invalid_client_metadata",
            ),
            (
                json!({"redirect_uris": ["https://a/1"], "client_name": "x".repeat(500)}),
                "invalid_client_metadata",
            ),
            (
                json!({"redirect_uris": ["https://a/1"], "client_name": 5}),
                "invalid_client_metadata",
            ),
        ];
        for (body, code) in cases {
            let err = parse(body.clone()).unwrap_err();
            assert_eq!(err.code, code, "{body}");
        }
    }

    #[test]
    fn registration_refuses_invisible_control_and_bidi_characters_in_displayed_metadata() {
        for bad in [
            "\u{202e}moc.elgoog",
            "App\u{200b}",
            "App\u{2066}x\u{2069}",
            "\u{feff}App",
            "App\u{7}",
            "App\nSecond line",
            "App\u{2028}",
            "App\u{e000}",
            "App\u{a0}Name",
            "App\u{3000}Name",
            "App\u{10ffff}",
        ] {
            for key in ["client_name", "scope", "software_id", "software_version"] {
                let err = parse(json!({"redirect_uris": ["https://a.example/cb"], key: bad}))
                    .unwrap_err();
                assert_eq!(err.code, "invalid_client_metadata", "{key}: {bad:?}");
                assert!(err.description.starts_with(key), "{}", err.description);
            }
            let err = parse(json!({"redirect_uris": ["https://a.example/cb"], "contacts": [bad]}))
                .unwrap_err();
            assert_eq!(err.code, "invalid_client_metadata", "contacts: {bad:?}");
        }
        let c = parse(json!({
            "redirect_uris": ["https://a.example/cb"],
            "client_name": "Café ☕ 日本語 — Claude (beta)",
        }))
        .unwrap();
        assert_eq!(
            c.client_name.as_deref(),
            Some("Café ☕ 日本語 — Claude (beta)")
        );
    }

    #[test]
    fn invariant_3_registration_refuses_wildcard_and_unreadable_hosts() {
        for uri in [
            "https://*.example.com/cb",
            "https://*/cb",
            "https://a_b.example.com/cb",
            "http://127.1:3000/cb",
        ] {
            let err = parse(json!({"redirect_uris": [uri]})).unwrap_err();
            assert_eq!(err.code, "invalid_redirect_uri", "{uri}");
        }
        for (key, uri) in [
            ("client_uri", "https://*.example.com/"),
            ("client_uri", "javascript:alert(1)"),
            ("logo_uri", "data:image/png;base64,AAAA"),
            ("tos_uri", "https://user@app.example.com/tos"),
            ("policy_uri", "https://a..example.com/p"),
            ("client_uri", "https://app.example.com/\u{202e}"),
        ] {
            let err =
                parse(json!({"redirect_uris": ["https://a.example/cb"], key: uri})).unwrap_err();
            assert_eq!(err.code, "invalid_client_metadata", "{key} {uri}");
        }
        assert!(parse(json!({
            "redirect_uris": ["https://a.example/cb"],
            "client_uri": "https://github.com/modelcontextprotocol/inspector",
            "logo_uri": "https://app.example.com",
        }))
        .is_ok());
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        const KEYS: [&str; 14] = [
            "redirect_uris",
            "client_name",
            "token_endpoint_auth_method",
            "grant_types",
            "response_types",
            "client_uri",
            "logo_uri",
            "scope",
            "contacts",
            "software_id",
            "application_type",
            "tos_uri",
            "policy_uri",
            "other",
        ];

        /// Strings near the edges of what registration accepts.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                prop::sample::select(vec![
                    "https://app.example.com/cb",
                    "http://127.0.0.1:3000/cb",
                    "http://127.1:3000/cb",
                    "http://localhost/cb",
                    "http://evil.example/cb",
                    "https://*.example.com/cb",
                    "https://user@a.example/cb",
                    "https://@a.example/cb",
                    "https://a.example/cb#f",
                    "cursor://x/cb",
                    "javascript:alert(1)",
                    "data:text/html,x",
                    "none",
                    "code",
                    "authorization_code",
                    "refresh_token",
                    "native",
                    "\u{202e}App",
                    "App\u{200b}",
                ])
                .prop_map(str::to_string),
                "(https?|cursor|HTTPS)://[a-zA-Z0-9.*_%@:\\[\\]-]{0,20}(/[a-z%.]{0,5}){0,2}",
            ]
        }

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                text().prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::vec((text(), inner), 0..3)
                        .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        fn request() -> impl Strategy<Value = Map<String, Value>> {
            prop::collection::vec(
                (
                    prop::sample::select(KEYS.to_vec()),
                    prop_oneof![
                        json_value(),
                        prop::collection::vec(text().prop_map(Value::String), 0..4)
                            .prop_map(Value::Array),
                    ],
                ),
                0..8,
            )
            .prop_map(|kv| kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        }

        fn assert_readable(text: &str) -> Result<(), TestCaseError> {
            prop_assert!(
                !text.chars().any(|c| c.is_control()
                    || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')),
                "{:?}",
                text
            );
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            #[test]
            fn invariant_3_accepted_registrations_satisfy_the_redirect_and_text_rules(
                req in request(),
            ) {
                // Never panics; when it accepts, the invariants hold.
                if let Ok(client) = parse_registration(&req, &["cursor".to_string()], 10) {
                    prop_assert!(!client.redirect_uris.is_empty());
                    for uri in &client.redirect_uris {
                        let url = Url::parse(uri).unwrap();
                        prop_assert_eq!(url.as_str(), uri.as_str());
                        prop_assert!(!uri.contains('#') && !uri.contains('@') && !uri.contains('*'));
                        match url.scheme() {
                            "https" => prop_assert!(url.host_str().is_some_and(|h| !h.is_empty())),
                            "http" => prop_assert!(crate::net::is_loopback_host(url.host_str().unwrap())),
                            other => prop_assert_eq!(other, "cursor"),
                        }
                        if let Some(host) = url.host_str() {
                            prop_assert!(host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b)), "{}", host);
                        }
                    }
                    if let Some(name) = &client.client_name {
                        assert_readable(name)?;
                    }
                    for value in client.metadata.values() {
                        match value {
                            Value::String(s) => assert_readable(s)?,
                            Value::Array(items) => {
                                for item in items {
                                    assert_readable(item.as_str().unwrap())?;
                                }
                            }
                            other => prop_assert!(false, "unexpected metadata {:?}", other),
                        }
                    }
                    prop_assert!(client.response_types.iter().all(|r| r == "code"));
                    prop_assert!(AUTH_METHODS.contains(&client.token_endpoint_auth_method.as_str()));
                }
            }
        }
    }
}
