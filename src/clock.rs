//! The request path's clock: read once each time a connection's task is
//! polled, and shared by everything that asks for the time during that
//! poll — as nginx reads the time once per turn of its event loop.
//!
//! A request asked the operating system for the time 27 times (timeouts,
//! rate limits, the token cache, metrics, the pool, the connection's
//! activity), 24 ns each on a virtual machine: more than half a
//! microsecond, 2–3% of the whole request's CPU time. Within one poll the
//! task does a few microseconds of work and waits for nothing, so one
//! reading serves it all: [`Clocked`] reads the clock as it polls the task
//! and [`now`] hands that reading out.
//!
//! Outside a [`Clocked`] task (background tasks, tests), [`now`] reads the
//! clock itself. Work that takes long enough to matter within a poll (a
//! policy's evaluation) reads the clock with [`read`], which also brings the
//! poll's time up to date for what follows.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Instant;

thread_local! {
    /// The time the task polled on this thread was polled at, if it is a
    /// [`Clocked`] one.
    static POLLED_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The time: the current poll's when a [`Clocked`] task is being polled on
/// this thread, the clock's otherwise.
pub(crate) fn now() -> Instant {
    POLLED_AT.with(Cell::get).unwrap_or_else(Instant::now)
}

/// Reads the clock, and makes the reading the current poll's time (when
/// there is one): for a duration that must be exact, after which what
/// follows in the same poll asks [`now`] no later than this.
pub(crate) fn read() -> Instant {
    let now = Instant::now();
    POLLED_AT.with(|at| {
        if at.get().is_some() {
            at.set(Some(now));
        }
    });
    now
}

pin_project_lite::pin_project! {
    /// A future whose every poll reads the clock once, for [`now`] to hand
    /// out while it runs.
    pub(crate) struct Clocked<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Clocked<F> {
    /// `inner`, polled with the time read as each poll starts.
    pub(crate) fn new(inner: F) -> Self {
        Clocked { inner }
    }
}

impl<F: Future> Future for Clocked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _restore = PolledAt::set(Instant::now());
        self.project().inner.poll(cx)
    }
}

/// Spawns HTTP/2 streams as [`Clocked`] tasks: hyper serves each stream
/// of a connection as a task of its own.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ClockedExecutor;

impl<F> hyper::rt::Executor<F> for ClockedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Clocked::new(future));
    }
}

/// The poll's time while it is set; what was there before once dropped
/// (also when the poll panics: a stale time must not outlive its poll).
struct PolledAt(Option<Instant>);

impl PolledAt {
    fn set(now: Instant) -> Self {
        PolledAt(POLLED_AT.with(|at| at.replace(Some(now))))
    }
}

impl Drop for PolledAt {
    fn drop(&mut self) {
        POLLED_AT.with(|at| at.set(self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn outside_a_clocked_task_now_reads_the_clock() {
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let first = now();
        std::thread::sleep(Duration::from_millis(2));
        let second = now();
        assert!(first > before);
        assert!(second > first, "each call reads the clock");
    }

    #[tokio::test]
    async fn within_one_poll_now_is_the_polls_time_and_a_read_moves_it_on() {
        let (first, second, read_at, after_read) = Clocked::new(async {
            let first = now();
            std::thread::sleep(Duration::from_millis(2));
            let second = now();
            let read_at = read();
            (first, second, read_at, now())
        })
        .await;
        assert_eq!(first, second, "one reading serves the whole poll");
        assert!(read_at >= first + Duration::from_millis(2));
        assert_eq!(
            after_read, read_at,
            "a read is the poll's time from then on"
        );
        assert!(
            POLLED_AT.with(Cell::get).is_none(),
            "the poll's time ends with it"
        );
    }

    #[tokio::test]
    async fn each_poll_reads_the_clock_anew() {
        let (before, after) = Clocked::new(async {
            let before = now();
            std::thread::sleep(Duration::from_millis(2));
            tokio::task::yield_now().await;
            (before, now())
        })
        .await;
        assert!(after >= before + Duration::from_millis(2));
    }

    #[test]
    fn a_poll_that_panics_leaves_no_stale_time_behind() {
        let mut panicking = std::pin::pin!(Clocked::new(async { panic!("a layer's bug") }));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = panicking.as_mut().poll(&mut cx);
        }));
        assert!(unwound.is_err());
        assert!(POLLED_AT.with(Cell::get).is_none());
    }

    #[tokio::test]
    async fn a_clocked_task_within_another_restores_the_outer_polls_time() {
        Clocked::new(async {
            let outer = now();
            std::thread::sleep(Duration::from_millis(2));
            let inner = Clocked::new(async { now() }).await;
            assert!(inner > outer);
            assert_eq!(now(), outer);
        })
        .await;
    }
}
