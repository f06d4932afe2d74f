//! A bearer access token, checked and opened into the request's `Session`.

use super::{GrantError, Grants};
use crate::crypto;
use crate::now_unix;
use crate::session::{Memo, Session};
use crate::store::{GrantRecord, Namespace, TokenRecord};

impl Grants {
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
        let secrets = Self::open_secrets(&grant_key, &grant)?;
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
            confirmed: Default::default(),
            grant_id: grant.grant_id,
            token_hash,
            client_id: record.client_id.into(),
            sub: grant.sub.into(),
            email: grant.email,
            claims: secrets.claims,
            upstream: secrets.upstream,
            resource: record.resource,
            scope: record.scope,
            expires_at,
        })
    }
}
