//! The request path's clock: read at most once each time a connection's
//! task is polled, and shared by everything that asks for the time during
//! that poll — as nginx reads the time once per turn of its event loop.
//!
//! A request asked the operating system for the time 27 times (timeouts,
//! rate limits, the token cache, metrics, the pool, the connection's
//! activity), 24 ns each on a virtual machine: more than half a
//! microsecond, 2–3% of the whole request's CPU time. Within one poll the
//! task does a few microseconds of work and waits for nothing, so one
//! reading serves it all: while [`Clocked`] polls the task, [`now`] reads the
//! clock when first asked and hands that reading out from then on.
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
    /// The time of the poll in progress on this thread, if it is a
    /// [`Clocked`] task's.
    static POLL: Cell<PollTime> = const { Cell::new(PollTime::Outside) };
}

/// What [`now`] knows on this thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PollTime {
    /// No [`Clocked`] task is being polled: each call reads the clock.
    Outside,
    /// A [`Clocked`] task's poll that has not asked yet: a poll that never
    /// asks costs no reading.
    Unread,
    /// The reading this poll goes by.
    At(Instant),
}

/// The time: the current poll's when a [`Clocked`] task is being polled on
/// this thread (read when first asked), the clock's otherwise.
pub(crate) fn now() -> Instant {
    POLL.with(|poll| match poll.get() {
        PollTime::At(at) => at,
        PollTime::Unread => {
            let at = Instant::now();
            poll.set(PollTime::At(at));
            at
        }
        PollTime::Outside => Instant::now(),
    })
}

/// Reads the clock, and makes the reading the current poll's time (when
/// there is one): for a duration that must be exact, after which what
/// follows in the same poll asks [`now`] no later than this.
pub(crate) fn read() -> Instant {
    let at = Instant::now();
    POLL.with(|poll| {
        if poll.get() != PollTime::Outside {
            poll.set(PollTime::At(at));
        }
    });
    at
}

pin_project_lite::pin_project! {
    /// A future whose every poll reads the clock at most once (when [`now`]
    /// is first asked), for [`now`] to hand out while it runs.
    pub(crate) struct Clocked<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Clocked<F> {
    /// `inner`, each poll with a time of its own.
    pub(crate) fn new(inner: F) -> Self {
        Clocked { inner }
    }
}

impl<F: Future> Future for Clocked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _restore = PolledAt::begin();
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

/// A poll's time from its start (unread) to its end; what was there
/// before is back once dropped (also when the poll panics: a stale time
/// must not outlive its poll).
struct PolledAt(PollTime);

impl PolledAt {
    fn begin() -> Self {
        PolledAt(POLL.with(|poll| poll.replace(PollTime::Unread)))
    }
}

impl Drop for PolledAt {
    fn drop(&mut self) {
        POLL.with(|poll| poll.set(self.0));
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
        assert_eq!(
            POLL.with(Cell::get),
            PollTime::Outside,
            "the poll's time ends with it"
        );
    }

    #[tokio::test]
    async fn a_poll_reads_the_clock_when_first_asked_not_when_it_starts() {
        let (asked_after, first) = Clocked::new(async {
            assert_eq!(POLL.with(Cell::get), PollTime::Unread, "nothing read yet");
            std::thread::sleep(Duration::from_millis(2));
            let asked_after = Instant::now();
            (asked_after, now())
        })
        .await;
        assert!(first >= asked_after);
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
        assert_eq!(POLL.with(Cell::get), PollTime::Outside);
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
