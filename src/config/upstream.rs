//! `[upstream]`: the OpenID provider people sign in with.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::lenient::{lenient_bool, lenient_opt_string};
use super::{DurationStr, Secret};

/// Which kind of provider `[upstream]` describes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Provider {
    /// Any OpenID Connect provider, found through `upstream.issuer`.
    #[default]
    Oidc,
    /// Cloudflare Access; the issuer derives from `upstream.team_domain`.
    CloudflareAccess,
}

/// `[upstream]`: the provider, this proxy's client registration there, and
/// how often the provider is asked again.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamConfig {
    /// Which kind of provider; decides where the issuer comes from.
    #[serde(default)]
    pub(crate) provider: Provider,
    /// The provider's issuer URL (https, or http on a loopback address).
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub(crate) issuer: Option<String>,
    /// The Cloudflare Access team (`myteam` or
    /// `myteam.cloudflareaccess.com`), from which the issuer derives.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub(crate) team_domain: Option<String>,
    /// The client id the provider gave this proxy.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub(crate) client_id: Option<String>,
    /// The client secret the provider gave this proxy, if any.
    #[serde(default)]
    pub(crate) client_secret: Option<Secret>,
    /// A file holding `client_secret`, instead of the secret itself.
    #[serde(default)]
    pub(crate) client_secret_file: Option<PathBuf>,
    /// The scopes asked of the provider at sign-in.
    #[serde(default = "default_scopes")]
    pub(crate) scopes: Vec<String>,
    /// Merge the provider's userinfo claims into the id_token's.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub(crate) userinfo: bool,
    /// How long one request to the provider may take.
    #[serde(default = "default_upstream_timeout")]
    pub(crate) timeout: DurationStr,
    /// When a client refreshes and the provider's access token expires
    /// within this, the proxy renews it with the provider's refresh token.
    #[serde(default = "default_refresh_before")]
    pub(crate) refresh_before: DurationStr,
    /// A client refresh asks the provider again (claims re-read, login
    /// policy re-run) once the provider last confirmed the person this long
    /// ago; access tokens never outlive that confirmation by more than this.
    /// Unset: `tokens.access_ttl`. Only for providers that issue a refresh
    /// token; without one, `tokens.max_grant_age` bounds the sign-in.
    #[serde(default)]
    pub(crate) revalidate_after: Option<DurationStr>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            provider: Provider::default(),
            issuer: None,
            team_domain: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            scopes: default_scopes(),
            userinfo: false,
            timeout: default_upstream_timeout(),
            refresh_before: default_refresh_before(),
            revalidate_after: None,
        }
    }
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}
fn default_upstream_timeout() -> DurationStr {
    DurationStr::from_secs(10)
}
fn default_refresh_before() -> DurationStr {
    DurationStr::from_secs(60)
}
