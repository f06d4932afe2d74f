use super::*;
use tower::Service;

/// The connection's watch, on a task of its own, with the header timeout
/// and the idle limit in seconds.
fn watch(
    activity: &Arc<Activity>,
    heads: &Arc<RawHeads>,
    header_timeout: u64,
    idle: u64,
) -> tokio::task::JoinHandle<()> {
    let (activity, heads) = (activity.clone(), heads.clone());
    tokio::spawn(async move {
        activity
            .idle_expired(
                &heads,
                Duration::from_secs(header_timeout),
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
        .idle_expired(
            &RawHeads::default(),
            Duration::from_secs(2),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(started.elapsed().as_secs(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_idle_limit_takes_over_after_the_first_request_even_when_shorter() {
    let activity = Arc::new(Activity::new());
    let started = tokio::time::Instant::now();
    let expired = watch(&activity, &Arc::default(), 30, 1);
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
    let expired = watch(&activity, &Arc::default(), 1, 5);
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

/// A connection whose first request was answered at the start, no head
/// arriving since.
fn served_once() -> (Arc<Activity>, Arc<RawHeads>) {
    let activity = Arc::new(Activity::new());
    let heads = Arc::new(RawHeads::default());
    drop(InFlight::begin(activity.clone()));
    (activity, heads)
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_lives_the_idle_limit_not_the_header_timeout() {
    let (activity, heads) = served_once();
    let started = tokio::time::Instant::now();
    activity
        .idle_expired(&heads, Duration::from_secs(2), Duration::from_secs(10))
        .await;
    assert_eq!(started.elapsed().as_secs(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_head_that_stops_half_way_is_closed_after_the_header_timeout_from_its_first_byte() {
    let (activity, heads) = served_once();
    let started = tokio::time::Instant::now();
    let expired = watch(&activity, &heads, 2, 60);
    // Idle for 5 s, then half a head.
    tokio::time::sleep(Duration::from_secs(5)).await;
    heads.set_progress(HeadProgress::Since(tokio::time::Instant::now()));
    expired.await.unwrap();
    assert_eq!(
        started.elapsed().as_secs(),
        7,
        "2 s after the head's first byte"
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_that_ends_in_time_clears_its_timer() {
    let (activity, heads) = served_once();
    heads.set_progress(HeadProgress::Since(tokio::time::Instant::now()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    heads.set_progress(HeadProgress::Between);
    drop(InFlight::begin(activity.clone()));
    let started = tokio::time::Instant::now();
    activity
        .idle_expired(&heads, Duration::from_secs(2), Duration::from_secs(10))
        .await;
    assert_eq!(
        started.elapsed().as_secs(),
        10,
        "idle again, not a head late"
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_begun_before_the_request_ended_is_timed_from_the_end() {
    let (activity, heads) = served_once();
    let in_flight = InFlight::begin(activity.clone());
    // A pipelined head's first bytes, 5 s before its predecessor's answer
    // is done: the client cannot be blamed for the wait.
    heads.set_progress(HeadProgress::Since(tokio::time::Instant::now()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(in_flight);
    let started = tokio::time::Instant::now();
    activity
        .idle_expired(&heads, Duration::from_secs(2), Duration::from_secs(60))
        .await;
    assert_eq!(started.elapsed().as_secs(), 2);
}
