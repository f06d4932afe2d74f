//! What the connection's HTTP/1.1 server (`http1.rs`) tells the rest of
//! the connection: the framing verdict on each head, in request order, for
//! `CheckFraming`, and how far the next head has come, for the idle watch's
//! header timeout.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::error::FramingError;

/// The verdicts on one connection's raw HTTP/1.1 request heads, oldest
/// first: the server pushes one per head as it hands the request over,
/// `CheckFraming` takes one per request, so the two stay in step.
/// Also where the next head stands (`HeadProgress`), for the connection's
/// idle watch, which bounds a head's arrival by `server.header_timeout`.
#[derive(Default)]
pub(crate) struct RawHeads {
    pub(super) verdicts: Mutex<VecDeque<Result<(), FramingError>>>,
    progress: Mutex<HeadProgress>,
}

/// How far the connection's next request head has come, as the server saw
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
}

impl RawHeads {
    /// Where the next head stands.
    pub(crate) fn progress(&self) -> HeadProgress {
        *self
            .progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn set_progress(&self, progress: HeadProgress) {
        *self
            .progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = progress;
    }

    pub(crate) fn push(&self, verdict: Result<(), FramingError>) {
        self.verdicts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push_back(verdict);
    }

    /// The verdict on the next request's raw head; without one (a request
    /// that came otherwise), the parsed-header check stands alone.
    pub(crate) fn next_verdict(&self) -> Result<(), FramingError> {
        self.verdicts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop_front()
            .unwrap_or(Ok(()))
    }
}
