//! Ending access: revoking a grant or a token, and the cheap liveness check
//! open event streams repeat.

use super::Grants;
use crate::crypto;
use crate::session::Revocation;
use crate::store::{Namespace, StoreError, TokenRecord};

impl Grants {
    /// Revokes a grant: every token issued on it stops working.
    pub(crate) async fn revoke_grant(&self, grant_id: &str) -> Result<(), StoreError> {
        self.records.delete(Namespace::Grant, grant_id).await?;
        let _ = self.revoked.send(Revocation::Grant(grant_id.to_string()));
        tracing::info!(grant_id, "grant revoked");
        Ok(())
    }

    /// RFC 7009: a refresh token revokes its grant; an access token only
    /// itself. Tokens of other clients are left alone.
    pub(crate) async fn revoke_token(
        &self,
        token: &str,
        client_id: &str,
    ) -> Result<(), StoreError> {
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
    pub(crate) async fn is_live(
        &self,
        token_hash: &str,
        grant_id: &str,
    ) -> Result<bool, StoreError> {
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
}
