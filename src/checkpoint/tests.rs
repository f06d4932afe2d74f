//! The three kinds of layer, each on a small service: what they see, what
//! they call, and what they copy.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tower::ServiceExt;

/// Refuses odd numbers, doubles even ones on the way in and adds one to
/// the answer on the way out.
#[derive(Clone)]
struct Even;

#[derive(Debug, PartialEq)]
enum Refused {
    Odd(u32),
}

impl<S> Checkpoint<S, u32> for Even
where
    S: Service<u32, Response = u32, Error = Refused> + Send + 'static,
    S::Future: Send,
{
    async fn run(self, mut inner: S, request: u32) -> Result<u32, Refused> {
        if request % 2 == 1 {
            return Err(Refused::Odd(request));
        }
        Ok(inner.call(request * 2).await? + 1)
    }
}

/// A service that answers with its request, and how often it was called.
fn counting_echo() -> (
    impl Service<u32, Response = u32, Error = Refused, Future: Send> + Clone + Send + Sync,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let echo = tower::service_fn(move |n: u32| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Refused>(n) }
    });
    (echo, calls)
}

#[tokio::test]
async fn a_checkpoint_sees_the_request_and_the_response() {
    let (inner, calls) = counting_echo();
    let service = CheckpointLayer::new(Even).layer(inner);
    assert_eq!(service.clone().oneshot(4).await, Ok(9));
    assert_eq!(service.oneshot(3).await, Err(Refused::Odd(3)));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a refused request never reaches the inner service"
    );
}

/// An inner service that is ready only once polled, and forgets it
/// when called (like a buffer or a concurrency limit handing out one
/// permit per `poll_ready`); a clone starts unready, and is counted.
#[derive(Default)]
struct Permit {
    ready: bool,
    clones: Arc<AtomicUsize>,
}

impl Clone for Permit {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        Permit {
            ready: false,
            clones: self.clones.clone(),
        }
    }
}

impl Service<u32> for Permit {
    type Response = u32;
    type Error = Refused;
    type Future = std::future::Ready<Result<u32, Refused>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Refused>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, n: u32) -> Self::Future {
        assert!(self.ready, "called without poll_ready");
        self.ready = false;
        std::future::ready(Ok(n))
    }
}

#[tokio::test]
async fn each_request_gets_the_service_that_was_polled_ready() {
    let mut service = CheckpointLayer::new(Even).layer(Permit::default());
    for n in [2, 4, 6] {
        let answer = service.ready().await.map(|s| s.call(n));
        assert_eq!(answer.expect("ready").await, Ok(n * 2 + 1));
    }
}

/// Like `Even`, but lets multiples of ten through untouched, and counts
/// the requests it ran for.
#[derive(Clone, Default)]
struct EvenButTens {
    runs: Arc<AtomicUsize>,
}

impl<S> Checkpoint<S, u32> for EvenButTens
where
    S: Service<u32, Response = u32, Error = Refused> + Send + 'static,
    S::Future: Send,
{
    async fn run(self, inner: S, request: u32) -> Result<u32, Refused> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Even.run(inner, request).await
    }

    fn passes(&self, request: &u32) -> bool {
        request.is_multiple_of(10)
    }
}

#[tokio::test]
async fn a_request_a_checkpoint_passes_goes_straight_to_the_service_polled_ready() {
    let checkpoint = EvenButTens::default();
    let mut service = CheckpointLayer::new(checkpoint.clone()).layer(Permit::default());
    for (n, answer) in [
        (20, Ok(20)),
        (4, Ok(9)),
        (30, Ok(30)),
        (3, Err(Refused::Odd(3))),
    ] {
        let call = service.ready().await.map(|s| s.call(n));
        assert_eq!(call.expect("ready").await, answer, "{n}");
    }
    assert_eq!(
        checkpoint.runs.load(Ordering::SeqCst),
        2,
        "only 4 and 3 ran"
    );
}

