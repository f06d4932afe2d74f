//! `[policy]`: the operator's Rhai script and the bounds on what it may set.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::lenient::lenient_number;
use super::DurationStr;

/// Default for `policy.max_header_bytes`: one value, after encoding.
pub(crate) const DEFAULT_MAX_HEADER_BYTES: usize = 8 * 1024;

/// `[policy]`: which script runs, how it is reloaded, what it may set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The Rhai policy; without it, the built-in default policy (the
    /// original worker's identity headers) runs.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Extra header names a policy may set; client headers that normalise to
    /// one of them are removed before forwarding.
    #[serde(default)]
    pub identity_headers: Vec<String>,
    /// How often the policy file is checked for changes (SIGHUP reloads at
    /// once).
    #[serde(default = "default_policy_watch_interval")]
    pub(crate) watch_interval: DurationStr,
    /// The longest header value a policy may set, in bytes after encoding;
    /// a longer one denies the request.
    #[serde(
        default = "default_policy_max_header_bytes",
        deserialize_with = "lenient_number"
    )]
    pub(crate) max_header_bytes: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            path: None,
            identity_headers: Vec::new(),
            watch_interval: default_policy_watch_interval(),
            max_header_bytes: default_policy_max_header_bytes(),
        }
    }
}

fn default_policy_watch_interval() -> DurationStr {
    DurationStr::from_secs(1)
}
fn default_policy_max_header_bytes() -> usize {
    DEFAULT_MAX_HEADER_BYTES
}
