//! `[policy]`: the operator's Rhai script and the bounds on what it may set.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::lenient::{lenient_bool, lenient_number};
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
    /// Where each decision is recorded, one JSON line per decision: a
    /// file path, or `log` for the log stream (target `policy_decision`).
    /// Off when unset.
    #[serde(default)]
    pub decision_log: Option<String>,
    /// The decision log file's size at which it is rotated (`path.1`, …).
    #[serde(
        default = "default_decision_log_max_bytes",
        deserialize_with = "lenient_number"
    )]
    pub decision_log_max_bytes: u64,
    /// How many rotated decision log files are kept.
    #[serde(
        default = "default_decision_log_keep",
        deserialize_with = "lenient_number"
    )]
    pub decision_log_keep: u32,
    /// The share of decisions recorded, in percent (1–100).
    #[serde(
        default = "default_decision_log_sample_percent",
        deserialize_with = "lenient_number"
    )]
    pub decision_log_sample_percent: u32,
    /// Record every claim (minus the redacted ones), not only the claims
    /// the policy (or its shadow) names.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub decision_log_all_claims: bool,
    /// Claims never recorded (their value is written `[redacted]`).
    #[serde(default = "default_redact_claims")]
    pub decision_log_redact_claims: Vec<String>,
    /// Request headers never recorded (their value is written
    /// `[redacted]`); credentials, cookies and forwarding headers are
    /// never seen by the policy and never recorded.
    #[serde(default = "default_redact_headers")]
    pub decision_log_redact_headers: Vec<String>,
    /// A candidate policy evaluated beside this one on live traffic,
    /// never enforced; disagreements are counted and logged.
    #[serde(default)]
    pub shadow_path: Option<PathBuf>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            path: None,
            identity_headers: Vec::new(),
            watch_interval: default_policy_watch_interval(),
            max_header_bytes: default_policy_max_header_bytes(),
            decision_log: None,
            decision_log_max_bytes: default_decision_log_max_bytes(),
            decision_log_keep: default_decision_log_keep(),
            decision_log_sample_percent: default_decision_log_sample_percent(),
            decision_log_all_claims: false,
            decision_log_redact_claims: default_redact_claims(),
            decision_log_redact_headers: default_redact_headers(),
            shadow_path: None,
        }
    }
}

fn default_policy_watch_interval() -> DurationStr {
    DurationStr::from_secs(1)
}
fn default_policy_max_header_bytes() -> usize {
    DEFAULT_MAX_HEADER_BYTES
}
fn default_decision_log_max_bytes() -> u64 {
    100 * 1024 * 1024
}
fn default_decision_log_keep() -> u32 {
    3
}
fn default_decision_log_sample_percent() -> u32 {
    100
}
/// Claims that carry or derive from tokens and session secrets.
fn default_redact_claims() -> Vec<String> {
    [
        "access_token",
        "id_token",
        "refresh_token",
        "at_hash",
        "c_hash",
        "nonce",
        "sid",
    ]
    .map(String::from)
    .to_vec()
}
/// Headers that commonly carry credentials a client chose to send.
fn default_redact_headers() -> Vec<String> {
    [
        "proxy-authorization",
        "x-api-key",
        "x-auth-token",
        "mcp-session-id",
    ]
    .map(String::from)
    .to_vec()
}

impl PolicyConfig {
    /// The decision log's and the shadow policy's keys; `key` names a key
    /// as the route's errors do (`policy.shadow_path`,
    /// `routes[x].policy.shadow_path`).
    pub(crate) fn check_observers(
        &self,
        key: impl Fn(&str) -> String,
    ) -> Result<(), super::ConfigError> {
        use super::ConfigError;
        if let Some(target) = &self.decision_log {
            if target.trim().is_empty() {
                return Err(ConfigError::invalid(
                    key("policy.decision_log"),
                    "must be a file path or `log`",
                ));
            }
            if target != "log" {
                let path = std::path::Path::new(target);
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
                if parent.is_some_and(|p| !p.is_dir()) || path.is_dir() {
                    return Err(ConfigError::invalid(
                        key("policy.decision_log"),
                        format!("`{target}` is not a file in an existing directory"),
                    ));
                }
            }
        }
        if !(1..=100).contains(&self.decision_log_sample_percent) {
            return Err(ConfigError::invalid(
                key("policy.decision_log_sample_percent"),
                "must be between 1 and 100",
            ));
        }
        if self.decision_log_max_bytes < 4096 {
            return Err(ConfigError::invalid(
                key("policy.decision_log_max_bytes"),
                "must be at least 4096",
            ));
        }
        for name in &self.decision_log_redact_headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::invalid(
                    key("policy.decision_log_redact_headers"),
                    format!("`{name}` is not a header name"),
                ));
            }
        }
        if let Some(path) = &self.shadow_path {
            readable_file(path).map_err(|e| {
                ConfigError::invalid(
                    key("policy.shadow_path"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
        }
        Ok(())
    }
}

/// A policy file that can be opened and is a file (`policy.path`,
/// `policy.shadow_path`).
pub(crate) fn readable_file(path: &std::path::Path) -> std::io::Result<()> {
    let metadata = std::fs::File::open(path)?.metadata()?;
    if metadata.is_file() {
        Ok(())
    } else {
        Err(std::io::Error::other("not a file"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(change: impl FnOnce(&mut PolicyConfig)) -> String {
        let mut config = PolicyConfig::default();
        change(&mut config);
        config
            .check_observers(|k| format!("routes[x].{k}"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn observer_keys_are_checked_by_name() {
        assert!(PolicyConfig::default()
            .check_observers(|k: &str| k.to_string())
            .is_ok());
        for (err, key) in [
            (
                error(|c| c.decision_log = Some("/no/such/dir/d.jsonl".into())),
                "policy.decision_log",
            ),
            (
                error(|c| c.decision_log = Some(" ".into())),
                "policy.decision_log",
            ),
            (
                error(|c| c.decision_log_sample_percent = 0),
                "policy.decision_log_sample_percent",
            ),
            (
                error(|c| c.decision_log_max_bytes = 10),
                "policy.decision_log_max_bytes",
            ),
            (
                error(|c| c.decision_log_redact_headers = vec!["bad header".into()]),
                "policy.decision_log_redact_headers",
            ),
            (
                error(|c| c.shadow_path = Some("/no/such/shadow.rhai".into())),
                "policy.shadow_path",
            ),
        ] {
            assert!(err.starts_with(&format!("routes[x].{key}:")), "{err}");
        }
        let log = PolicyConfig {
            decision_log: Some("log".into()),
            ..PolicyConfig::default()
        };
        assert!(log.check_observers(|k: &str| k.to_string()).is_ok());
    }
}
