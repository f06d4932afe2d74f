//! mcp-oauth-proxy: an OAuth 2.1 authorization server that logs people in
//! through an OpenID Connect provider, and an identity-aware proxy in front of
//! an MCP server.
//!
//! The binary is `mcp-oauth-proxy serve`. To embed the proxy in a program
//! of your own and insert your own `tower` layers into each MCP route's
//! stack, see [`embed`].
#![forbid(unsafe_code)]
#![warn(unreachable_pub, missing_docs)]
// The request path writes a future that is boxed per request as
// `fn f(..) -> impl Future { async move { .. } }`, on purpose: an `async fn`
// holds its arguments twice in its future (rust-lang/rust#62958), and each
// copy is written into fresh memory for every request (`Checkpoint::run`).
// The lint would turn them back into `async fn`s.
#![allow(clippy::manual_async_fn)]

pub mod assertion;
pub(crate) mod auth;
pub mod bench_support;
pub(crate) mod body;
pub mod checkpoint;
pub mod cli;
pub(crate) mod client_address;
pub(crate) mod clock;
pub mod config;
pub mod crypto;
pub mod embed;
pub(crate) mod error;
pub(crate) mod event_stream;
pub mod grants;
pub(crate) mod header_name;
pub mod metrics;
pub(crate) mod net;
pub mod oauth;
pub mod policy;
pub(crate) mod proxy;
pub mod rate_limit;
pub mod server;
pub(crate) mod session;
pub mod store;
pub(crate) mod upstream;

/// Seconds since the Unix epoch, the time unit of every stored record.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
