//! mcp-oauth-proxy: an OAuth 2.1 authorization server that logs people in
//! through an OpenID Connect provider, and an identity-aware proxy in front of
//! an MCP server.
#![forbid(unsafe_code)]

pub mod auth;
pub mod checkpoint;
pub mod cli;
pub mod client_address;
pub mod config;
pub mod crypto;
pub mod error;
pub mod event_stream;
pub mod grants;
pub mod metrics;
pub mod net;
pub mod oauth;
pub mod policy;
pub mod proxy;
pub mod rate_limit;
pub mod server;
pub mod session;
pub mod store;
pub mod upstream;

/// Seconds since the Unix epoch, the time unit of every stored record.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
