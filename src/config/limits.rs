//! `[limits]`: request rates per address, user and client.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lenient::{default_true, lenient_bool, lenient_opt_bool, lenient_opt_number};
use super::{ConfigError, DurationStr};

/// Request rates, counted per replica. Each group may be tuned or switched
/// off on its own; a key left out keeps that group's default (see
/// `LimitGroup::default_rate`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Switches every limit off at once (benchmarks, a trusted network).
    #[serde(default = "default_true", deserialize_with = "lenient_bool")]
    pub(crate) enabled: bool,
    /// `/register`, per client address.
    #[serde(default)]
    pub(crate) register: RateLimitConfig,
    /// `/token` and `/revoke`, per client address.
    #[serde(default)]
    pub(crate) token: RateLimitConfig,
    /// `/authorize`, `/consent` and `/callback`, per client address.
    #[serde(default)]
    pub(crate) browser: RateLimitConfig,
    /// `/mcp`, `/sse` and its message endpoint, per client address, before
    /// the token is looked up.
    #[serde(default)]
    pub(crate) mcp_address: RateLimitConfig,
    /// `/mcp`, `/sse` and its message endpoint, per user (`sub`).
    #[serde(default)]
    pub(crate) mcp_user: RateLimitConfig,
    /// `/mcp`, `/sse` and its message endpoint, per OAuth client id.
    #[serde(default)]
    pub(crate) mcp_client: RateLimitConfig,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            enabled: true,
            register: RateLimitConfig::default(),
            token: RateLimitConfig::default(),
            browser: RateLimitConfig::default(),
            mcp_address: RateLimitConfig::default(),
            mcp_user: RateLimitConfig::default(),
            mcp_client: RateLimitConfig::default(),
        }
    }
}

/// `requests` per `period`, with bursts of up to `burst` at once.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitConfig {
    /// `false` switches this group off; unset, it follows `limits.enabled`.
    #[serde(default, deserialize_with = "lenient_opt_bool")]
    pub(crate) enabled: Option<bool>,
    /// Requests allowed per `period`.
    #[serde(default, deserialize_with = "lenient_opt_number")]
    pub(crate) requests: Option<u32>,
    /// The period `requests` are counted over.
    #[serde(default)]
    pub(crate) period: Option<DurationStr>,
    /// Requests allowed at once; unset, it follows a changed `requests`.
    #[serde(default, deserialize_with = "lenient_opt_number")]
    pub(crate) burst: Option<u32>,
}

/// The rate-limited route groups, each with its own `[limits.<name>]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitGroup {
    /// `/register`, per client address.
    Register,
    /// `/token` and `/revoke`, per client address.
    Token,
    /// `/authorize`, `/consent` and `/callback`, per client address.
    Browser,
    /// The MCP endpoints, per client address.
    McpAddress,
    /// The MCP endpoints, per user.
    McpUser,
    /// The MCP endpoints, per OAuth client.
    McpClient,
}

impl LimitGroup {
    /// Every group, in the order of `[limits]`.
    pub(crate) const ALL: [LimitGroup; 6] = [
        LimitGroup::Register,
        LimitGroup::Token,
        LimitGroup::Browser,
        LimitGroup::McpAddress,
        LimitGroup::McpUser,
        LimitGroup::McpClient,
    ];

    /// The table name under `[limits]`, also the metric label value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            LimitGroup::Register => "register",
            LimitGroup::Token => "token",
            LimitGroup::Browser => "browser",
            LimitGroup::McpAddress => "mcp_address",
            LimitGroup::McpUser => "mcp_user",
            LimitGroup::McpClient => "mcp_client",
        }
    }

    /// `(requests, period, burst)` when the table leaves a key out: enough
    /// for real clients (a person signing in, an agent calling tools in a
    /// loop, the MCP conformance suite), far below what a script can send.
    pub(crate) fn default_rate(self) -> (u32, Duration, u32) {
        let minute = Duration::from_secs(60);
        match self {
            LimitGroup::Register => (30, minute, 30),
            LimitGroup::Token => (120, minute, 60),
            LimitGroup::Browser => (120, minute, 60),
            LimitGroup::McpAddress => (6000, minute, 1000),
            LimitGroup::McpUser => (3000, minute, 500),
            LimitGroup::McpClient => (15000, minute, 2500),
        }
    }

    fn keys(self) -> (&'static str, &'static str, &'static str) {
        match self {
            LimitGroup::Register => (
                "limits.register.requests",
                "limits.register.period",
                "limits.register.burst",
            ),
            LimitGroup::Token => (
                "limits.token.requests",
                "limits.token.period",
                "limits.token.burst",
            ),
            LimitGroup::Browser => (
                "limits.browser.requests",
                "limits.browser.period",
                "limits.browser.burst",
            ),
            LimitGroup::McpAddress => (
                "limits.mcp_address.requests",
                "limits.mcp_address.period",
                "limits.mcp_address.burst",
            ),
            LimitGroup::McpUser => (
                "limits.mcp_user.requests",
                "limits.mcp_user.period",
                "limits.mcp_user.burst",
            ),
            LimitGroup::McpClient => (
                "limits.mcp_client.requests",
                "limits.mcp_client.period",
                "limits.mcp_client.burst",
            ),
        }
    }
}

/// A checked rate: `requests` per `period`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per `period`.
    pub requests: NonZeroU32,
    /// The period `requests` are counted over.
    pub period: Duration,
    /// Requests allowed at once.
    pub burst: NonZeroU32,
}

impl LimitsConfig {
    fn group(&self, group: LimitGroup) -> &RateLimitConfig {
        match group {
            LimitGroup::Register => &self.register,
            LimitGroup::Token => &self.token,
            LimitGroup::Browser => &self.browser,
            LimitGroup::McpAddress => &self.mcp_address,
            LimitGroup::McpUser => &self.mcp_user,
            LimitGroup::McpClient => &self.mcp_client,
        }
    }

    /// The rate of `group`, or `None` when it is switched off. Errors name
    /// the key at fault.
    pub(crate) fn rate(&self, group: LimitGroup) -> Result<Option<Rate>, ConfigError> {
        let table = self.group(group);
        if !self.enabled || table.enabled == Some(false) {
            return Ok(None);
        }
        let (requests_key, period_key, burst_key) = group.keys();
        let (default_requests, default_period, default_burst) = group.default_rate();
        let requests = table.requests.unwrap_or(default_requests);
        let requests = NonZeroU32::new(requests).ok_or_else(|| {
            ConfigError::invalid(
                requests_key,
                "must be at least 1 (to switch the limit off, set enabled = false)",
            )
        })?;
        let period = table.period.map(|p| p.0).unwrap_or(default_period);
        if period.is_zero() {
            return Err(ConfigError::invalid(period_key, "must be longer than zero"));
        }
        if period / requests.get() < Duration::from_nanos(1) {
            return Err(ConfigError::invalid(
                period_key,
                format!("is too short for {} requests", requests.get()),
            ));
        }
        // A burst left out follows a changed `requests`, so that changing
        // the rate alone is enough.
        let burst = match (table.burst, table.requests) {
            (Some(burst), _) => burst,
            (None, Some(_)) => requests.get(),
            (None, None) => default_burst,
        };
        let burst = NonZeroU32::new(burst).ok_or_else(|| {
            ConfigError::invalid(
                burst_key,
                "must be at least 1 (to switch the limit off, set enabled = false)",
            )
        })?;
        Ok(Some(Rate {
            requests,
            period,
            burst,
        }))
    }
}
