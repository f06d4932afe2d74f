//! Typed errors and the one place that turns them into responses, each in the
//! form its reader needs: OAuth JSON for clients, an HTML page for a person
//! in a browser, or a redirect back to the client with the error.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use url::Url;

use crate::oauth::pages;
use crate::store::StoreError;

/// Any failure a handler reports.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    #[error(transparent)]
    Page(#[from] PageError),
    #[error(transparent)]
    Redirect(#[from] RedirectError),
}

/// An RFC 6749 §5.2 error response.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {description}")]
pub struct OAuthError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: String,
    /// Set for `invalid_client` when the client tried HTTP Basic.
    pub basic_challenge: bool,
    /// Seconds for a `Retry-After` header (rate limits).
    pub retry_after: Option<u64>,
}

impl OAuthError {
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status,
            code,
            description: description.into(),
            basic_challenge: false,
            retry_after: None,
        }
    }
    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", d)
    }
    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", d)
    }
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", d)
    }
    pub fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", d)
    }
    pub fn invalid_target(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_target", d)
    }
    pub fn unauthorized_client(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unauthorized_client", d)
    }
    pub fn unsupported_grant_type(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", d)
    }
    pub fn invalid_client_metadata(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_client_metadata", d)
    }
    pub fn invalid_redirect_uri(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_redirect_uri", d)
    }
    pub fn server_error(context: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %e, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The authorization server could not complete the request; see its log",
        )
    }
    pub fn temporarily_unavailable(d: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            d,
        )
    }
    /// Too many requests from one address: a 429 that clients retry, as
    /// they would `temporarily_unavailable`.
    pub fn rate_limited(limited: RateLimited) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            limited.to_string(),
        );
        error.retry_after = Some(limited.retry_after_secs());
        error
    }
    pub fn with_basic_challenge(mut self) -> Self {
        self.basic_challenge = true;
        self
    }
}

impl From<RateLimited> for OAuthError {
    fn from(limited: RateLimited) -> Self {
        OAuthError::rate_limited(limited)
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        match e {
            // A store that does not answer is temporary: clients retry.
            StoreError::Backend(_) => {
                tracing::error!(error = %e, "the store is unavailable");
                OAuthError::temporarily_unavailable(
                    "the authorization store is unavailable; try again shortly",
                )
            }
            StoreError::Corrupt(_) => OAuthError::server_error("store operation failed", &e),
        }
    }
}

/// A page for a person: used whenever redirecting back to the client would
/// be unsafe (unknown client, untrusted redirect URI) or impossible.
#[derive(Debug, thiserror::Error)]
#[error("{title}: {message}")]
pub struct PageError {
    pub status: StatusCode,
    pub title: String,
    pub message: String,
    /// Seconds for a `Retry-After` header (rate limits).
    pub retry_after: Option<u64>,
}

impl PageError {
    pub fn new(status: StatusCode, title: impl Into<String>, message: impl Into<String>) -> Self {
        PageError {
            status,
            title: title.into(),
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(title: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, title, message)
    }
    pub fn internal(context: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %e, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "The sign-in service could not complete your request. Try again; if it keeps failing, tell the administrator (details are in the proxy's log).",
        )
    }
}

impl From<RateLimited> for PageError {
    fn from(limited: RateLimited) -> Self {
        let seconds = limited.retry_after_secs();
        let mut page = PageError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            format!(
                "Too many sign-in requests came from your network. Wait {seconds} second{} and try again.",
                if seconds == 1 { "" } else { "s" }
            ),
        );
        page.retry_after = Some(seconds);
        page
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Backend(_) => {
                tracing::error!(error = %e, "the store is unavailable");
                PageError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in temporarily unavailable",
                    "The sign-in service cannot reach its storage right now. Try again in a moment.",
                )
            }
            StoreError::Corrupt(_) => PageError::internal("store operation failed", &e),
        }
    }
}

/// An error returned to the client's (already validated) redirect URI.
#[derive(Debug, thiserror::Error)]
#[error("{code} for {redirect_uri}: {description}")]
pub struct RedirectError {
    pub redirect_uri: String,
    pub code: &'static str,
    pub description: String,
    pub state: Option<String>,
    pub issuer: String,
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

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
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
            Some(location) => found(&location),
            None => PageError::bad_request(
                "Invalid redirect URI",
                "The application's redirect address is not a valid URL.",
            )
            .into_response(),
        }
    }
}

/// `uri` with `params` appended to its query (keeping what it had).
pub fn redirect_with_params(uri: &str, params: &[(&str, &str)]) -> Option<String> {
    let mut url = Url::parse(uri).ok()?;
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in params {
            query.append_pair(k, v);
        }
    }
    Some(url.to_string())
}

/// An error and its sources on one line, for logs and messages.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A 302 redirect that caches nowhere.
pub fn found(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => {
            let mut response = StatusCode::FOUND.into_response();
            response.headers_mut().insert(header::LOCATION, value);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(_) => PageError::bad_request(
            "Invalid redirect",
            "The redirect address contains invalid characters.",
        )
        .into_response(),
    }
}

