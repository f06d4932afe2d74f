//! How long an open event stream may live: until its session ends, which
//! the token cache knows first (revocations heard, expiry) and the store
//! knows for sure (revocations this process did not hear).

use std::sync::Arc;

use super::token_cache::{seconds_left, TokenCache};
use crate::session::{Revocation, Session, SessionEnd, SessionWatch};

impl TokenCache {
    /// Watches sessions for open event streams (see `until_session_ends`).
    pub fn session_watch(self: &Arc<Self>) -> SessionWatch {
        let cache = self.clone();
        SessionWatch::new(move |session| Box::pin(cache.clone().until_session_ends(session)))
    }

    /// Resolves when a session ends: at its expiry, at once when a
    /// revocation of its token or grant is heard, and otherwise within
    /// `auth.stream_recheck_interval` of a revocation this process did not
    /// hear (another process on the same SQLite file, e.g. the CLI).
    pub async fn until_session_ends(self: Arc<Self>, session: Arc<Session>) -> SessionEnd {
        let mut heard = self.heard.subscribe();
        let expiry = tokio::time::sleep(seconds_left(&session));
        tokio::pin!(expiry);
        let mut recheck = tokio::time::interval_at(
            tokio::time::Instant::now() + self.stream_recheck,
            self.stream_recheck,
        );
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hearing = true;
        // Checked once here too: a revocation may have landed between
        // authentication and this subscription.
        let mut check_store = true;
        loop {
            if check_store && !self.still_live(&session).await {
                return SessionEnd::Revoked;
            }
            check_store = false;
            tokio::select! {
                _ = &mut expiry => return SessionEnd::Expired,
                event = heard.recv(), if hearing => match event {
                    Ok(Some(Revocation::Grant(id))) if id == session.grant_id => {
                        return SessionEnd::Revoked
                    }
                    Ok(Some(Revocation::AccessToken(hash))) if hash == session.token_hash => {
                        return SessionEnd::Revoked
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        check_store = true
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => hearing = false,
                },
                _ = recheck.tick() => check_store = true,
            }
        }
    }

    /// Whether the store still holds the session's token and grant; a store
    /// that cannot answer leaves the stream to its expiry.
    async fn still_live(&self, session: &Session) -> bool {
        match self
            .grants
            .is_live(&session.token_hash, &session.grant_id)
            .await
        {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(error = %e, "store unreachable; an open stream keeps its token until expiry");
                true
            }
        }
    }
}
