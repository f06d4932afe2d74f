//! `[downstream]`: the MCP server behind the proxy, and what reaches it.

use serde::{Deserialize, Serialize};

use super::lenient::{lenient_number, lenient_opt_string};
use super::DurationStr;

/// `[downstream]`: where the MCP server is and how requests to it are bounded.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DownstreamConfig {
    /// The MCP server's Streamable HTTP endpoint (`/mcp` is forwarded here).
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub(crate) url: Option<String>,
    /// The MCP server's legacy SSE endpoint, if it has one.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub(crate) sse_url: Option<String>,
    /// How long opening a connection to the downstream may take.
    #[serde(default = "default_connect_timeout")]
    pub(crate) connect_timeout: DurationStr,
    /// How long to wait for the downstream's response headers.
    #[serde(default = "default_response_timeout")]
    pub(crate) response_timeout: DurationStr,
    /// How long an idle connection to the downstream is kept for the next
    /// request; below the downstream's own keep-alive timeout, or a request
    /// sent as the downstream closes the connection fails.
    #[serde(default = "default_pool_idle_timeout")]
    pub(crate) pool_idle_timeout: DurationStr,
    /// A stream with no event for this long is closed. Streams have no total
    /// time limit.
    #[serde(default = "default_sse_idle_timeout")]
    pub(crate) sse_idle_timeout: DurationStr,
    /// The largest JSON-RPC request body accepted (the policy reads it).
    #[serde(
        default = "default_max_request_bytes",
        deserialize_with = "lenient_number"
    )]
    pub(crate) max_request_bytes: usize,
    /// Names of client cookies the downstream receives, and may set; every
    /// other cookie stays between the client and the proxy.
    #[serde(default)]
    pub(crate) pass_cookies: Vec<String>,
    /// The most messages one JSON-RPC batch may hold (each runs the policy);
    /// 0 refuses batches (MCP 2025-06-18 and later have none), 1 allows a
    /// batch of one message.
    #[serde(
        default = "default_max_batch_size",
        deserialize_with = "lenient_number"
    )]
    pub(crate) max_batch_size: usize,
    /// The `aud` of the identity assertions this downstream receives
    /// (`identity_assertion()` in the policy); unset: the downstream URL.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub(crate) assertion_audience: Option<String>,
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        DownstreamConfig {
            url: None,
            sse_url: None,
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
            pool_idle_timeout: default_pool_idle_timeout(),
            sse_idle_timeout: default_sse_idle_timeout(),
            max_request_bytes: default_max_request_bytes(),
            pass_cookies: Vec::new(),
            max_batch_size: default_max_batch_size(),
            assertion_audience: None,
        }
    }
}

fn default_connect_timeout() -> DurationStr {
    DurationStr::from_secs(5)
}
fn default_response_timeout() -> DurationStr {
    DurationStr::from_secs(120)
}
/// Below the keep-alive timeouts MCP servers run with: Node's http server,
/// uvicorn and Apache close idle connections after 5 s, nginx after 75 s.
fn default_pool_idle_timeout() -> DurationStr {
    DurationStr::from_secs(4)
}
fn default_sse_idle_timeout() -> DurationStr {
    DurationStr::from_secs(30 * 60)
}
fn default_max_request_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_batch_size() -> usize {
    16
}
/// Past this, one request's policy runs take too long to be a batch.
pub(super) const MAX_BATCH_SIZE_LIMIT: usize = 1024;

/// Whether a cookie is one of the proxy's own sign-in cookies
/// (`__Host-mcp-*`, `mcp-*`). Browsers match the `__Host-`/`__Secure-`
/// prefixes ignoring case, so this does too.
pub(crate) fn is_own_cookie(name: &str) -> bool {
    let lower = name.trim().to_ascii_lowercase();
    let bare = lower
        .strip_prefix("__host-")
        .or_else(|| lower.strip_prefix("__secure-"))
        .unwrap_or(&lower);
    bare.starts_with("mcp-")
}

/// A `downstream.pass_cookies` entry: an RFC 6265 cookie name that is not
/// one of the proxy's own.
pub(super) fn check_passable_cookie_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !crate::net::is_token(name.as_bytes()) {
        return Err(format!("`{name}` is not a cookie name"));
    }
    if is_own_cookie(name) {
        return Err(format!(
            "`{name}` is (or looks like) the proxy's own sign-in cookie, which never reaches the downstream"
        ));
    }
    Ok(())
}
