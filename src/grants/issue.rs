//! Issuing: the grant and code at the end of a login, the code's one
//! redemption, and the access and refresh tokens written for a grant.

use serde_json::Value;

use super::lifetimes::TokenLimits;
use super::{bound_resource, GrantError, Grants};
use crate::crypto;
use crate::now_unix;
use crate::store::{
    encode, ttl_until, CodeRecord, GrantRecord, GrantSecrets, Namespace, PendingAuthorization,
    TokenRecord,
};

/// Tokens handed to a client.
#[derive(Debug)]
pub(crate) struct IssuedTokens {
    /// The bearer token for the MCP routes.
    pub(crate) access_token: String,
    /// The next refresh token, when the client may refresh.
    pub(crate) refresh_token: Option<String>,
    /// Seconds until the access token expires.
    pub(crate) expires_in: i64,
    /// The scope the tokens carry.
    pub(crate) scope: Option<String>,
}

/// A code redemption's inputs, checked against the code.
pub(crate) struct CodeRedemption<'a> {
    /// The authorization code presented.
    pub(crate) code: &'a str,
    /// The authenticated client presenting it.
    pub(crate) client_id: &'a str,
    /// The `redirect_uri` parameter, when sent.
    pub(crate) redirect_uri: Option<&'a str>,
    /// The PKCE verifier.
    pub(crate) code_verifier: &'a str,
    /// The RFC 8707 resource asked for, validated.
    pub(crate) resource: Option<String>,
    /// Whether to issue a refresh token (the client registered the grant).
    pub(crate) issue_refresh: bool,
}

impl Grants {
    /// Creates the grant for a completed login and the code that redeems it.
    pub(crate) async fn create_with_code(
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
    pub(crate) async fn redeem_code(
        &self,
        r: CodeRedemption<'_>,
    ) -> Result<IssuedTokens, GrantError> {
        let code_hash = crypto::token_hash(r.code);
        let (record, bytes) = self
            .records
            .get_versioned::<CodeRecord>(Namespace::Code, &code_hash)
            .await?
            .ok_or(GrantError::Invalid("invalid or expired authorization code"))?;
        // A replay revokes the grant only when it comes from the client the
        // code was issued to, with the right verifier: someone who merely
        // saw the code must not be able to end the victim's sign-in.
        check_redemption(&record, &r)?;
        if record.used {
            self.revoke_grant(&record.grant_id).await?;
            return Err(GrantError::Replay(CODE_REPLAYED));
        }
        let resource = bound_resource(
            &record.resource,
            r.resource,
            "resource differs from the one in the authorization request",
        )?;
        // Read before the code is spent, so that the winner of a race is
        // not refused by the losers' revocation (its tokens are dead then
        // anyway, exactly as if the replay had come a moment later).
        let grant_key = self.keys.unwrap_grant_key(r.code, &record.wrapped_key)?;
        let (grant, grant_bytes) = self.live_grant(&record.grant_id).await?;
        let secrets = Self::open_secrets(&grant_key, &grant)?;
        self.spend_code(&code_hash, &record, &bytes).await?;
        let limits = self.token_limits(&grant, &secrets.upstream);
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

    /// Marks the code used, unless another redemption did since it was
    /// read: that race's loser revokes the grant, as a replay would.
    async fn spend_code(
        &self,
        code_hash: &str,
        record: &CodeRecord,
        read: &[u8],
    ) -> Result<(), GrantError> {
        let mut used = record.clone();
        used.used = true;
        let ttl = ttl_until(record.expires_at);
        if !self
            .records
            .swap(Namespace::Code, code_hash, read, &used, ttl)
            .await?
        {
            // Someone redeemed it between our read and our write.
            self.revoke_grant(&record.grant_id).await?;
            return Err(GrantError::Replay(CODE_REPLAYED));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn issue(
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
    pub(super) async fn forget_issued(&self, issued: &IssuedTokens) {
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
}

const CODE_REPLAYED: &str =
    "authorization code was already used; the tokens issued with it are revoked";

/// The code's own checks: the client it was issued to, the redirect URI of
/// its authorization request, and the PKCE verifier.
fn check_redemption(record: &CodeRecord, r: &CodeRedemption<'_>) -> Result<(), GrantError> {
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
    Ok(())
}
