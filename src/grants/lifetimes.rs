//! How long codes, tokens and grants live: the configured lifetimes, and
//! the two bounds a grant sets on every token issued on it (the provider's
//! last confirmation, and the absolute end without a provider refresh
//! token).

use std::time::Duration;

use super::Grants;
use crate::config::Settings;
use crate::store::{ttl_until, GrantRecord, UpstreamTokens};

/// How long each kind of token lives (`[tokens]`, `upstream`).
pub(crate) struct Lifetimes {
    /// Access tokens (`tokens.access_ttl`).
    pub(crate) access: Duration,
    /// Refresh tokens (`tokens.refresh_ttl`).
    pub(crate) refresh: Duration,
    /// Authorization codes (`tokens.code_ttl`).
    pub(crate) code: Duration,
    /// The absolute lifetime of a grant whose provider issued no refresh
    /// token (`tokens.max_grant_age`).
    pub(crate) max_grant_age: Duration,
    /// How long the provider's last confirmation of a person carries access
    /// (`upstream.revalidate_after`).
    pub(crate) revalidate_after: Duration,
}

impl Lifetimes {
    /// The lifetimes `[tokens]` and `upstream.revalidate_after` set (the
    /// latter defaults to the access token's lifetime).
    pub(crate) fn from_settings(settings: &Settings) -> Self {
        let tokens = &settings.config.tokens;
        Lifetimes {
            access: tokens.access_ttl.0,
            refresh: tokens.refresh_ttl.0,
            code: tokens.code_ttl.0,
            max_grant_age: tokens.max_grant_age.0,
            revalidate_after: settings
                .config
                .upstream
                .revalidate_after
                .unwrap_or(tokens.access_ttl)
                .0,
        }
    }
}

/// The bounds of the tokens issued on one grant (Unix seconds).
#[derive(Debug, Clone, Copy)]
pub(super) struct TokenLimits {
    /// No access token lives past this.
    pub(super) access_until: i64,
    /// No token, and not the grant itself, lives past this.
    pub(super) grant_end: Option<i64>,
}

impl TokenLimits {
    pub(super) fn access_expiry(&self, now: i64, ttl: Duration) -> i64 {
        (now + ttl.as_secs() as i64).min(self.access_until)
    }

    pub(super) fn refresh_expiry(&self, now: i64, ttl: Duration) -> i64 {
        let natural = now + ttl.as_secs() as i64;
        self.grant_end.map_or(natural, |end| natural.min(end))
    }

    /// A store TTL of `ttl` from now, cut at the grant's end.
    pub(super) fn ttl(&self, ttl: Duration) -> Duration {
        match self.grant_end {
            Some(end) => ttl.min(ttl_until(end)),
            None => ttl,
        }
    }
}

impl Grants {
    /// When a grant ends for good, whatever the client does: a provider
    /// that issued no refresh token cannot be asked again, so the sign-in
    /// lasts `max_grant_age` from the login. `None` while the provider can
    /// be asked (access then ends with `access_deadline` unless it says yes).
    pub(crate) fn grant_end(&self, grant: &GrantRecord, upstream: &UpstreamTokens) -> Option<i64> {
        upstream
            .refresh_token
            .is_none()
            .then(|| grant.created_at + self.max_grant_age.as_secs() as i64)
    }

    /// When access on a grant ends unless the provider confirms the person
    /// again: no token issued on it lives past this.
    pub(crate) fn access_deadline(&self, grant: &GrantRecord, upstream: &UpstreamTokens) -> i64 {
        self.grant_end(grant, upstream)
            .unwrap_or_else(|| grant.confirmed_at() + self.revalidate_after.as_secs() as i64)
    }

    /// Both bounds of the tokens issued on `grant` now.
    pub(super) fn token_limits(
        &self,
        grant: &GrantRecord,
        upstream: &UpstreamTokens,
    ) -> TokenLimits {
        TokenLimits {
            access_until: self.access_deadline(grant, upstream),
            grant_end: self.grant_end(grant, upstream),
        }
    }
}
