//! Refresh token rotation: a refresh is checked and opened first, the
//! provider's tokens may be renewed in between (by the caller), then the
//! grant is rotated in one compare-and-swap. Only one renewal of a grant
//! runs at a time, across replicas.

use std::time::Duration;

use serde_json::Value;

use super::{bound_resource, GrantError, Grants, IssuedTokens};
use crate::crypto;
use crate::now_unix;
use crate::store::{encode, GrantRecord, GrantSecrets, Namespace, StoreError, TokenRecord};

/// How long after a rotation the rotated-out token is refused as a
/// duplicate rather than accepted as a lost-response retry.
pub const REFRESH_COOLDOWN: Duration = Duration::from_secs(2);

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether every scope in `requested` is in `granted` (space-separated).
pub(crate) fn scope_is_subset(requested: &str, granted: Option<&str>) -> bool {
    let granted: Vec<&str> = granted
        .unwrap_or_default()
        .split_ascii_whitespace()
        .collect();
    requested
        .split_ascii_whitespace()
        .all(|s| granted.contains(&s))
}

/// A refresh checked and opened, not yet applied.
pub(crate) struct PreparedRefresh {
    /// The grant as read (the rotation swaps against these bytes).
    pub(crate) grant: GrantRecord,
    grant_bytes: Vec<u8>,
    grant_key: [u8; 32],
    presented_hash: String,
    /// The grant's identity and provider tokens as stored.
    pub(crate) secrets: GrantSecrets,
    /// When access ends unless the provider confirms the person again
    /// (Unix seconds); see `Grants::access_deadline`.
    pub(crate) access_deadline: i64,
    scope: Option<String>,
    resource: Option<String>,
}

impl Grants {
    /// Checks a refresh token and opens its grant, without changing
    /// anything yet: the caller may renew the provider's tokens in between.
    /// A rotated-out token revokes the grant here.
    pub(crate) async fn prepare_refresh(
        &self,
        refresh_token: &str,
        client_id: &str,
        scope: Option<&str>,
        resource: Option<String>,
    ) -> Result<PreparedRefresh, GrantError> {
        let presented_hash = crypto::token_hash(refresh_token);
        let record: TokenRecord = self
            .records
            .get(Namespace::RefreshToken, &presented_hash)
            .await?
            .ok_or(GrantError::Invalid("invalid or expired refresh token"))?;
        if record.client_id != client_id {
            return Err(GrantError::Invalid(
                "refresh token was issued to another client",
            ));
        }
        let (grant, grant_bytes) = self.live_grant(&record.grant_id).await?;
        self.check_rotation(&grant, &presented_hash).await?;
        if let Some(asked) = scope {
            if !scope_is_subset(asked, grant.scope.as_deref()) {
                return Err(GrantError::Scope("scope exceeds what was granted"));
            }
        }
        let resource = bound_resource(
            &grant.resource,
            resource,
            "resource differs from the one granted",
        )?;
        let grant_key = self
            .keys
            .unwrap_grant_key(refresh_token, &record.wrapped_key)?;
        let secrets = Self::open_secrets(&grant_key, &grant)?;
        if self
            .grant_end(&grant, &secrets.upstream)
            .is_some_and(|end| end <= now_unix())
        {
            self.revoke_grant(&grant.grant_id).await?;
            return Err(GrantError::Invalid(
                "the sign-in reached its maximum age (tokens.max_grant_age); sign in again",
            ));
        }
        let access_deadline = self.access_deadline(&grant, &secrets.upstream);
        let scope = scope.map(str::to_string).or_else(|| grant.scope.clone());
        Ok(PreparedRefresh {
            grant,
            grant_bytes,
            grant_key,
            presented_hash,
            secrets,
            access_deadline,
            scope,
            resource,
        })
    }

    /// Only the newest refresh token of a grant, or the one before it (its
    /// successor's response may have been lost), is accepted; any older
    /// one was stolen or replayed, and revokes the grant.
    async fn check_rotation(
        &self,
        grant: &GrantRecord,
        presented_hash: &str,
    ) -> Result<(), GrantError> {
        let is_current = grant.refresh_current.as_deref() == Some(presented_hash);
        let is_previous = grant.refresh_previous.as_deref() == Some(presented_hash);
        if !is_current && !is_previous {
            self.revoke_grant(&grant.grant_id).await?;
            return Err(GrantError::Replay(
                "refresh token was already rotated; the authorization is revoked",
            ));
        }
        // The previous token recovers from a lost response, but a duplicate
        // of the request that just rotated it (parallel retries, two
        // replicas) is not a lost response: it waits out a short cool-down.
        if is_previous
            && !is_current
            && now_millis() - grant.rotated_at < REFRESH_COOLDOWN.as_millis() as i64
        {
            return Err(GrantError::Busy(
                "this refresh token was just used; retry in a moment",
            ));
        }
        Ok(())
    }

    /// Rotates the refresh token: new tokens, and the grant updated in one
    /// compare-and-swap (with renewed `secrets` when the provider's tokens
    /// were refreshed). The previous token stays usable until the newest is
    /// first used; any older one revokes the grant (see `prepare_refresh`).
    pub(crate) async fn complete_refresh(
        &self,
        prepared: PreparedRefresh,
        renewed: Option<GrantSecrets>,
    ) -> Result<IssuedTokens, GrantError> {
        let PreparedRefresh {
            grant,
            grant_bytes,
            grant_key,
            presented_hash,
            secrets,
            scope,
            resource,
            ..
        } = prepared;
        let mut updated = grant.clone();
        // A renewal is the provider saying yes again: access may run for
        // another `revalidate_after` from now.
        if renewed.is_some() {
            updated.validated_at = now_unix();
        }
        let upstream = &renewed.as_ref().unwrap_or(&secrets).upstream;
        let limits = self.token_limits(&updated, upstream);
        let issued = self
            .issue(
                &grant.grant_id,
                &grant.client_id,
                &grant_key,
                resource,
                scope,
                true,
                limits,
            )
            .await?;
        updated.refresh_current = issued.refresh_token.as_deref().map(crypto::token_hash);
        // Using the newest token retires the one before it; using the one
        // before (its successor's response was lost) keeps it as previous.
        updated.refresh_previous = Some(presented_hash);
        updated.rotated_at = now_millis();
        if let Some(secrets) = &renewed {
            updated.sealed = crypto::seal(&grant_key, grant.grant_id.as_bytes(), &encode(secrets)?);
            updated.email = secrets
                .claims
                .get("email")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        if !self
            .records
            .swap(
                Namespace::Grant,
                &grant.grant_id,
                &grant_bytes,
                &updated,
                limits.ttl(self.refresh_ttl),
            )
            .await?
        {
            // A concurrent refresh won; this one leaves the grant as it is.
            self.forget_issued(&issued).await;
            return Err(GrantError::Busy(
                "refresh token was used concurrently; retry in a moment",
            ));
        }
        Ok(issued)
    }

    /// Only one renewal of a grant's provider tokens at a time, across
    /// replicas; true when this caller holds the lock.
    pub(crate) async fn lock_renewal(&self, grant_id: &str) -> Result<bool, StoreError> {
        self.records
            .store
            .insert_new(
                Namespace::Pending,
                &format!("renewal:{grant_id}"),
                b"1",
                Duration::from_secs(30),
            )
            .await
    }

    /// Releases the renewal lock `lock_renewal` took.
    pub(crate) async fn unlock_renewal(&self, grant_id: &str) {
        let _ = self
            .records
            .delete(Namespace::Pending, &format!("renewal:{grant_id}"))
            .await;
    }
}
