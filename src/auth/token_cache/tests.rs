//! The token cache's promises, each named for what it guarantees.

use std::time::Duration;

use super::*;
use crate::auth::test_support::{Fixture, Gate, CLIENT_ID};
use crate::store::{Namespace, Store};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn a_cached_session_never_outlives_its_token() {
    let fixture = Fixture::new();
    // An hour of cache TTL; the token has two seconds.
    let cache = fixture.cache(HOUR, HOUR);
    let issued = fixture.issue(2, None).await;
    let session = cache
        .lookup(&issued.token)
        .await
        .expect("store answers")
        .expect("a live token");
    // From here on only the cache could answer.
    fixture.store.fail(true);
    assert!(cache.lookup(&issued.token).await.expect("cached").is_some());
    while now_unix() < session.expires_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = cache.lookup(&issued.token).await;
    assert!(
        matches!(after, Ok(None) | Err(ProxyError::StoreUnavailable(_))),
        "an expired token was served from the cache: {after:?}"
    );
}

#[tokio::test]
async fn an_unknown_token_is_remembered_as_unknown_for_the_negative_ttl() {
    let fixture = Fixture::new();
    let negative_ttl = Duration::from_secs(1);
    let cache = fixture.cache(HOUR, negative_ttl);
    assert!(cache.lookup("made-up").await.expect("answers").is_none());
    assert_eq!(fixture.store.reads(), 1);
    assert!(cache.lookup("made-up").await.expect("answers").is_none());
    assert_eq!(
        fixture.store.reads(),
        1,
        "remembered: the store is not asked again"
    );
    tokio::time::sleep(negative_ttl + Duration::from_millis(200)).await;
    assert!(cache.lookup("made-up").await.expect("answers").is_none());
    assert_eq!(
        fixture.store.reads(),
        2,
        "forgotten: the store is asked again"
    );
}

#[tokio::test]
async fn when_the_store_fails_a_cached_session_still_works_and_an_unknown_token_is_refused_as_unavailable(
) {
    let fixture = Fixture::new();
    let cache = fixture.cache(HOUR, HOUR);
    let cached = fixture.issue(3600, None).await;
    let not_yet_seen = fixture.issue(3600, None).await;
    assert!(cache
        .lookup(&cached.token)
        .await
        .expect("answers")
        .is_some());
    fixture.store.fail(true);
    assert!(cache.lookup(&cached.token).await.expect("cached").is_some());
    let refused = cache.lookup(&not_yet_seen.token).await;
    assert!(
        matches!(refused, Err(ProxyError::StoreUnavailable(_))),
        "{refused:?}"
    );
    // Even when the cached session is due for a re-check (the revocation
    // feed is down too), an unreachable store does not end it.
    cache.set_degraded(true);
    tokio::time::sleep(DEGRADED_TTL + Duration::from_millis(100)).await;
    assert!(cache.lookup(&cached.token).await.expect("cached").is_some());
    // The failure was not remembered as "unknown".
    fixture.store.fail(false);
    assert!(cache
        .lookup(&not_yet_seen.token)
        .await
        .expect("answers")
        .is_some());
}

#[tokio::test]
async fn without_the_revocation_feed_a_cached_session_is_checked_again_after_the_degraded_ttl() {
    let fixture = Fixture::new();
    let cache = fixture.cache(HOUR, HOUR);
    cache.set_degraded(true);
    let issued = fixture.issue(3600, None).await;
    assert!(cache
        .lookup(&issued.token)
        .await
        .expect("answers")
        .is_some());
    // Revoked by another replica, whose announcement this one cannot hear.
    fixture
        .store
        .delete(Namespace::Grant, &issued.grant_id)
        .await
        .expect("delete");
    assert!(cache.lookup(&issued.token).await.expect("cached").is_some());
    tokio::time::sleep(DEGRADED_TTL + Duration::from_millis(100)).await;
    assert!(cache
        .lookup(&issued.token)
        .await
        .expect("answers")
        .is_none());
}

/// Lets the cache's eviction task hear what was announced.
async fn let_evictions_run() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_revocation_evicts_the_cached_session() {
    let fixture = Fixture::new();
    let cache = fixture.cache(HOUR, HOUR);
    let grant = fixture.issue(3600, None).await;
    let token = fixture.issue(3600, None).await;
    assert!(cache.lookup(&grant.token).await.expect("answers").is_some());
    assert!(cache.lookup(&token.token).await.expect("answers").is_some());
    let reads = fixture.store.reads();

    fixture
        .grants
        .revoke_grant(&grant.grant_id)
        .await
        .expect("revoke");
    let_evictions_run().await;
    assert!(cache.lookup(&grant.token).await.expect("answers").is_none());
    assert_eq!(
        fixture.store.reads(),
        reads,
        "the cache itself refused the revoked grant"
    );

    fixture
        .grants
        .revoke_token(&token.token, CLIENT_ID)
        .await
        .expect("revoke");
    let_evictions_run().await;
    assert!(cache.lookup(&token.token).await.expect("answers").is_none());
}

#[tokio::test]
async fn a_revocation_that_lands_during_a_lookup_is_not_undone_by_it() {
    let fixture = Fixture::new();
    let cache = fixture.cache(HOUR, HOUR);
    let grant = fixture.issue(3600, None).await;
    let token = fixture.issue(3600, None).await;
    for (issued, revoke_grant) in [(&grant, true), (&token, false)] {
        let gate = Arc::new(Gate::default());
        if let Ok(mut hold) = fixture.store.hold_next_client_read.lock() {
            *hold = Some(gate.clone());
        }
        // The lookup has read the token and its grant, and waits.
        let lookup = tokio::spawn({
            let (cache, token) = (cache.clone(), issued.token.clone());
            async move { cache.lookup(&token).await }
        });
        gate.reached.notified().await;
        if revoke_grant {
            fixture.grants.revoke_grant(&issued.grant_id).await
        } else {
            fixture.grants.revoke_token(&issued.token, CLIENT_ID).await
        }
        .expect("revoke");
        let_evictions_run().await;
        gate.release.notify_one();
        let _raced = lookup.await.expect("lookup task");
        let after = cache.lookup(&issued.token).await.expect("answers");
        assert!(
            after.is_none(),
            "revoked {} served from the cache",
            if revoke_grant { "grant" } else { "token" }
        );
    }
}

#[tokio::test]
async fn revocations_are_consulted_for_as_long_as_a_cached_session_could_outlive_them() {
    let fixture = Fixture::new();
    let max_ttl = Duration::from_millis(600);
    let cache = fixture.cache(max_ttl, max_ttl);
    let issued = fixture.issue(3600, None).await;
    let session = cache
        .lookup(&issued.token)
        .await
        .expect("store answers")
        .expect("a live token");
    assert!(!cache.recently_revoked(&session), "nothing was revoked");

    cache
        .evict(Revocation::Grant(session.grant_id.clone()))
        .await;
    assert!(cache.recently_revoked(&session));
    tokio::time::sleep(max_ttl / 2).await;
    assert!(
        cache.recently_revoked(&session),
        "a session cached just before the revocation may live on for max_ttl"
    );
    tokio::time::sleep(max_ttl).await;
    assert!(!cache.recently_revoked(&session));
}
