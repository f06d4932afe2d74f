//! `[[routes]]`: several MCP servers behind one proxy, each at its own path
//! with its own downstream, policy, identity headers and origins; and the
//! optional layers (`layers`) each route can switch off.
//!
//! A configuration with only `[downstream]` has one route, named
//! `default`, at `/mcp` and `/sse`, built from `[downstream]`, `[policy]`,
//! `server.allowed_origins` and `[layers]`. `[[routes]]` add routes beside
//! it (or replace it when `downstream.url` is not set).

use serde::{Deserialize, Serialize};
use url::Url;

use super::lenient::lenient_bool;
use super::{DownstreamConfig, PolicyConfig};

/// The name of the route `[downstream]` describes.
pub const DEFAULT_ROUTE: &str = "default";
/// Where the default route serves Streamable HTTP.
pub(crate) const DEFAULT_PATH: &str = "/mcp";
/// Where the default route serves the legacy HTTP+SSE stream.
pub(crate) const DEFAULT_SSE_PATH: &str = "/sse";
/// The longest route name: it is a metric label and a log field.
const MAX_NAME_LEN: usize = 32;

/// One `[[routes]]` entry as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteConfig {
    /// Names the route in metrics (`route` label), logs, the audit and
    /// the policy (`request.route`).
    pub(crate) name: String,
    /// The Streamable HTTP endpoint, e.g. `/github/mcp`.
    pub(crate) path: String,
    /// The legacy HTTP+SSE stream, e.g. `/github/sse`; its message
    /// endpoint is `<sse_path>/message`. Unset: no legacy SSE here.
    #[serde(default)]
    pub(crate) sse_path: Option<String>,
    /// The MCP server behind this route: the keys of `[downstream]`, with
    /// the same defaults.
    #[serde(default)]
    pub(crate) downstream: DownstreamConfig,
    /// This route's policy: the keys of `[policy]`, with the same defaults
    /// (no `path`: the built-in default policy).
    #[serde(default)]
    pub(crate) policy: PolicyConfig,
    /// Browser origins allowed on this route, besides the proxy's own and
    /// `server.allowed_origins`.
    #[serde(default)]
    pub(crate) allowed_origins: Vec<String>,
    /// Which optional layers run on this route.
    #[serde(default)]
    pub(crate) layers: LayersConfig,
}

/// `[layers]` (the default route) and `routes.layers`: the optional parts
/// of a route's stack. Everything is on by default; authentication, the
/// policy's `authorize`, origin checks and session ownership always run.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LayersConfig {
    /// List answers (`tools/list`, …) lose what the policy would deny.
    #[serde(default = "on", deserialize_with = "lenient_bool")]
    pub filter_lists: bool,
    /// The `[limits]` MCP rate limits (per address, user and client).
    #[serde(default = "on", deserialize_with = "lenient_bool")]
    pub rate_limits: bool,
    /// One audit event per MCP request (when `log.audit` is on).
    #[serde(default = "on", deserialize_with = "lenient_bool")]
    pub audit: bool,
}

fn on() -> bool {
    true
}

impl Default for LayersConfig {
    fn default() -> Self {
        LayersConfig {
            filter_lists: true,
            rate_limits: true,
            audit: true,
        }
    }
}

/// A route, checked, in the form the server uses.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// The route's name.
    pub name: String,
    /// The Streamable HTTP endpoint.
    pub path: String,
    /// The legacy SSE stream, if served.
    pub sse_path: Option<String>,
    /// The downstream's settings as written.
    pub(crate) downstream: DownstreamConfig,
    /// `downstream.url`, parsed.
    pub(crate) downstream_url: Url,
    /// `downstream.sse_url`, parsed, when set.
    pub(crate) downstream_sse_url: Option<Url>,
    /// The route's policy settings.
    pub(crate) policy: PolicyConfig,
    /// Origins allowed on this route besides the proxy's own: the
    /// server-wide ones and the route's, as "scheme://host[:port]".
    pub(crate) allowed_origins: Vec<String>,
    /// The optional layers.
    pub layers: LayersConfig,
    /// Where this route's keys are written, for messages: `downstream`
    /// for the default route, `routes[<name>]` for the others.
    pub(crate) key_prefix: String,
}

