//! `Routes`: an MCP endpoint called on its connection's own copy.

use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;

use super::*;
use crate::server::shared::tests::Counted;

/// `Counted` as an endpoint's boxed service.
fn counted(clones: &Arc<AtomicUsize>, pending_polls: usize) -> EndpointService {
    BoxCloneSyncService::new(Counted::new(clones, pending_polls))
}

fn routes(endpoint: EndpointService) -> Routes {
    Routes::new(vec![(RouteTemplate::new("/mcp"), endpoint)], Router::new())
}

async fn answer(connection: &mut Routes, path: &str) -> String {
    let request = Request::post(path).body(Body::empty()).unwrap();
    let Ok(response) = ServiceExt::<Request<Body>>::ready(&mut *connection)
        .await
        .unwrap()
        .call(request)
        .await;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn a_connection_calls_its_own_copy_of_an_endpoint_not_a_clone_per_request() {
    let clones = Arc::new(AtomicUsize::new(0));
    let listener = routes(counted(&clones, 0));
    let mut connection = listener.clone();
    for _ in 0..5 {
        assert_eq!(answer(&mut connection, "/mcp").await, "answered");
    }
    assert_eq!(
        clones.load(Ordering::SeqCst),
        1,
        "one copy, made for the first request"
    );
    let mut another = listener.clone();
    assert_eq!(answer(&mut another, "/mcp").await, "answered");
    assert_eq!(clones.load(Ordering::SeqCst), 2, "each connection its own");
    // Other paths go to the router, which has none of them.
    let request = Request::get("/elsewhere").body(Body::empty()).unwrap();
    let Ok(response) = ServiceExt::<Request<Body>>::ready(&mut connection)
        .await
        .unwrap()
        .call(request)
        .await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn an_endpoint_that_is_not_ready_at_once_is_waited_for() {
    let clones = Arc::new(AtomicUsize::new(0));
    let mut connection = routes(counted(&clones, 1)).clone();
    // The connection's copy is not ready: the request waits for a copy of
    // its own, and is called only once that one is ready.
    assert_eq!(answer(&mut connection, "/mcp").await, "answered");
    assert_eq!(clones.load(Ordering::SeqCst), 2);
    // Asked again, the connection's copy is ready now.
    assert_eq!(answer(&mut connection, "/mcp").await, "answered");
    assert_eq!(clones.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_that_calls_another_endpoint_gets_a_copy_of_that_one() {
    let (mcp, sse) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let listener = Routes::new(
        vec![
            (RouteTemplate::new("/mcp"), counted(&mcp, 0)),
            (RouteTemplate::new("/sse"), counted(&sse, 0)),
        ],
        Router::new(),
    );
    let mut connection = listener.clone();
    for path in ["/mcp", "/mcp", "/sse", "/sse", "/mcp"] {
        assert_eq!(answer(&mut connection, path).await, "answered");
    }
    // The copy in hand is the last endpoint's.
    assert_eq!(mcp.load(Ordering::SeqCst), 2);
    assert_eq!(sse.load(Ordering::SeqCst), 1);
}
