//! Each reader's form of an error: OAuth JSON for a client, an HTML page for
//! a person, a redirect for a client reached through the browser, a JSON-RPC
//! error for an MCP client, a bare 400 for a connection that cannot be
//! trusted. A failure inside the server is logged here, as it is rendered,
//! and nowhere else.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::{
    redirect_with_params, AppError, FramingError, InternalCause, OAuthError, PageError, ProxyError,
    RedirectError,
};
use crate::oauth::pages;

#[cfg(test)]
mod tests;

/// The administrator's half of an error the reader sees in general terms.
fn log_internal(cause: Option<&InternalCause>) {
    if let Some(cause) = cause {
        tracing::error!(error = %cause.error, "{}", cause.context);
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::OAuth(e) => e.into_response(),
            AppError::Page(e) => e.into_response(),
            AppError::Redirect(e) => e.into_response(),
        }
    }
}

/// RFC 6749 §5.2: JSON, never cached; `WWW-Authenticate: Basic` when the
/// client tried Basic (§5.2 `invalid_client`), `Retry-After` on a limit.
impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        log_internal(self.internal_cause());
        let body = json!({ "error": self.code, "error_description": self.description });
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.basic_challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"mcp-oauth-proxy\""),
            );
        }
        response
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        log_internal(self.internal_cause());
        let mut response =
            pages::html_response(self.status, pages::error_page(&self.title, &self.message));
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// RFC 6749 §4.1.2.1 with RFC 9207's `iss`: the error goes back to the
/// client's (already validated) redirect URI.
impl IntoResponse for RedirectError {
    fn into_response(self) -> Response {
        let mut params: Vec<(&str, &str)> = vec![
            ("error", self.code),
            ("error_description", &self.description),
        ];
        if let Some(state) = &self.state {
            params.push(("state", state));
        }
        params.push(("iss", &self.issuer));
        match redirect_with_params(&self.redirect_uri, &params) {
            Some(location) => pages::found(&location),
            None => PageError::bad_request(
                "Invalid redirect URI",
                "The application's redirect address is not a valid URL.",
            )
            .into_response(),
        }
    }
}

/// A JSON-RPC error with the failure's status; the id is unknown (null)
/// unless the policy denied one call. A 401 carries the bearer challenge
/// that leads the client to the protected resource's metadata.
impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        log_proxy_error(&self);
        let status = self.status();
        let id = match &self {
            ProxyError::PolicyDenied { id, .. } => id.clone().unwrap_or(serde_json::Value::Null),
            _ => serde_json::Value::Null,
        };
        let body = json!({
            "jsonrpc": "2.0",
            "error": { "code": self.rpc_code(), "message": self.to_string() },
            "id": id,
        });
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(challenge) = bearer_challenge(&self) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let ProxyError::RateLimited(limited) = &self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(limited.retry_after_secs()),
            );
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
        }
        response
    }
}

/// The proxy's own failures (downstream, store) at warn; refusals of the
/// client's request at debug, since the client is told why.
fn log_proxy_error(error: &ProxyError) {
    match error {
        ProxyError::DownstreamUnreachable(_)
        | ProxyError::BadDownstreamAnswer(_)
        | ProxyError::DownstreamTimeout(_)
        | ProxyError::StoreUnavailable(_) => {
            tracing::warn!(error = %error, "MCP request failed")
        }
        _ => tracing::debug!(error = %error, "MCP request refused"),
    }
}

/// RFC 9728 §5.1: where to find the authorization server, and
/// `invalid_token` when the token sent was not accepted.
fn bearer_challenge(error: &ProxyError) -> Option<HeaderValue> {
    let ProxyError::Unauthorized {
        resource_metadata,
        token_sent,
        ..
    } = error
    else {
        return None;
    };
    let challenge = if *token_sent {
        format!("Bearer error=\"invalid_token\", resource_metadata=\"{resource_metadata}\"")
    } else {
        format!("Bearer resource_metadata=\"{resource_metadata}\"")
    };
    HeaderValue::from_str(&challenge).ok()
}

impl IntoResponse for FramingError {
    fn into_response(self) -> Response {
        tracing::info!(reason = self.0, "request refused: ambiguous framing");
        let mut response = (StatusCode::BAD_REQUEST, format!("{self}\n")).into_response();
        // The bytes after this request cannot be trusted to start the next one.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}