impl RouteSettings {
    /// The legacy message endpoint, when legacy SSE is served.
    pub fn message_path(&self) -> Option<String> {
        self.sse_path.as_ref().map(|p| format!("{p}/message"))
    }

    /// The downstream's Streamable HTTP endpoint.
    pub fn downstream_url(&self) -> &Url {
        &self.downstream_url
    }

    /// The policy file, if any (the built-in default policy otherwise).
    pub fn policy_path(&self) -> Option<&std::path::Path> {
        self.policy.path.as_deref()
    }

    /// The shadow policy file (`policy.shadow_path`), if any.
    pub fn shadow_policy_path(&self) -> Option<&std::path::Path> {
        self.policy.shadow_path.as_deref()
    }

    /// Header names the policy may set besides the ones it declares.
    pub fn identity_headers(&self) -> &[String] {
        &self.policy.identity_headers
    }

    /// Every path this route answers on.
    pub(crate) fn paths(&self) -> Vec<String> {
        let mut paths = vec![self.path.clone()];
        paths.extend(self.sse_path.clone());
        paths.extend(self.message_path());
        paths
    }

    /// The resource paths a token may be bound to for this route (RFC 8707).
    pub(crate) fn resource_paths(&self) -> Vec<String> {
        let mut paths = vec![self.path.clone()];
        paths.extend(self.sse_path.clone());
        paths
    }

    /// A key of this route, for messages (`routes[github].downstream.url`;
    /// the default route's keys are the top-level tables).
    pub fn key(&self, key: &str) -> String {
        route_key(&self.key_prefix, key)
    }
}

/// `prefix.key`, where the default route's keys are the top-level tables.
pub(crate) fn route_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A route name: short, lower case, safe as a label and a log field.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    let well_formed = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a route name: 1 to {MAX_NAME_LEN} of a-z, 0-9, `-` and `_`, starting with a letter"
        ))
    }
}

/// Paths the authorization server and the admin endpoints own; no route
/// may take them, or anything under them.
const RESERVED_PATHS: [&str; 9] = [
    "/.well-known",
    "/authorize",
    "/consent",
    "/callback",
    "/token",
    "/revoke",
    "/register",
    "/metrics",
    "/healthz",
];

/// A route path: absolute, plain (matched byte for byte, so nothing a
/// client could spell two ways), and not one the proxy itself serves.
pub(super) fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.len() < 2 {
        return Err(format!(
            "`{path}` must start with `/` and name an endpoint, e.g. /github/mcp"
        ));
    }
    if path.ends_with('/') {
        return Err(format!("`{path}` must not end with `/`"));
    }
    let plain = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
    if !plain {
        return Err(format!(
            "`{path}` may hold only letters, digits, `/`, `-`, `_`, `.` and `~` (no percent-encoding, query or spaces)"
        ));
    }
    if path
        .split('/')
        .skip(1)
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(format!(
            "`{path}` has an empty, `.` or `..` segment; write the path as clients will send it"
        ));
    }
    if let Some(reserved) = RESERVED_PATHS.iter().find(|r| segment_prefix(r, path)) {
        return Err(format!(
            "`{path}` is inside `{reserved}`, which the proxy itself serves"
        ));
    }
    Ok(())
}

/// Whether `prefix` is `path` or a whole-segment prefix of it.
pub(super) fn segment_prefix(prefix: &str, path: &str) -> bool {
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_are_bounded_label_values() {
        for good in ["github", "db-2", "wiki_internal", "a"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "GitHub", "2db", "a b", "é", &"x".repeat(33), "a.b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn route_paths_are_plain_and_not_the_proxys_own() {
        for good in ["/github/mcp", "/mcp", "/a.b/c~d_e-f"] {
            assert!(check_path(good).is_ok(), "{good}");
        }
        for bad in [
            "github/mcp",
            "/",
            "/github/",
            "/git%68ub/mcp",
            "/a//b",
            "/a/../b",
            "/a/./b",
            "/a b",
            "/a?b",
            "/token",
            "/.well-known/x",
            "/authorize/mcp",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn segment_prefixes_are_whole_segments() {
        assert!(segment_prefix("/a", "/a"));
        assert!(segment_prefix("/a", "/a/b"));
        assert!(!segment_prefix("/a", "/ab"));
        assert!(!segment_prefix("/a/b", "/a"));
    }
}
