//! Who gets in and for how long: `[auth]` (validated tokens on the request
//! path), `[tokens]` (what the proxy issues), `[registration]` (which
//! clients may ask) and `[consent]` (what a browser remembers).

use serde::{Deserialize, Serialize};

use super::lenient::{default_true, lenient_bool, lenient_number};
use super::DurationStr;

/// `[auth]`: how bearer tokens are checked on `/mcp` and `/sse`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthConfig {
    /// How many validated tokens are kept in memory.
    #[serde(
        default = "default_cache_capacity",
        deserialize_with = "lenient_number"
    )]
    pub(crate) cache_capacity: u64,
    /// The longest a validated token is trusted without asking the store
    /// again (revocations from other replicas arrive within this).
    #[serde(default = "default_cache_ttl")]
    pub(crate) cache_ttl: DurationStr,
    /// How long an unknown token is remembered as unknown.
    #[serde(default = "default_negative_cache_ttl")]
    pub(crate) negative_cache_ttl: DurationStr,
    /// How often an open event stream asks the store whether its token is
    /// still live: the bound on ending streams after a revocation this
    /// process did not hear of (the CLI on a SQLite store).
    #[serde(default = "default_stream_recheck_interval")]
    pub(crate) stream_recheck_interval: DurationStr,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            cache_capacity: default_cache_capacity(),
            cache_ttl: default_cache_ttl(),
            negative_cache_ttl: default_negative_cache_ttl(),
            stream_recheck_interval: default_stream_recheck_interval(),
        }
    }
}

/// `[tokens]`: the lifetimes of what the proxy issues.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokensConfig {
    /// How long an access token is valid.
    #[serde(default = "default_access_ttl")]
    pub(crate) access_ttl: DurationStr,
    /// How long a refresh token is valid.
    #[serde(default = "default_refresh_ttl")]
    pub(crate) refresh_ttl: DurationStr,
    /// How long an authorization code may wait to be exchanged.
    #[serde(default = "default_code_ttl")]
    pub(crate) code_ttl: DurationStr,
    /// The longest a sign-in lasts when the provider issued no refresh
    /// token (so it cannot be asked again): then the person logs in anew.
    #[serde(default = "default_max_grant_age")]
    pub(crate) max_grant_age: DurationStr,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            access_ttl: default_access_ttl(),
            refresh_ttl: default_refresh_ttl(),
            code_ttl: default_code_ttl(),
            max_grant_age: default_max_grant_age(),
        }
    }
}

/// `[registration]`: which clients may register, and with what.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegistrationConfig {
    /// A dynamically registered client that is not used for this long is
    /// forgotten.
    #[serde(default = "default_client_ttl")]
    pub(crate) client_ttl: DurationStr,
    /// Private-use URI schemes accepted in redirect URIs, e.g. "cursor".
    #[serde(default)]
    pub(crate) allowed_schemes: Vec<String>,
    /// The most redirect URIs one client may register.
    #[serde(
        default = "default_max_redirect_uris",
        deserialize_with = "lenient_number"
    )]
    pub(crate) max_redirect_uris: usize,
    /// Accept https URLs as client ids (Client ID Metadata Documents).
    #[serde(default = "default_true", deserialize_with = "lenient_bool")]
    pub(crate) client_metadata_documents: bool,
    /// Development only: also fetch http:// documents and private addresses.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub(crate) insecure_metadata_documents: bool,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            client_ttl: default_client_ttl(),
            allowed_schemes: Vec::new(),
            max_redirect_uris: default_max_redirect_uris(),
            client_metadata_documents: true,
            insecure_metadata_documents: false,
        }
    }
}

/// `[consent]`: the consent page's memory.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsentConfig {
    /// How long an approval of a client is remembered for a browser.
    #[serde(default = "default_consent_ttl")]
    pub(crate) remember: DurationStr,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig {
            remember: default_consent_ttl(),
        }
    }
}

fn default_cache_capacity() -> u64 {
    100_000
}
fn default_cache_ttl() -> DurationStr {
    DurationStr::from_secs(60)
}
fn default_negative_cache_ttl() -> DurationStr {
    DurationStr::from_secs(5)
}
fn default_stream_recheck_interval() -> DurationStr {
    DurationStr::from_secs(5)
}
fn default_access_ttl() -> DurationStr {
    DurationStr::from_secs(3600)
}
fn default_refresh_ttl() -> DurationStr {
    DurationStr::from_secs(30 * 86400)
}
fn default_code_ttl() -> DurationStr {
    DurationStr::from_secs(300)
}
fn default_max_grant_age() -> DurationStr {
    DurationStr::from_secs(24 * 3600)
}
fn default_client_ttl() -> DurationStr {
    DurationStr::from_secs(90 * 86400)
}
fn default_max_redirect_uris() -> usize {
    10
}
fn default_consent_ttl() -> DurationStr {
    DurationStr::from_secs(30 * 86400)
}
