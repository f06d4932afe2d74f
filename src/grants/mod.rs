//! Grants and the tokens issued on them.
//!
//! A grant holds who the user is (claims, upstream tokens) sealed with its
//! own random key. Each code, access token and refresh token carries that
//! key wrapped for itself, so opening a grant needs a live token and the
//! configured secret. Revoking a grant deletes it; every token on it then
//! fails, wherever it is presented.

use std::time::Duration;

use tokio::sync::broadcast;

use crate::crypto::{self, Keys};
use crate::session::Revocation;
use crate::store::{decode, GrantRecord, GrantSecrets, Namespace, Records, StoreError};

mod issue;
mod lifetimes;
mod refresh;
mod revoke;
mod validate;

pub(crate) use issue::{CodeRedemption, IssuedTokens};
pub(crate) use lifetimes::Lifetimes;
pub(crate) use refresh::PreparedRefresh;
pub use refresh::REFRESH_COOLDOWN;

/// Why a code or token was not honoured.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// Unknown, expired, of another client, or otherwise not valid here.
    #[error("{0}")]
    Invalid(&'static str),
    /// Used twice: the grant it belonged to is revoked.
    #[error("{0}")]
    Replay(&'static str),
    /// More scope than was granted.
    #[error("{0}")]
    Scope(&'static str),
    /// A concurrent request is refreshing the same grant: retry shortly.
    #[error("{0}")]
    Busy(&'static str),
    /// Another resource than the one the grant is bound to.
    #[error("{0}")]
    Target(&'static str),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sealed grant did not open (wrong key or damaged data).
    #[error("grant data could not be opened: {0}")]
    Sealed(#[from] crypto::OpenError),
}

/// Codes, tokens and their grants, in the store.
#[derive(Clone)]
pub struct Grants {
    records: Records,
    keys: Keys,
    access_ttl: Duration,
    refresh_ttl: Duration,
    code_ttl: Duration,
    max_grant_age: Duration,
    revalidate_after: Duration,
    revoked: broadcast::Sender<Revocation>,
}

impl Grants {
    /// Grants kept in `records`, sealed with `keys`.
    pub(crate) fn new(records: Records, keys: Keys, lifetimes: Lifetimes) -> Self {
        let (revoked, _) = broadcast::channel(1024);
        Grants {
            records,
            keys,
            access_ttl: lifetimes.access,
            refresh_ttl: lifetimes.refresh,
            code_ttl: lifetimes.code,
            max_grant_age: lifetimes.max_grant_age,
            revalidate_after: lifetimes.revalidate_after,
            revoked,
        }
    }

    /// Revocations as they happen, for caches to evict.
    pub(crate) fn subscribe_revocations(&self) -> broadcast::Receiver<Revocation> {
        self.revoked.subscribe()
    }

    /// A grant that is still there, with the bytes a compare-and-swap
    /// needs; gone means revoked.
    async fn live_grant(&self, grant_id: &str) -> Result<(GrantRecord, Vec<u8>), GrantError> {
        self.records
            .get_versioned::<GrantRecord>(Namespace::Grant, grant_id)
            .await?
            .ok_or(GrantError::Invalid(
                "the authorization was revoked; sign in again",
            ))
    }

    /// Opens a grant's sealed identity and provider tokens with its key.
    fn open_secrets(grant_key: &[u8; 32], grant: &GrantRecord) -> Result<GrantSecrets, GrantError> {
        Ok(decode(&crypto::open(
            grant_key,
            grant.grant_id.as_bytes(),
            &grant.sealed,
        )?)?)
    }
}

/// The resource tokens are bound to: the one bound before, unless another
/// is asked for (`mismatch` says so); else the one asked for, if any.
fn bound_resource(
    bound: &Option<String>,
    asked: Option<String>,
    mismatch: &'static str,
) -> Result<Option<String>, GrantError> {
    match (bound, asked) {
        (Some(bound), Some(asked)) if *bound != asked => Err(GrantError::Target(mismatch)),
        (Some(bound), _) => Ok(Some(bound.clone())),
        (None, asked) => Ok(asked),
    }
}

#[cfg(test)]
mod tests {
    use super::refresh::scope_is_subset;

    #[test]
    fn scope_subsets() {
        assert!(scope_is_subset("a", Some("a b")));
        assert!(scope_is_subset("", None));
        assert!(!scope_is_subset("c", Some("a b")));
        assert!(!scope_is_subset("a", None));
    }
}
