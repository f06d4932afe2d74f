use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Response, StatusCode};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

use super::*;
use crate::auth::test_support::{Fixture, CLIENT_ID};

const PUBLIC_URL: &str = "https://mcp.example.com";

/// A downstream that answers 200 and reports what Authenticate added.
fn stub(calls: Arc<AtomicUsize>) -> BoxCloneSyncService<Request<Body>, Response<Body>, ProxyError> {
    BoxCloneSyncService::new(tower::service_fn(move |request: Request<Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let session = request.extensions().get::<Arc<Session>>().cloned();
        async move {
            let session = session.expect("the session travels with the request");
            Ok(Response::new(Body::from(session.sub.to_string())))
        }
    }))
}

fn bearer(token: &str) -> Request<Body> {
    let mut request = Request::new(Body::empty());
    request.headers_mut().insert(
        axum::http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    request
}

#[tokio::test]
async fn a_live_token_passes_with_its_session_and_an_unusable_one_is_refused_before_the_service() {
    let fixture = Fixture::new();
    let cache = fixture.cache(Duration::from_secs(60), Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let service = Authenticate::layer(cache, PUBLIC_URL, "/mcp").layer(stub(calls.clone()));

    let live = fixture.issue(3600, None).await;
    let slot = AuditSlot::written();
    let mut request = bearer(&live.token);
    request.extensions_mut().insert(slot.clone());
    let response = service.clone().oneshot(request).await.expect("passes");
    assert_eq!(response.status(), StatusCode::OK);
    slot.update(|facts| {
        assert_eq!(facts.sub.as_deref(), Some("alice"));
        assert_eq!(facts.email.as_deref(), Some("alice@example.com"));
        assert_eq!(facts.client_id.as_deref(), Some(CLIENT_ID));
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // When no audit line is written (only the counters), who called is not
    // copied into the slot.
    let counted_only = AuditSlot::default();
    let mut request = bearer(&live.token);
    request.extensions_mut().insert(counted_only.clone());
    let response = service.clone().oneshot(request).await.expect("passes");
    assert_eq!(response.status(), StatusCode::OK);
    counted_only.update(|facts| assert_eq!(facts.sub, None));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let refused = service.clone().oneshot(Request::new(Body::empty())).await;
    assert!(
        matches!(
            refused,
            Err(ProxyError::Unauthorized { token_sent: false, ref resource_metadata, .. })
                if resource_metadata == "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        ),
        "{refused:?}"
    );
    let refused = service.clone().oneshot(bearer("made-up")).await;
    assert!(
        matches!(
            refused,
            Err(ProxyError::Unauthorized {
                token_sent: true,
                ..
            })
        ),
        "{refused:?}"
    );
    let mut twice = bearer(&live.token);
    twice.headers_mut().append(
        axum::http::header::AUTHORIZATION,
        "Bearer other".parse().expect("value"),
    );
    let refused = service.clone().oneshot(twice).await;
    assert!(
        matches!(refused, Err(ProxyError::BadRequest(_))),
        "{refused:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "no refusal reached the service"
    );
}

#[tokio::test]
async fn a_token_bound_to_a_resource_works_there_and_under_the_root_only() {
    let fixture = Fixture::new();
    let cache = fixture.cache(Duration::from_secs(60), Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let mcp = Authenticate::layer(cache.clone(), PUBLIC_URL, "/mcp").layer(stub(calls.clone()));
    let sse = Authenticate::layer(cache, PUBLIC_URL, "/sse").layer(stub(calls.clone()));

    let root = fixture.issue(3600, Some(PUBLIC_URL)).await;
    let for_mcp = fixture
        .issue(3600, Some("https://mcp.example.com/mcp"))
        .await;
    let elsewhere = fixture
        .issue(3600, Some("https://other.example.com/mcp"))
        .await;
    assert!(mcp.clone().oneshot(bearer(&root.token)).await.is_ok());
    assert!(sse.clone().oneshot(bearer(&root.token)).await.is_ok());
    assert!(mcp.clone().oneshot(bearer(&for_mcp.token)).await.is_ok());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    for (service, token) in [(&sse, &for_mcp.token), (&mcp, &elsewhere.token)] {
        let refused = service.clone().oneshot(bearer(token)).await;
        assert!(
            matches!(
                refused,
                Err(ProxyError::Unauthorized {
                    reason: "the access token was issued for another resource",
                    ..
                })
            ),
            "{refused:?}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_store_that_cannot_answer_is_unavailable_not_unauthorized() {
    let fixture = Fixture::new();
    let cache = fixture.cache(Duration::from_secs(60), Duration::from_secs(60));
    let calls = Arc::new(AtomicUsize::new(0));
    let service = Authenticate::layer(cache, PUBLIC_URL, "/mcp").layer(stub(calls.clone()));
    let issued = fixture.issue(3600, None).await;
    fixture.store.fail(true);
    let refused = service.oneshot(bearer(&issued.token)).await;
    assert!(
        matches!(refused, Err(ProxyError::StoreUnavailable(_))),
        "{refused:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}