/// A failure on the MCP request path, shown to an MCP client as a JSON-RPC
/// error with the right HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No usable bearer token: the client must (re)authorize.
    #[error("unauthorized: {reason}")]
    Unauthorized {
        /// The protected resource's metadata URL.
        resource_metadata: String,
        /// Whether a token was sent (then `error="invalid_token"`).
        token_sent: bool,
        reason: &'static str,
    },
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("{reason}")]
    PolicyDenied {
        status: StatusCode,
        reason: String,
        id: Option<serde_json::Value>,
    },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("session not found")]
    SessionNotFound,
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("Failed to connect to downstream MCP server: {0}")]
    DownstreamUnreachable(String),
    #[error("the downstream MCP server sent an invalid answer: {0}")]
    BadDownstreamAnswer(String),
    #[error("downstream MCP server did not answer within {0:?}")]
    DownstreamTimeout(std::time::Duration),
    #[error("the authorization store is unavailable: {0}")]
    StoreUnavailable(String),
    #[error("{0}")]
    NotConfigured(&'static str),
    #[error(transparent)]
    BodyTimeout(#[from] BodyTimeout),
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    /// A body the policy cannot read one way only (invariant 10).
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// A caller went past one of the `[limits]`: answered 429 with
/// `Retry-After`, in the form of the route it called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many requests (limits.{limit}); retry after {} s", self.retry_after_secs())]
pub struct RateLimited {
    /// The `[limits]` table that refused the request.
    pub limit: &'static str,
    /// When the next request would be allowed.
    pub retry_after: std::time::Duration,
}

impl RateLimited {
    /// Whole seconds, rounded up and at least 1 (`Retry-After` has no
    /// fractions, and 0 would invite an immediate retry).
    pub fn retry_after_secs(&self) -> u64 {
        let whole = self.retry_after.as_secs();
        let seconds = if self.retry_after.subsec_nanos() > 0 {
            whole + 1
        } else {
            whole
        };
        seconds.max(1)
    }
}

/// Why a JSON-RPC request body was refused before the policy ran.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Not one well-formed JSON text: -32700.
    #[error("parse error: {0}")]
    Parse(String),
    /// JSON that is not a JSON-RPC request, or that readers could read
    /// differently: -32600.
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("JSON-RPC batches are limited to {max} messages (downstream.max_batch_size); this one has at least {size}")]
    BatchTooLarge { size: usize, max: usize },
}

impl MessageError {
    pub fn rpc_code(&self) -> i64 {
        match self {
            MessageError::Parse(_) => -32700,
            MessageError::Invalid(_) | MessageError::BatchTooLarge { .. } => -32600,
        }
    }
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            ProxyError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::PolicyDenied { status, .. } => *status,
            ProxyError::BadRequest(_) | ProxyError::Message(_) => StatusCode::BAD_REQUEST,
            ProxyError::SessionNotFound => StatusCode::NOT_FOUND,
            ProxyError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::DownstreamUnreachable(_) | ProxyError::BadDownstreamAnswer(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::DownstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NotConfigured(_) => StatusCode::NOT_FOUND,
            ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// JSON-RPC error codes: -32600 invalid request, -32001 auth, -32002
    /// session, -32003 denied, -32000 server-side failures.
    fn rpc_code(&self) -> i64 {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::PayloadTooLarge(_)
            | ProxyError::MethodNotAllowed
            | ProxyError::BodyTimeout(_) => -32600,
            ProxyError::Unauthorized { .. } => -32001,
            ProxyError::SessionNotFound => -32002,
            ProxyError::Message(e) => e.rpc_code(),
            ProxyError::Forbidden(_) | ProxyError::PolicyDenied { .. } => -32003,
            _ => -32000,
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let status = self.status();
        let id = match &self {
            ProxyError::PolicyDenied { id, .. } => id.clone().unwrap_or(serde_json::Value::Null),
            _ => serde_json::Value::Null,
        };
        match &self {
            ProxyError::DownstreamUnreachable(_)
            | ProxyError::BadDownstreamAnswer(_)
            | ProxyError::DownstreamTimeout(_)
            | ProxyError::StoreUnavailable(_) => {
                tracing::warn!(error = %self, "MCP request failed")
            }
            _ => tracing::debug!(error = %self, "MCP request refused"),
        }
        let body = json!({
            "jsonrpc": "2.0",
            "error": { "code": self.rpc_code(), "message": self.to_string() },
            "id": id,
        });
        let mut response = (status, axum::Json(body)).into_response();
        if let ProxyError::Unauthorized {
            resource_metadata,
            token_sent,
            ..
        } = &self
        {
            let challenge = if *token_sent {
                format!("Bearer error=\"invalid_token\", resource_metadata=\"{resource_metadata}\"")
            } else {
                format!("Bearer resource_metadata=\"{resource_metadata}\"")
            };
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
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

/// A request body that did not arrive in time (`server.body_timeout`).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (server.body_timeout)")]
pub struct BodyTimeout(pub std::time::Duration);

impl BodyTimeout {
    /// Finds a body timeout among the causes of a body read error.
    pub fn in_chain(error: &(dyn std::error::Error + 'static)) -> Option<BodyTimeout> {
        std::iter::successors(Some(error), |e| e.source())
            .find_map(|e| e.downcast_ref::<BodyTimeout>())
            .copied()
    }
}

/// A request whose length another parser could read differently (request
/// smuggling): refused with 400 and the connection closed, before any
/// handler or the downstream sees it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("ambiguous request framing: {0}")]
pub struct FramingError(pub &'static str);

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
