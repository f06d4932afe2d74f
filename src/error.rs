//! The error types every layer shares, as plain data: what went wrong, the
//! status it means and, for a failure inside the server, its cause. Nothing
//! here renders or logs; `server::rescue` turns each error into the form its
//! reader needs and logs it, once.

use axum::http::StatusCode;
use url::Url;

/// Any failure a handler reports.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    /// For an OAuth client: RFC 6749 JSON.
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    /// For a person in a browser: an HTML page.
    #[error(transparent)]
    Page(#[from] PageError),
    /// For the client, through the browser: a redirect to its redirect URI.
    #[error(transparent)]
    Redirect(#[from] RedirectError),
}

/// A failure inside the server that the reader is told of only in general
/// terms; what the administrator needs is kept here and logged, at error
/// level, when the error is rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalCause {
    /// What the server was doing: the log message.
    pub context: String,
    /// What went wrong, as text: the log's `error` field.
    pub error: String,
}

impl InternalCause {
    fn new(context: &str, e: &dyn std::fmt::Display) -> Self {
        InternalCause {
            context: context.to_string(),
            error: e.to_string(),
        }
    }
}

/// An RFC 6749 §5.2 error response.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {description}")]
pub struct OAuthError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `error` code.
    pub code: &'static str,
    /// The `error_description`.
    pub description: String,
    /// Set for `invalid_client` when the client tried HTTP Basic.
    pub basic_challenge: bool,
    /// Seconds for a `Retry-After` header (rate limits).
    pub retry_after: Option<u64>,
    internal: Option<InternalCause>,
}

impl OAuthError {
    /// An error with this status, code and description.
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status,
            code,
            description: description.into(),
            basic_challenge: false,
            retry_after: None,
            internal: None,
        }
    }
    /// 400 `invalid_request`.
    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", d)
    }
    /// 401 `invalid_client`.
    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", d)
    }
    /// 400 `invalid_grant`.
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", d)
    }
    /// 400 `invalid_scope`.
    pub fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", d)
    }
    /// 400 `invalid_target` (RFC 8707).
    pub fn invalid_target(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_target", d)
    }
    /// 400 `unauthorized_client`.
    pub fn unauthorized_client(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unauthorized_client", d)
    }
    /// 400 `unsupported_grant_type`.
    pub fn unsupported_grant_type(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", d)
    }
    /// 400 `invalid_client_metadata` (RFC 7591).
    pub fn invalid_client_metadata(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_client_metadata", d)
    }
    /// 400 `invalid_redirect_uri` (RFC 7591).
    pub fn invalid_redirect_uri(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_redirect_uri", d)
    }
    /// 500 `server_error`: the client learns only that it failed; `context`
    /// and `e` go to the log when the error is rendered.
    pub fn server_error(context: &str, e: &dyn std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The authorization server could not complete the request; see its log",
        )
        .caused_by(context, e)
    }
    /// 503 `temporarily_unavailable`.
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
    /// Asks for HTTP Basic again (`WWW-Authenticate: Basic`).
    pub fn with_basic_challenge(mut self) -> Self {
        self.basic_challenge = true;
        self
    }
    /// The same error, with an internal cause to log when it is rendered.
    pub fn caused_by(mut self, context: &str, e: &dyn std::fmt::Display) -> Self {
        self.internal = Some(InternalCause::new(context, e));
        self
    }
    /// The internal cause to log, if there is one.
    pub fn internal_cause(&self) -> Option<&InternalCause> {
        self.internal.as_ref()
    }
}

impl From<RateLimited> for OAuthError {
    fn from(limited: RateLimited) -> Self {
        OAuthError::rate_limited(limited)
    }
}

/// A page for a person: used whenever redirecting back to the client would
/// be unsafe (unknown client, untrusted redirect URI) or impossible.
#[derive(Debug, thiserror::Error)]
#[error("{title}: {message}")]
pub(crate) struct PageError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The page's title and heading.
    pub title: String,
    /// What the person reads.
    pub message: String,
    /// Seconds for a `Retry-After` header (rate limits).
    pub retry_after: Option<u64>,
    internal: Option<InternalCause>,
}

