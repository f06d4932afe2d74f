//! RFC 8414 authorization server metadata and RFC 9728 protected resource
//! metadata. Every URL derives from `server.public_url`, never from the
//! request (invariant 1).

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::oauth::OAuthState;

/// The RFC 8414 document: endpoints and what this server supports.
pub(crate) fn authorization_server_document(
    public_url: &str,
    client_metadata_documents: bool,
) -> Value {
    json!({
        "client_id_metadata_document_supported": client_metadata_documents,
        "issuer": public_url,
        "authorization_endpoint": format!("{public_url}/authorize"),
        "token_endpoint": format!("{public_url}/token"),
        "registration_endpoint": format!("{public_url}/register"),
        "revocation_endpoint": format!("{public_url}/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", crate::config::JWT_BEARER_GRANT],
        // draft-ietf-oauth-identity-assertion-authz-grant §7.2, MCP's
        // enterprise-managed-authorization extension: ID-JAGs accepted.
        "authorization_grant_profiles_supported": [crate::oauth::id_jag::ID_JAG_PROFILE],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
    })
}

/// The RFC 9728 document of the resource at `path`, route `route` (empty
/// for the proxy as a whole).
pub(crate) fn protected_resource_document(public_url: &str, path: &str, route: &str) -> Value {
    let name = if route.is_empty() || route == crate::config::DEFAULT_ROUTE {
        "MCP server (via mcp-oauth-proxy)".to_string()
    } else {
        format!("{route} (via mcp-oauth-proxy)")
    };
    json!({
        "resource": format!("{public_url}{path}"),
        "authorization_servers": [public_url],
        "bearer_methods_supported": ["header"],
        "resource_name": name,
    })
}

/// A metadata document, cacheable for five minutes.
pub(crate) fn cacheable_json(body: Value) -> Response {
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// GET /.well-known/oauth-authorization-server
pub(crate) async fn authorization_server(State(app): State<OAuthState>) -> Response {
    cacheable_json(authorization_server_document(
        &app.settings.public_url,
        app.settings.registration.client_metadata_documents,
    ))
}

/// GET /.well-known/oauth-protected-resource
pub(crate) async fn protected_resource_root(State(app): State<OAuthState>) -> Response {
    cacheable_json(protected_resource_document(
        &app.settings.public_url,
        "",
        "",
    ))
}
