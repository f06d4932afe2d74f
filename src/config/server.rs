//! `[server]`: the listeners and the bounds on what one client may hold.

use serde::{Deserialize, Serialize};

use super::lenient::{lenient_number, lenient_string};
use super::{ConfigError, DurationStr};

/// `[server]`: where the proxy listens and how clients reach it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The address of the OAuth and MCP listener.
    #[serde(default = "default_listen")]
    pub(crate) listen: String,
    /// The URL clients use to reach the proxy. The issuer and every advertised
    /// URL derive from it, never from request headers.
    #[serde(deserialize_with = "lenient_string")]
    pub(crate) public_url: String,
    /// Threads that accept and serve public connections, each with its own
    /// single-threaded runtime and its own listener on `listen`
    /// (`SO_REUSEPORT`), as nginx runs its workers; 0: one per CPU the
    /// process may use.
    #[serde(default, deserialize_with = "lenient_number")]
    pub(crate) workers: usize,
    /// The address of `/metrics`, `/healthz` and `/readyz`; unset, they are
    /// not served.
    #[serde(default)]
    pub(crate) admin_listen: Option<String>,
    /// How long open streams may keep running after a shutdown signal.
    #[serde(default = "default_shutdown_grace")]
    pub(crate) shutdown_grace: DurationStr,
    /// Browser origins, besides the proxy's own, allowed to call /mcp and /sse
    /// (e.g. "http://localhost:6274" for MCP Inspector).
    #[serde(default)]
    pub(crate) allowed_origins: Vec<String>,
    /// Load balancers in front of the proxy (CIDRs or addresses) whose
    /// `X-Forwarded-For` is kept and appended to; every other peer's is
    /// replaced by the peer's own address.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    // Bounds on what one client may hold (DESIGN.md invariant 9); each
    // listener applies them with its own connection budget.
    /// Time a client has to send a request's headers; on a new connection,
    /// to send its first request.
    #[serde(default = "default_header_timeout")]
    pub(crate) header_timeout: DurationStr,
    /// A connection with no request or stream in progress for this long is
    /// closed. Open streams (SSE) are not idle; they have
    /// `downstream.sse_idle_timeout`.
    #[serde(default = "default_idle_timeout")]
    pub(crate) idle_timeout: DurationStr,
    /// Time a client has to send a request's whole body, counted from the
    /// end of its headers.
    #[serde(default = "default_body_timeout")]
    pub(crate) body_timeout: DurationStr,
    /// Time a client has to take any part of an answer being written to it:
    /// one that reads nothing for this long (a slow reader, or a peer that
    /// vanished without closing) is disconnected.
    #[serde(default = "default_send_timeout")]
    pub(crate) send_timeout: DurationStr,
    /// Open connections per listener (all workers of the public listener
    /// together); beyond it new ones are refused.
    #[serde(
        default = "default_max_connections",
        deserialize_with = "lenient_number"
    )]
    pub(crate) max_connections: usize,
    /// The largest request head (HTTP/1.1) or header list (HTTP/2), in bytes.
    #[serde(
        default = "default_max_header_bytes",
        deserialize_with = "lenient_number"
    )]
    pub(crate) max_header_bytes: usize,
    /// The most header fields in one HTTP/1.1 request.
    #[serde(default = "default_max_headers", deserialize_with = "lenient_number")]
    pub(crate) max_headers: usize,
    /// The most concurrent requests (streams) on one HTTP/2 connection.
    #[serde(
        default = "default_max_concurrent_streams",
        deserialize_with = "lenient_number"
    )]
    pub(crate) max_concurrent_streams: u32,
}

/// The most `server.workers`: far beyond any machine's useful count, low
/// enough that a typo cannot start a thread flood.
const MAX_WORKERS: usize = 1024;

fn default_listen() -> String {
    "127.0.0.1:8787".into()
}
fn default_shutdown_grace() -> DurationStr {
    DurationStr::from_secs(30)
}
fn default_header_timeout() -> DurationStr {
    DurationStr::from_secs(10)
}
fn default_idle_timeout() -> DurationStr {
    DurationStr::from_secs(60)
}
fn default_body_timeout() -> DurationStr {
    DurationStr::from_secs(30)
}
fn default_send_timeout() -> DurationStr {
    DurationStr::from_secs(60)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_concurrent_streams() -> u32 {
    100
}

impl ServerConfig {
    /// How many workers serve the public listener: `server.workers`, or
    /// with 0 one per CPU available to the process (its cgroup or
    /// `taskset` included).
    pub fn workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Checks the connection bounds; errors name the key.
    pub(super) fn validate_limits(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("server.header_timeout", self.header_timeout),
            ("server.idle_timeout", self.idle_timeout),
            ("server.body_timeout", self.body_timeout),
            ("server.send_timeout", self.send_timeout),
        ] {
            if value.0.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than zero"));
            }
        }
        if self.workers > MAX_WORKERS {
            return Err(ConfigError::invalid(
                "server.workers",
                format!("must be between 0 (one per CPU) and {MAX_WORKERS}"),
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                "server.max_connections",
                "must be at least 1",
            ));
        }
        // hyper's read buffer cannot be smaller than 8 KiB.
        if !(8 * 1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(ConfigError::invalid(
                "server.max_header_bytes",
                "must be between 8192 and 1048576",
            ));
        }
        if !(1..=1000).contains(&self.max_headers) {
            return Err(ConfigError::invalid(
                "server.max_headers",
                "must be between 1 and 1000",
            ));
        }
        if self.max_concurrent_streams == 0 {
            return Err(ConfigError::invalid(
                "server.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