impl PageError {
    /// A page with this status, title and message.
    pub(crate) fn new(
        status: StatusCode,
        title: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        PageError {
            status,
            title: title.into(),
            message: message.into(),
            retry_after: None,
            internal: None,
        }
    }
    /// A 400 page.
    pub(crate) fn bad_request(title: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, title, message)
    }
    /// A 500 page: the person learns only that it failed; `context` and `e`
    /// go to the log when the page is rendered.
    pub(crate) fn internal(context: &str, e: &dyn std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "The sign-in service could not complete your request. Try again; if it keeps failing, tell the administrator (details are in the proxy's log).",
        )
        .caused_by(context, e)
    }
    /// The same page, with an internal cause to log when it is rendered.
    pub(crate) fn caused_by(mut self, context: &str, e: &dyn std::fmt::Display) -> Self {
        self.internal = Some(InternalCause::new(context, e));
        self
    }
    /// The internal cause to log, if there is one.
    pub(crate) fn internal_cause(&self) -> Option<&InternalCause> {
        self.internal.as_ref()
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

/// An error returned to the client's (already validated) redirect URI.
#[derive(Debug, thiserror::Error)]
#[error("{code} for {redirect_uri}: {description}")]
pub(crate) struct RedirectError {
    /// The client's redirect URI, already checked against its registration.
    pub redirect_uri: String,
    /// The `error` code.
    pub code: &'static str,
    /// The `error_description`.
    pub description: String,
    /// The client's `state`, returned as it came.
    pub state: Option<String>,
    /// This server's issuer (`iss`, RFC 9207).
    pub issuer: String,
}

/// `uri` with `params` appended to its query (keeping what it had).
pub(crate) fn redirect_with_params(uri: &str, params: &[(&str, &str)]) -> Option<String> {
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
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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
        /// Why the token was not accepted.
        reason: &'static str,
    },
    /// Refused before the policy ran (origin, ownership, policy failure).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The policy said no.
    #[error("{reason}")]
    PolicyDenied {
        /// The status the policy chose.
        status: StatusCode,
        /// The policy's reason, shown to the client.
        reason: String,
        /// The JSON-RPC id of the call denied, when there was one.
        id: Option<serde_json::Value>,
    },
    /// A request the proxy cannot accept.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// An `Mcp-Session-Id` the proxy does not know (or not for this user).
    #[error("session not found")]
    SessionNotFound,
    /// A body over the size limit.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// A method the MCP endpoints do not serve.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The downstream MCP server could not be reached.
    #[error("Failed to connect to downstream MCP server: {0}")]
    DownstreamUnreachable(String),
    /// The downstream MCP server answered something the proxy cannot pass on.
    #[error("the downstream MCP server sent an invalid answer: {0}")]
    BadDownstreamAnswer(String),
    /// The downstream MCP server did not answer in time.
    #[error("downstream MCP server did not answer within {0:?}")]
    DownstreamTimeout(std::time::Duration),
    /// The store did not answer.
    #[error("the authorization store is unavailable: {0}")]
    StoreUnavailable(String),
    /// A route this configuration does not serve.
    #[error("{0}")]
    NotConfigured(&'static str),
    /// The body did not arrive in time.
    #[error(transparent)]
    BodyTimeout(#[from] BodyTimeout),
    /// One of the `[limits]` refused the request.
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
    /// More messages in a batch than `downstream.max_batch_size`: -32600.
    #[error("JSON-RPC batches are limited to {max} messages (downstream.max_batch_size); this one has at least {size}")]
    BatchTooLarge {
        /// How many messages were counted before giving up.
        size: usize,
        /// The limit.
        max: usize,
    },
}

impl MessageError {
    /// The JSON-RPC error code.
    pub fn rpc_code(&self) -> i64 {
        match self {
            MessageError::Parse(_) => -32700,
            MessageError::Invalid(_) | MessageError::BatchTooLarge { .. } => -32600,
        }
    }
}

impl ProxyError {
    /// A layer below `Authenticate` found no session in the request
    /// (`session::authenticated`): its stack lacks Authenticate, and the
    /// request is refused.
    pub(crate) fn no_session() -> Self {
        ProxyError::Forbidden("no authenticated session".into())
    }

    /// The HTTP status this failure is answered with.
    pub fn status(&self) -> StatusCode {
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
    pub fn rpc_code(&self) -> i64 {
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
pub(crate) struct FramingError(pub &'static str);
