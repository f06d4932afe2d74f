//! Grants and the tokens issued on them.
//!
//! A grant holds who the user is (claims, upstream tokens) sealed with its
//! own random key. Each code, access token and refresh token carries that
//! key wrapped for itself, so opening a grant needs a live token and the
//! configured secret. Revoking a grant deletes it; every token on it then
//! fails, wherever it is presented.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast;

use crate::crypto::{self, Keys};
use crate::now_unix;
use crate::session::{Memo, Revocation, Session};
use crate::store::{
    decode, encode, ttl_until, CodeRecord, GrantRecord, GrantSecrets, Namespace,
    PendingAuthorization, Records, StoreError, TokenRecord, UpstreamTokens,
};

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("{0}")]
    Replay(&'static str),
    #[error("{0}")]
    Scope(&'static str),
    /// A concurrent request is refreshing the same grant: retry shortly.
    #[error("{0}")]
    Busy(&'static str),
    #[error("{0}")]
    Target(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("grant data could not be opened: {0}")]
    Sealed(#[from] crypto::OpenError),
}

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
pub fn scope_is_subset(requested: &str, granted: Option<&str>) -> bool {
    let granted: Vec<&str> = granted
        .unwrap_or_default()
        .split_ascii_whitespace()
        .collect();
    requested
        .split_ascii_whitespace()
        .all(|s| granted.contains(&s))
}

/// A refresh checked and opened, not yet applied.
pub struct PreparedRefresh {
    pub grant: GrantRecord,
    grant_bytes: Vec<u8>,
    grant_key: [u8; 32],
    presented_hash: String,
    /// The grant's identity and provider tokens as stored.
    pub secrets: GrantSecrets,
    /// When access ends unless the provider confirms the person again
    /// (Unix seconds); see `Grants::access_deadline`.
    pub access_deadline: i64,
    scope: Option<String>,
    resource: Option<String>,
}

/// Tokens handed to a client.
#[derive(Debug)]
pub struct IssuedTokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: i64,
    pub scope: Option<String>,
}

pub struct Lifetimes {
    pub access: Duration,
    pub refresh: Duration,
    pub code: Duration,
    /// The absolute lifetime of a grant whose provider issued no refresh
    /// token (`tokens.max_grant_age`).
    pub max_grant_age: Duration,
    /// How long the provider's last confirmation of a person carries access
    /// (`upstream.revalidate_after`).
    pub revalidate_after: Duration,
}

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

/// The bounds of the tokens issued on one grant (Unix seconds).
#[derive(Debug, Clone, Copy)]
struct TokenLimits {
    /// No access token lives past this.
    access_until: i64,
    /// No token, and not the grant itself, lives past this.
    grant_end: Option<i64>,
}

impl TokenLimits {
    fn access_expiry(&self, now: i64, ttl: Duration) -> i64 {
        (now + ttl.as_secs() as i64).min(self.access_until)
    }

    fn refresh_expiry(&self, now: i64, ttl: Duration) -> i64 {
        let natural = now + ttl.as_secs() as i64;
        self.grant_end.map_or(natural, |end| natural.min(end))
    }

    /// A store TTL of `ttl` from now, cut at the grant's end.
    fn ttl(&self, ttl: Duration) -> Duration {
        match self.grant_end {
            Some(end) => ttl.min(ttl_until(end)),
            None => ttl,
        }
    }
}

/// A code redemption's inputs, checked against the code.
pub struct CodeRedemption<'a> {
    pub code: &'a str,
    pub client_id: &'a str,
    pub redirect_uri: Option<&'a str>,
    pub code_verifier: &'a str,
    pub resource: Option<String>,
    pub issue_refresh: bool,
}

impl Grants {
    pub fn new(records: Records, keys: Keys, lifetimes: Lifetimes) -> Self {
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

    /// When a grant ends for good, whatever the client does: a provider
    /// that issued no refresh token cannot be asked again, so the sign-in
    /// lasts `max_grant_age` from the login. `None` while the provider can
    /// be asked (access then ends with `access_deadline` unless it says yes).
    pub fn grant_end(&self, grant: &GrantRecord, upstream: &UpstreamTokens) -> Option<i64> {
        upstream
            .refresh_token
            .is_none()
            .then(|| grant.created_at + self.max_grant_age.as_secs() as i64)
    }

    /// When access on a grant ends unless the provider confirms the person
    /// again: no token issued on it lives past this.
    pub fn access_deadline(&self, grant: &GrantRecord, upstream: &UpstreamTokens) -> i64 {
        self.grant_end(grant, upstream)
            .unwrap_or_else(|| grant.confirmed_at() + self.revalidate_after.as_secs() as i64)
    }

    /// Revocations as they happen, for caches to evict.
    pub fn subscribe_revocations(&self) -> broadcast::Receiver<Revocation> {
        self.revoked.subscribe()
    }

    /// Creates the grant for a completed login and the code that redeems it.
    pub async fn create_with_code(
        &self,
        pending: &PendingAuthorization,
        secrets: &GrantSecrets,
    ) -> Result<String, GrantError> {
        let sub = secrets
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or(GrantError::Invalid("the provider's id_token has no sub"))?
            .to_string();
        let email = secrets
            .claims
            .get("email")
            .and_then(Value::as_str)
            .map(str::to_string);
        let grant_id = crypto::random_id();
        let grant_key = crypto::random_key();
        let grant = GrantRecord {
            grant_id: grant_id.clone(),
            client_id: pending.client_id.clone(),
            sub,
            email,
            scope: pending.scope.clone(),
            resource: pending.resource.clone(),
            created_at: now_unix(),
            refresh_current: None,
            refresh_previous: None,
            rotated_at: 0,
            validated_at: now_unix(),
            sealed: crypto::seal(&grant_key, grant_id.as_bytes(), &encode(secrets)?),
        };
        // Until the code is redeemed the grant lives as long as the code.
        self.records
            .put(Namespace::Grant, &grant_id, &grant, self.code_ttl)
            .await?;
        let code = crypto::random_token();
        let record = CodeRecord {
            grant_id,
            client_id: pending.client_id.clone(),
            redirect_uri: pending.redirect_uri.clone(),
            code_challenge: pending.code_challenge.clone(),
            resource: pending.resource.clone(),
            scope: pending.scope.clone(),
            wrapped_key: self.keys.wrap_grant_key(&code, &grant_key),
            used: false,
            expires_at: now_unix() + self.code_ttl.as_secs() as i64,
        };
        self.records
            .put(
                Namespace::Code,
                &crypto::token_hash(&code),
                &record,
                self.code_ttl,
            )
            .await?;
        Ok(code)
    }

    /// Redeems a code once. A second redemption by the code's client with
    /// the right verifier, or a race lost to another redemption, revokes
    /// the grant (invariant 4); any other replay is only refused.
    pub async fn redeem_code(&self, r: CodeRedemption<'_>) -> Result<IssuedTokens, GrantError> {
        let code_hash = crypto::token_hash(r.code);
        let (record, bytes) = self
            .records
            .get_versioned::<CodeRecord>(Namespace::Code, &code_hash)
            .await?
            .ok_or(GrantError::Invalid("invalid or expired authorization code"))?;
        // A replay revokes the grant only when it comes from the client the
        // code was issued to, with the right verifier: someone who merely
        // saw the code must not be able to end the victim's sign-in.
        if record.client_id != r.client_id {
            return Err(GrantError::Invalid(
                "authorization code was issued to another client",
            ));
        }
        if r.redirect_uri.is_some_and(|uri| uri != record.redirect_uri) {
            return Err(GrantError::Invalid(
                "redirect_uri differs from the one in the authorization request",
            ));
        }
        if !crypto::pkce_s256_matches(r.code_verifier, &record.code_challenge) {
            return Err(GrantError::Invalid(
                "code_verifier does not match the code_challenge",
            ));
        }
        if record.used {
            self.revoke_grant(&record.grant_id).await?;
            return Err(GrantError::Replay(
                "authorization code was already used; the tokens issued with it are revoked",
            ));
        }
        let resource = match (&record.resource, r.resource) {
            (Some(bound), Some(asked)) if *bound != asked => {
                return Err(GrantError::Target(
                    "resource differs from the one in the authorization request",
                ))
            }
            (Some(bound), _) => Some(bound.clone()),
            (None, asked) => asked,
        };
        // Read before the code is spent, so that the winner of a race is
        // not refused by the losers' revocation (its tokens are dead then
        // anyway, exactly as if the replay had come a moment later).
        let grant_key = self.keys.unwrap_grant_key(r.code, &record.wrapped_key)?;
        let (grant, grant_bytes) = self
            .records
            .get_versioned::<GrantRecord>(Namespace::Grant, &record.grant_id)
            .await?
            .ok_or(GrantError::Invalid(
                "the authorization was revoked; sign in again",
            ))?;
        let secrets: GrantSecrets = decode(&crypto::open(
            &grant_key,
            grant.grant_id.as_bytes(),
            &grant.sealed,
        )?)?;
        let mut used = record.clone();
        used.used = true;
        let ttl = ttl_until(record.expires_at);
        if !self
            .records
            .swap(Namespace::Code, &code_hash, &bytes, &used, ttl)
            .await?
        {
            // Someone redeemed it between our read and our write.
            self.revoke_grant(&record.grant_id).await?;
            return Err(GrantError::Replay(
                "authorization code was already used; the tokens issued with it are revoked",
            ));
        }
        let limits = TokenLimits {
            access_until: self.access_deadline(&grant, &secrets.upstream),
            grant_end: self.grant_end(&grant, &secrets.upstream),
        };
        let issued = self
            .issue(
                &record.grant_id,
                &record.client_id,
                &grant_key,
                resource.clone(),
                record.scope.clone(),
                r.issue_refresh,
                limits,
            )
            .await?;
        // Bind the refresh token and resource to the grant. If a replay
        // revoked the grant meanwhile, the tokens just issued are already
        // dead, exactly as if the replay had come a moment later.
        let grant_ttl = limits.ttl(if r.issue_refresh {
            self.refresh_ttl
        } else {
            self.access_ttl
        });
        let mut updated = grant.clone();
        updated.resource = resource;
        updated.refresh_current = issued.refresh_token.as_deref().map(crypto::token_hash);
        self.records
            .swap(
                Namespace::Grant,
                &grant.grant_id,
                &grant_bytes,
                &updated,
                grant_ttl,
            )
            .await?;
        Ok(issued)
    }

    /// Checks a refresh token and opens its grant, without changing
    /// anything yet: the caller may renew the provider's tokens in between.
    /// A rotated-out token revokes the grant here.
    pub async fn prepare_refresh(
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
        let (grant, grant_bytes) = self
            .records
            .get_versioned::<GrantRecord>(Namespace::Grant, &record.grant_id)
            .await?
            .ok_or(GrantError::Invalid(
                "the authorization was revoked; sign in again",
            ))?;
        let is_current = grant.refresh_current.as_deref() == Some(presented_hash.as_str());
        let is_previous = grant.refresh_previous.as_deref() == Some(presented_hash.as_str());
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
        if let Some(asked) = scope {
            if !scope_is_subset(asked, grant.scope.as_deref()) {
                return Err(GrantError::Scope("scope exceeds what was granted"));
            }
        }
        let resource = match (&grant.resource, resource) {
            (Some(bound), Some(asked)) if *bound != asked => {
                return Err(GrantError::Target("resource differs from the one granted"))
            }
            (Some(bound), _) => Some(bound.clone()),
            (None, asked) => asked,
        };
        let grant_key = self
            .keys
            .unwrap_grant_key(refresh_token, &record.wrapped_key)?;
        let secrets: GrantSecrets = decode(&crypto::open(
            &grant_key,
            grant.grant_id.as_bytes(),
            &grant.sealed,
        )?)?;
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

    /// Rotates the refresh token: new tokens, and the grant updated in one
    /// compare-and-swap (with renewed `secrets` when the provider's tokens
    /// were refreshed). The previous token stays usable until the newest is
    /// first used; any older one revokes the grant (see `prepare_refresh`).
    pub async fn complete_refresh(
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
        let limits = TokenLimits {
            access_until: self.access_deadline(&updated, upstream),
            grant_end: self.grant_end(&updated, upstream),
        };
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

    /// Both steps, for callers that never renew the provider's tokens.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client_id: &str,
        scope: Option<&str>,
        resource: Option<String>,
    ) -> Result<IssuedTokens, GrantError> {
        let prepared = self
            .prepare_refresh(refresh_token, client_id, scope, resource)
            .await?;
        self.complete_refresh(prepared, None).await
    }

    /// Only one renewal of a grant's provider tokens at a time, across
    /// replicas; true when this caller holds the lock.
    pub async fn lock_renewal(&self, grant_id: &str) -> Result<bool, StoreError> {
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

    pub async fn unlock_renewal(&self, grant_id: &str) {
        let _ = self
            .records
            .delete(Namespace::Pending, &format!("renewal:{grant_id}"))
            .await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn issue(
        &self,
        grant_id: &str,
        client_id: &str,
        grant_key: &[u8; 32],
        resource: Option<String>,
        scope: Option<String>,
        with_refresh: bool,
        limits: TokenLimits,
    ) -> Result<IssuedTokens, GrantError> {
        let now = now_unix();
        let access_expires_at = limits.access_expiry(now, self.access_ttl);
        if access_expires_at <= now {
            return Err(GrantError::Invalid("the sign-in has ended; sign in again"));
        }
        let access_token = crypto::random_token();
        let access = TokenRecord {
            grant_id: grant_id.to_string(),
            client_id: client_id.to_string(),
            resource: resource.clone(),
            scope: scope.clone(),
            expires_at: access_expires_at,
            wrapped_key: self.keys.wrap_grant_key(&access_token, grant_key),
        };
        self.records
            .put(
                Namespace::AccessToken,
                &crypto::token_hash(&access_token),
                &access,
                ttl_until(access_expires_at),
            )
            .await?;
        let refresh_token = if with_refresh {
            let token = crypto::random_token();
            let refresh = TokenRecord {
                expires_at: limits.refresh_expiry(now, self.refresh_ttl),
                wrapped_key: self.keys.wrap_grant_key(&token, grant_key),
                ..access.clone()
            };
            self.records
                .put(
                    Namespace::RefreshToken,
                    &crypto::token_hash(&token),
                    &refresh,
                    ttl_until(refresh.expires_at),
                )
                .await?;
            Some(token)
        } else {
            None
        };
        Ok(IssuedTokens {
            access_token,
            refresh_token,
            expires_in: access_expires_at - now,
            scope,
        })
    }

    /// Removes tokens that were written but never handed out.
    async fn forget_issued(&self, issued: &IssuedTokens) {
        let _ = self
            .records
            .delete(
                Namespace::AccessToken,
                &crypto::token_hash(&issued.access_token),
            )
            .await;
        if let Some(refresh) = &issued.refresh_token {
            let _ = self
                .records
                .delete(Namespace::RefreshToken, &crypto::token_hash(refresh))
                .await;
        }
    }

    /// Revokes a grant: every token issued on it stops working.
    pub async fn revoke_grant(&self, grant_id: &str) -> Result<(), StoreError> {
        self.records.delete(Namespace::Grant, grant_id).await?;
        let _ = self.revoked.send(Revocation::Grant(grant_id.to_string()));
        tracing::info!(grant_id, "grant revoked");
        Ok(())
    }

    /// RFC 7009: a refresh token revokes its grant; an access token only
    /// itself. Tokens of other clients are left alone.
    pub async fn revoke_token(&self, token: &str, client_id: &str) -> Result<(), StoreError> {
        let hash = crypto::token_hash(token);
        if let Some(record) = self
            .records
            .get::<TokenRecord>(Namespace::RefreshToken, &hash)
            .await?
        {
            if record.client_id == client_id {
                self.revoke_grant(&record.grant_id).await?;
            }
            return Ok(());
        }
        if let Some(record) = self
            .records
            .get::<TokenRecord>(Namespace::AccessToken, &hash)
            .await?
        {
            if record.client_id == client_id {
                self.records.delete(Namespace::AccessToken, &hash).await?;
                let _ = self.revoked.send(Revocation::AccessToken(hash));
            }
        }
        Ok(())
    }

    /// Whether an access token and its grant are still stored: the cheap
    /// check an open event stream repeats (no decryption).
    pub async fn is_live(&self, token_hash: &str, grant_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .records
            .store
            .get(Namespace::AccessToken, token_hash)
            .await?
            .is_some()
            && self
                .records
                .store
                .get(Namespace::Grant, grant_id)
                .await?
                .is_some())
    }

    /// Validates an access token presented as a bearer: issued here, live,
    /// on a live grant. Audience and policy are the caller's checks.
    pub async fn validate_access_token(&self, token: &str) -> Result<Session, GrantError> {
        let token_hash = crypto::token_hash(token);
        let record: TokenRecord = self
            .records
            .get(Namespace::AccessToken, &token_hash)
            .await?
            .ok_or(GrantError::Invalid("unknown or expired access token"))?;
        if record.expires_at <= now_unix() {
            return Err(GrantError::Invalid("access token expired"));
        }
        let grant: GrantRecord = self
            .records
            .get(Namespace::Grant, &record.grant_id)
            .await?
            .ok_or(GrantError::Invalid("the authorization was revoked"))?;
        let grant_key = self.keys.unwrap_grant_key(token, &record.wrapped_key)?;
        let secrets: GrantSecrets = decode(&crypto::open(
            &grant_key,
            grant.grant_id.as_bytes(),
            &grant.sealed,
        )?)?;
        // Tokens issued before the grant's deadline existed (older
        // releases, or a shorter bound configured since) end with it too.
        let expires_at = record
            .expires_at
            .min(self.access_deadline(&grant, &secrets.upstream));
        if expires_at <= now_unix() {
            return Err(GrantError::Invalid(
                "the sign-in must be confirmed by the identity provider again",
            ));
        }
        let client_name = self
            .records
            .get::<crate::store::ClientRecord>(Namespace::Client, &record.client_id)
            .await?
            .and_then(|c| c.client_name);
        Ok(Session {
            client_name,
            memo: Memo::default(),
            grant_id: grant.grant_id,
            token_hash,
            client_id: record.client_id,
            sub: grant.sub,
            email: grant.email,
            claims: secrets.claims,
            upstream: secrets.upstream,
            resource: record.resource,
            scope: record.scope,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_subsets() {
        assert!(scope_is_subset("a", Some("a b")));
        assert!(scope_is_subset("", None));
        assert!(!scope_is_subset("c", Some("a b")));
        assert!(!scope_is_subset("a", None));
    }
}