/// Refuses odd numbers; marks even ones by adding 100.
struct EvenGate;

impl Gate<u32> for EvenGate {
    type Refusal = Refused;

    fn admit(&self, request: &mut u32) -> Result<(), Refused> {
        if *request % 2 == 1 {
            return Err(Refused::Odd(*request));
        }
        *request += 100;
        Ok(())
    }
}

#[tokio::test]
async fn a_gate_admits_enriched_requests_and_refuses_without_calling_the_inner_service() {
    let (inner, calls) = counting_echo();
    let service = gate_layer(EvenGate).layer(inner);
    assert_eq!(service.clone().oneshot(4).await, Ok(104));
    assert_eq!(service.oneshot(3).await, Err(Refused::Odd(3)));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a refused request never reaches the inner service"
    );
}

#[tokio::test]
async fn a_gate_calls_the_service_that_was_polled_ready() {
    let mut service = gate_layer(EvenGate).layer(Permit::default());
    for n in [2, 4, 6] {
        let answer = service.ready().await.map(|s| s.call(n));
        assert_eq!(answer.expect("ready").await, Ok(n + 100));
    }
}

/// Answers 0 itself; adds 100 to other requests on the way in and
/// counts, on the way out, the outcomes it saw (adding 1 to answers).
struct Tally {
    left: Arc<AtomicUsize>,
}

struct TallyVisit(Arc<AtomicUsize>);

impl Around<u32, u32, Refused> for Tally {
    type Visit = TallyVisit;

    fn enter(&self, request: &mut u32) -> Result<TallyVisit, Result<u32, Refused>> {
        if *request == 0 {
            return Err(Ok(7));
        }
        *request += 100;
        Ok(TallyVisit(self.left.clone()))
    }
}

impl Leave<u32, Refused> for TallyVisit {
    fn leave(self, outcome: &mut Result<u32, Refused>) {
        self.0.fetch_add(1, Ordering::SeqCst);
        if let Ok(answer) = outcome {
            *answer += 1;
        }
    }
}

#[tokio::test]
async fn an_around_sees_the_request_and_the_outcome_or_answers_alone() {
    let (inner, calls) = counting_echo();
    let left = Arc::new(AtomicUsize::new(0));
    let service = AroundLayer::new(Tally { left: left.clone() }).layer(inner);
    assert_eq!(service.clone().oneshot(4).await, Ok(105));
    assert_eq!(left.load(Ordering::SeqCst), 1);
    assert_eq!(service.clone().oneshot(0).await, Ok(7));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "an answer from enter never reaches the inner service"
    );
    assert_eq!(left.load(Ordering::SeqCst), 1, "nor is it left");

    // A request dropped before its answer is never left either.
    let mut service = service;
    let pending = service.ready().await.map(|s| s.call(1)).expect("ready");
    drop(pending);
    assert_eq!(left.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_around_calls_the_service_that_was_polled_ready() {
    let left = Arc::new(AtomicUsize::new(0));
    let mut service = AroundLayer::new(Tally { left }).layer(Permit::default());
    for n in [2, 4, 6] {
        let answer = service.ready().await.map(|s| s.call(n));
        assert_eq!(answer.expect("ready").await, Ok(n + 101));
    }
}

#[tokio::test]
async fn a_stack_of_checkpoints_copies_the_service_below_once_per_request() {
    let below = Permit::default();
    let clones = below.clones.clone();
    let stack = tower::ServiceBuilder::new()
        .layer(CheckpointLayer::new(Even))
        .layer(CheckpointLayer::new(Even))
        .layer(CheckpointLayer::new(Even))
        .service(below);
    for request in 1..=4 {
        // As the router serves a request: a clone of the whole stack,
        // polled ready and called once.
        assert_eq!(stack.clone().oneshot(2).await, Ok(2 * 8 + 3));
        assert_eq!(clones.load(Ordering::SeqCst), request);
    }
}
