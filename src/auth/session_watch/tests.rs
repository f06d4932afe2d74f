//! When an open event stream's session ends, and what it costs the store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use crate::auth::test_support::{Fixture, Issued};
use crate::auth::token_cache::TokenCache;
use crate::session::Session;
use crate::session::{Revocation, SessionEnd};
use crate::store::{Namespace, Store};

const HOUR: Duration = Duration::from_secs(3600);

/// A store, a token cache whose streams ask it every `recheck`, and a live
/// session issued and looked up through that cache (one store read).
struct Watched {
    fixture: Fixture,
    cache: Arc<TokenCache>,
    issued: Issued,
    session: Arc<Session>,
}

async fn watched(recheck: Duration) -> Watched {
    let fixture = Fixture::new();
    let cache = fixture.cache_rechecking_streams_every(HOUR, HOUR, recheck);
    let (issued, session) = issue_and_look_up(&fixture, &cache).await;
    Watched {
        fixture,
        cache,
        issued,
        session,
    }
}

async fn issue_and_look_up(fixture: &Fixture, cache: &TokenCache) -> (Issued, Arc<Session>) {
    let issued = fixture.issue(3600, None).await;
    let session = cache.lookup(&issued.token).await.unwrap().unwrap();
    (issued, session)
}

/// Whether the watch is still waiting after `wait`.
async fn still_open(
    watch: &mut (impl std::future::Future<Output = SessionEnd> + Unpin),
    wait: Duration,
) -> Result<(), SessionEnd> {
    match tokio::time::timeout(wait, watch).await {
        Ok(end) => Err(end),
        Err(_) => Ok(()),
    }
}

#[tokio::test]
async fn a_stream_opened_within_an_interval_of_the_stores_confirmation_does_not_ask_it_again() {
    let Watched {
        fixture,
        cache,
        session,
        ..
    } = watched(Duration::from_secs(60)).await;
    assert_eq!(fixture.store.reads(), 1, "the lookup read the token");
    let mut streams: Vec<_> = (0..3)
        .map(|_| Box::pin(cache.clone().until_session_ends(session.clone())))
        .collect();
    for stream in &mut streams {
        assert!(still_open(stream, Duration::from_millis(50)).await.is_ok());
    }
    assert_eq!(
        fixture.store.reads(),
        1,
        "the streams did not ask the store"
    );
}

#[tokio::test]
async fn invariant_11_a_revocation_unheard_ends_a_stream_within_the_interval_of_the_last_confirmation(
) {
    let interval = Duration::from_millis(600);
    let Watched {
        fixture,
        cache,
        issued,
        session,
    } = watched(interval).await;
    let confirmed = tokio::time::Instant::now();
    // Another process revokes (this one hears nothing), then a stream of
    // the cached session opens late in the interval.
    assert!(fixture
        .store
        .delete(Namespace::Grant, &issued.grant_id)
        .await
        .unwrap());
    tokio::time::sleep(interval / 2).await;
    let end = cache.clone().until_session_ends(session).await;
    assert_eq!(end, SessionEnd::Revoked);
    let took = confirmed.elapsed();
    assert!(
        took < interval + Duration::from_millis(250),
        "ended {took:?} after the last confirmation, the interval is {interval:?}"
    );
}

#[tokio::test]
async fn a_stream_confirmed_long_ago_asks_the_store_at_once_and_confirms_for_the_next() {
    let interval = Duration::from_millis(300);
    let Watched {
        fixture,
        cache,
        session,
        ..
    } = watched(interval).await;
    tokio::time::sleep(interval * 2).await;
    let mut first = Box::pin(cache.clone().until_session_ends(session.clone()));
    assert!(still_open(&mut first, Duration::from_millis(50))
        .await
        .is_ok());
    assert_eq!(fixture.store.reads(), 2, "asked at once");
    let mut second = Box::pin(cache.clone().until_session_ends(session.clone()));
    assert!(still_open(&mut second, Duration::from_millis(50))
        .await
        .is_ok());
    assert_eq!(fixture.store.reads(), 2, "the first stream's answer holds");
}

#[tokio::test]
async fn a_revocation_heard_before_the_stream_started_ends_it_at_once() {
    let fixture = Fixture::new();
    let cache = fixture.cache_rechecking_streams_every(HOUR, HOUR, HOUR);
    for revocation in [Revocation::Grant, Revocation::AccessToken] {
        let (_, session) = issue_and_look_up(&fixture, &cache).await;
        let id = match revocation(String::new()) {
            Revocation::Grant(_) => session.grant_id.clone(),
            Revocation::AccessToken(_) => session.token_hash.clone(),
        };
        cache.evict(revocation(id)).await;
        let end = tokio::time::timeout(
            Duration::from_millis(200),
            cache.clone().until_session_ends(session),
        )
        .await;
        assert_eq!(end, Ok(SessionEnd::Revoked));
    }
}

#[tokio::test]
async fn after_the_cache_forgot_everything_a_stream_asks_the_store_at_once() {
    let Watched {
        fixture,
        cache,
        issued,
        session,
    } = watched(HOUR).await;
    // Revocations were missed (the feed lagged), one of them this grant's.
    cache.forget_all();
    assert!(fixture
        .store
        .delete(Namespace::Grant, &issued.grant_id)
        .await
        .unwrap());
    let end = tokio::time::timeout(
        Duration::from_millis(500),
        cache.clone().until_session_ends(session),
    )
    .await;
    assert_eq!(end, Ok(SessionEnd::Revoked));
}

#[tokio::test]
async fn a_live_stream_asks_the_store_every_interval_until_its_token_expires() {
    let fixture = Fixture::new();
    let interval = Duration::from_millis(200);
    let cache = fixture.cache_rechecking_streams_every(HOUR, HOUR, interval);
    // Issued late in a second, the token has 1 to 1.5 s left, not the 2
    // whole seconds a count from now would give it.
    let into_second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_millis();
    if into_second < 500 {
        tokio::time::sleep(Duration::from_millis(u64::from(500 - into_second))).await;
    }
    let issued = fixture.issue(2, None).await;
    let session = cache.lookup(&issued.token).await.unwrap().unwrap();
    let expiry = UNIX_EPOCH + Duration::from_secs(session.expires_at.unsigned_abs());
    let started = tokio::time::Instant::now();
    let end = cache.clone().until_session_ends(session).await;
    let took = started.elapsed();
    let ended = SystemTime::now();
    assert_eq!(end, SessionEnd::Expired);
    // At the token's expiry, not up to a second after it.
    let late = ended.duration_since(expiry).unwrap_or_default();
    assert!(
        ended + Duration::from_millis(5) >= expiry && late < Duration::from_millis(200),
        "ended {late:?} after the token's expiry"
    );
    // So the stream lived 1 to 1.5 s, not a whole number of seconds
    // counted from the watch's start.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2_200),
        "ended after {took:?}"
    );
    // The lookup read the token once; the stream asked again every interval
    // (one read a check) and never after the expiry, which would have found
    // the token gone and called it revoked.
    let checks = fixture.store.reads() - 1;
    let due = (took.as_millis() / interval.as_millis()) as usize;
    // (A busy machine makes each check late, and the next counts from it.)
    assert!(
        checks >= due / 2 && checks <= due,
        "{checks} store checks in {took:?}, one due every {interval:?}"
    );
}
