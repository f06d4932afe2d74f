//! `PolledWhenWoken`: a future that runs beside a busier one in the same
//! task is polled only when something it waits for has happened.
//!
//! A connection's task waits on hyper's connection and, beside it, on the
//! connection's idle timer and the server's shutdown signal
//! (`connection::serve_one`). `select!` polls every branch whenever the task
//! wakes, and the connection wakes it three times a request (and once per
//! event of an open stream), so the timer and the signal were asked three
//! times a request whether they had fired: a timer-wheel check, a watch
//! channel's lock, ~700 instructions a request under callgrind for two
//! answers that are almost always "no". Wrapped, they get a waker of their
//! own; the wrapper asks them again only once it has been used.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Polls `F` only on the first poll and after `F` woke its own waker.
pub(crate) struct PolledWhenWoken<F> {
    future: F,
    signal: Arc<WokenSignal>,
    /// The waker `F` is polled with: it raises the signal and wakes the
    /// task that polls the wrapper.
    waker: Waker,
}

/// Whether the inner future has woken since it was last polled, and the
/// task to wake when it does.
struct WokenSignal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WokenSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> PolledWhenWoken<F> {
    pub(crate) fn new(future: F) -> Self {
        let signal = Arc::new(WokenSignal {
            // Polled once at first, so that it can register its waker.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        PolledWhenWoken {
            future,
            waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

impl<F: Future + Unpin> Future for PolledWhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Registered before the signal is read: a wake-up between the two
        // is then either seen now or wakes the task again.
        this.signal.task.register(cx.waker());
        if !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Pin::new(&mut this.future).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// Counts its polls and keeps the waker of the last one; ready once
    /// `ready` is set.
    #[derive(Default)]
    struct Probe {
        polls: AtomicUsize,
        waker: Mutex<Option<Waker>>,
        ready: AtomicBool,
    }

    struct ProbeFuture(Arc<Probe>);

    impl Future for ProbeFuture {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.0.polls.fetch_add(1, Ordering::SeqCst);
            *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.0.ready.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    /// A task waker that counts its wake-ups.
    #[derive(Default)]
    struct TaskWakes(AtomicUsize);

    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_inner_future_is_polled_once_and_then_only_after_its_own_wake_up() {
        let probe = Arc::new(Probe::default());
        let mut wrapped = PolledWhenWoken::new(ProbeFuture(probe.clone()));
        let task = Arc::new(TaskWakes::default());
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);

        for _ in 0..5 {
            assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        }
        assert_eq!(
            probe.polls.load(Ordering::SeqCst),
            1,
            "polled on the first poll only"
        );

        // The inner future's own waker wakes the task and lets the next
        // poll through, once.
        probe.waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task is woken");
        for _ in 0..3 {
            assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        }
        assert_eq!(probe.polls.load(Ordering::SeqCst), 2);

        probe.ready.store(true, Ordering::SeqCst);
        probe.waker.lock().unwrap().take().unwrap().wake_by_ref();
        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_ready());
        assert_eq!(probe.polls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_timer_beside_a_busy_future_still_fires() {
        let period = std::time::Duration::from_millis(50);
        let sleep = tokio::time::sleep(period);
        tokio::pin!(sleep);
        let mut timer = PolledWhenWoken::new(sleep.as_mut());
        // The busy side wakes the task over and over, for far longer than
        // the timer's period.
        let busy = async {
            let started = tokio::time::Instant::now();
            while started.elapsed() < 100 * period {
                tokio::task::yield_now().await;
            }
        };
        tokio::pin!(busy);
        let started = tokio::time::Instant::now();
        tokio::select! {
            biased;
            _ = busy.as_mut() => panic!("the timer never fired"),
            _ = &mut timer => {}
        }
        assert!(started.elapsed() >= period);
    }
}
