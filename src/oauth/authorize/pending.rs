//! A sign-in in progress, between `/authorize` and `/callback`: sealed in
//! the store under a hash of its one-time id, taken (not read) when used.

use std::time::Duration;

use crate::crypto;
use crate::error::PageError;
use crate::oauth::OAuthState;
use crate::store::{decode, encode, Namespace, PendingAuthorization};

/// The title of the page for a flow that expired or was already used.
pub(super) const INVALID_STATE_TITLE: &str = "Invalid or expired state";

/// The page for a flow that is gone: expired, used, or never ours.
pub(super) fn expired_state() -> PageError {
    PageError::bad_request(
        INVALID_STATE_TITLE,
        "This sign-in link has expired (after 10 minutes) or was already used. Start again from your application.",
    )
}

/// Remembers a flow under a one-time id (a consent request id, or the
/// provider's `state`) for `ttl`.
pub(super) async fn put_pending(
    app: &OAuthState,
    id: &str,
    pending: &PendingAuthorization,
    ttl: Duration,
) -> Result<(), PageError> {
    let key = crypto::token_hash(id);
    let sealed = app.keys.seal_pending(&key, &encode(pending)?);
    app.records
        .store
        .put(Namespace::Pending, &key, &sealed, ttl)
        .await?;
    Ok(())
}

/// Takes a pending authorization: each can be used once.
pub(super) async fn take_pending(
    app: &OAuthState,
    id: &str,
) -> Result<Option<PendingAuthorization>, PageError> {
    let key = crypto::token_hash(id);
    let Some(sealed) = app.records.store.take(Namespace::Pending, &key).await? else {
        return Ok(None);
    };
    let plain = app
        .keys
        .open_pending(&key, &sealed)
        .map_err(|e| PageError::internal("pending authorization could not be opened", &e))?;
    Ok(Some(decode(&plain)?))
}
