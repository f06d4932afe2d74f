//! How long an open event stream may live: until its session ends, which
//! the token cache knows first (revocations heard, expiry) and the store
//! knows for sure (revocations this process did not hear).

use std::sync::Arc;

use tokio::time::Instant;

use super::token_cache::{time_left, TokenCache};
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
    ///
    /// The store is asked every interval counted from when it last
    /// confirmed the session (`Session::confirmed`, shared by the streams
    /// and requests of one token), not from the stream's start: a
    /// revocation unheard at time R is seen by R + interval at the latest,
    /// and a stream opened within an interval of that confirmation costs no
    /// store read (a blocking-pool round trip, a fifth of a new stream's
    /// CPU; tests/bench/README.md).
    pub async fn until_session_ends(self: Arc<Self>, session: Arc<Session>) -> SessionEnd {
        let mut heard = self.heard.subscribe();
        // A revocation heard before the subscription was recorded before it
        // was announced.
        if self.recently_revoked(&session) {
            return SessionEnd::Revoked;
        }
        let now = Instant::now();
        let expires = now + time_left(&session);
        let first_check = (session.confirmed.at() + self.stream_recheck).max(now);
        // One timer for both deadlines, the expiry and the next store check,
        // set to the earlier: a new stream registers one timer entry, not two
        // and an `Interval` (1,200 fewer instructions a new stream,
        // tests/bench/README.md). No check is due at or after the expiry, so
        // an expired token ends its stream as expired, never as revoked.
        let wake = tokio::time::sleep_until(first_check.min(expires));
        tokio::pin!(wake);
        let mut hearing = true;
        // Without the revocation feed, or after the cache forgot what it
        // held, revocations may have been missed: asked at once.
        let mut check_store = self.is_degraded() || self.forgot_since(&session);
        loop {
            if check_store {
                match self.ask_store(&session).await {
                    Some(false) => return SessionEnd::Revoked,
                    Some(true) => session.confirmed.now(),
                    // A store that cannot answer leaves the stream to its
                    // expiry, and confirms nothing.
                    None => {}
                }
                // The next check an interval after this one, however it
                // was prompted.
                let next_check = Instant::now() + self.stream_recheck;
                wake.as_mut().reset(next_check.min(expires));
            }
            check_store = false;
            tokio::select! {
                () = &mut wake => {
                    if wake.deadline() >= expires {
                        return SessionEnd::Expired;
                    }
                    check_store = true;
                }
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
            }
        }
    }

    /// Whether the store still holds the session's token and grant; `None`
    /// when it cannot answer.
    async fn ask_store(&self, session: &Session) -> Option<bool> {
        match self
            .grants
            .is_live(&session.token_hash, &session.grant_id)
            .await
        {
            Ok(live) => Some(live),
            Err(e) => {
                tracing::warn!(error = %e, "store unreachable; an open stream keeps its token until expiry");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
