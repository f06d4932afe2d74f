use super::*;
use tower::Service;

/// The connection's watch, on a task of its own, with the first request's
/// limit and the idle limit in seconds.
fn watch(activity: &Arc<Activity>, first_request: u64, idle: u64) -> tokio::task::JoinHandle<()> {
    let activity = activity.clone();
    tokio::spawn(async move {
        activity
            .idle_expired(
                Duration::from_secs(first_request),
                Duration::from_secs(idle),
            )
            .await;
    })
}

#[tokio::test(start_paused = true)]
async fn a_connection_without_requests_expires_after_the_first_request_limit() {
    let activity = Activity::new();
    let started = tokio::time::Instant::now();
    activity
        .idle_expired(Duration::from_secs(2), Duration::from_secs(60))
        .await;
    assert_eq!(started.elapsed().as_secs(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_idle_limit_takes_over_after_the_first_request_even_when_shorter() {
    let activity = Arc::new(Activity::new());
    let started = tokio::time::Instant::now();
    let expired = watch(&activity, 30, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(InFlight::begin(activity.clone()));
    expired.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_in_progress_is_never_idle() {
    let activity = Arc::new(Activity::new());
    let in_flight = InFlight::begin(activity.clone());
    let expired = watch(&activity, 1, 5);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!expired.is_finished());
    drop(in_flight);
    tokio::time::timeout(Duration::from_secs(10), expired)
        .await
        .expect("idle once the request ends")
        .unwrap();
}

#[tokio::test]
async fn a_request_is_in_progress_until_its_response_body_is_done() {
    let activity = Arc::new(Activity::new());
    let service = tower::service_fn(|_request: Request<()>| {
        std::future::ready(Ok::<_, std::convert::Infallible>(Response::new(
            Body::from("answer"),
        )))
    });
    let service = TrackActivityLayer(activity.clone()).layer(service);
    let in_flight = || activity.in_flight.load(Ordering::Acquire);
    let response = service
        .clone()
        .oneshot(Request::new(()))
        .await
        .expect("infallible");
    assert_eq!(in_flight(), 1, "the answer is still being sent");
    assert!(activity.served_any.load(Ordering::Acquire));
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"answer", "the body passes unchanged");
    assert_eq!(in_flight(), 0, "done once the body is");
    // A request given up before its answer ends when it is dropped.
    let mut service = service;
    let pending = service.ready().await.expect("ready").call(Request::new(()));
    assert_eq!(in_flight(), 1);
    drop(pending);
    assert_eq!(in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_lives_the_idle_limit_not_the_header_timeout() {
    let activity = Arc::new(Activity::new());
    drop(InFlight::begin(activity.clone()));
    let started = tokio::time::Instant::now();
    activity
        .idle_expired(Duration::from_secs(2), Duration::from_secs(10))
        .await;
    assert_eq!(started.elapsed().as_secs(), 10);
}

#[test]
fn a_request_given_room_keeps_its_extensions_and_no_others() {
    let mut filed = axum::http::Extensions::new();
    filed.insert(7u8);
    make_room(&mut filed);
    assert_eq!(filed.len(), 1, "nothing of the map's growing is left in it");
    assert_eq!(filed.get::<u8>(), Some(&7), "what was filed is kept");

    let mut other = axum::http::Extensions::new();
    make_room(&mut other);
    assert!(other.is_empty(), "a request's values stay its own");
}
