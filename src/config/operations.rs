//! Running the proxy: where its state lives (`[store]`) and what it reports
//! (`[log]`, `[metrics]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::lenient::{default_true, lenient_bool};
use super::{DurationStr, Secret};

/// `[store]`: SQLite for one replica, Redis for several.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite file, when `redis_url` is not set.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// Several replicas share this Redis (`redis://host:6379/0`); without
    /// it, the SQLite file at `store.path` is used.
    #[serde(default)]
    pub(crate) redis_url: Option<Secret>,
    /// Prefix of every Redis key and channel, so deployments can share one
    /// Redis.
    #[serde(default = "default_redis_prefix")]
    pub(crate) redis_prefix: String,
    /// How often expired records are removed.
    #[serde(default = "default_purge_interval")]
    pub(crate) purge_interval: DurationStr,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            redis_url: None,
            redis_prefix: default_redis_prefix(),
            purge_interval: default_purge_interval(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, readable text when it is.
    #[default]
    Auto,
    /// One JSON object per line, for log collectors.
    Json,
    /// Readable text, for people at a terminal.
    Pretty,
}

/// `[log]`: log format, level and the audit trail.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// How lines are written.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing env-filter directive; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// One audit event per MCP request (who, what, decision, status).
    #[serde(default = "default_true", deserialize_with = "lenient_bool")]
    pub(crate) audit: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: default_log_level(),
            audit: true,
        }
    }
}

/// `[metrics]`: which request metrics are recorded.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsConfig {
    /// Record request metrics (served on `server.admin_listen`).
    #[serde(default = "default_true", deserialize_with = "lenient_bool")]
    pub(crate) enabled: bool,
    /// MCP tool names that may appear as metric labels; others count as
    /// "other".
    #[serde(default)]
    pub(crate) tools: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            tools: Vec::new(),
        }
    }
}

fn default_store_path() -> PathBuf {
    PathBuf::from("mcp-oauth-proxy.db")
}
fn default_redis_prefix() -> String {
    "mcp-oauth-proxy:".into()
}
fn default_purge_interval() -> DurationStr {
    DurationStr::from_secs(600)
}
fn default_log_level() -> String {
    "info".into()
}
