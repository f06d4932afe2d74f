//! What the raw-head scanner (`ScanHeads`) tells the rest of the
//! connection: the framing verdict on each head, in request order, for
//! `CheckFraming`, and how far the next head has come, for the idle watch's
//! header timeout.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::error::FramingError;

/// The verdicts on one connection's raw HTTP/1.1 request heads, oldest
/// first: `ScanHeads` pushes one per head it reads, `CheckFraming` takes one
/// per request hyper hands over. hyper parses heads in order from the bytes
/// the scanner has already seen, so the two queues stay in step.
/// Also where the next head stands (`HeadProgress`), for the connection's
/// idle watch, which bounds a head's arrival by `server.header_timeout`.
#[derive(Default)]
pub(crate) struct RawHeads {
    pub(super) verdicts: Mutex<VecDeque<Result<(), FramingError>>>,
    progress: Mutex<HeadProgress>,
}

/// How far the connection's next request head has come, as the scanner saw
/// the bytes arrive.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadProgress {
    /// No head begun: between requests, or every head so far arrived whole.
    #[default]
    Between,
    /// A head has been arriving since then, its blank line not yet.
    Since(Instant),
    /// HTTP/2: no HTTP/1.1 heads to follow.
    Http2,
    /// The scanner stopped following the heads (an upgrade, or a head hyper
    /// refuses, after which the connection ends): whether one is arriving
    /// cannot be told.
    Unfollowed,
}

impl RawHeads {
    /// Where the next head stands.
    pub(crate) fn progress(&self) -> HeadProgress {
        *self
            .progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn set_progress(&self, progress: HeadProgress) {
        *self
            .progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = progress;
    }

    pub(super) fn push(&self, verdict: Result<(), FramingError>) {
        self.verdicts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push_back(verdict);
    }

    /// How many verdicts wait for their requests.
    pub(crate) fn len(&self) -> usize {
        self.verdicts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// The verdict on the next request's raw head; when the scanner has
    /// stopped following the connection, the parsed-header check stands
    /// alone.
    pub(super) fn next_verdict(&self) -> Result<(), FramingError> {
        self.verdicts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop_front()
            .unwrap_or(Ok(()))
    }
}
