//! Shadow mode: a candidate policy (`policy.shadow_path`) evaluated on the
//! route's live decisions, never enforced.
//!
//! Each decision is queued (bounded; full → dropped and counted) to the
//! route's shadow thread, which runs the candidate under the same sandbox
//! and deadline, at the time the real decision was made, with placeholder
//! tokens, and compares. The request has been answered by then: a shadow
//! that throws or loops costs its own thread at most its deadline, never
//! a response. Disagreements are counted
//! (`mcp_oauth_proxy_policy_shadow_disagreements_total{route,kind}`) and logged
//! (at most `LOG_PER_MINUTE` lines a minute); failures are counted
//! (`mcp_oauth_proxy_policy_shadow_errors_total`). The file is watched and
//! reloaded as the enforced policy is, keeping its last good version.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::observer::{Observed, ObserverThread, ObserverWork};
use super::replay::{compare, run_candidate, Difference};
use super::PolicyEngine;
use crate::metrics::labels::ObserverQueue;
use crate::metrics::RouteMetrics;

/// How many decisions may wait for the shadow.
const QUEUE: usize = 1024;
/// Disagreement and error log lines per minute, per route.
const LOG_PER_MINUTE: u32 = 10;

/// A route's shadow policy: its engine and the queue to its thread.
pub(crate) struct Shadow {
    engine: Arc<PolicyEngine>,
    thread: Option<ObserverThread>,
}

impl Shadow {
    /// Starts the shadow thread for `engine` (the compiled candidate).
    pub(crate) fn start(engine: Arc<PolicyEngine>, metrics: RouteMetrics) -> Shadow {
        let worker = Worker {
            engine: engine.clone(),
            metrics: metrics.clone(),
            limiter: LogLimiter::new(LOG_PER_MINUTE),
        };
        let thread = ObserverThread::spawn(ObserverQueue::Shadow, QUEUE, metrics, worker)
            .map_err(|e| tracing::error!(target: "policy", error = %e, "the shadow policy's thread could not start; it does not run"))
            .ok();
        Shadow { engine, thread }
    }

    /// The candidate's engine.
    pub(crate) fn engine(&self) -> &Arc<PolicyEngine> {
        &self.engine
    }

    /// Queues a decision for the shadow; dropped and counted when full.
    pub(crate) fn offer(&self, observed: Arc<Observed>) {
        if let Some(thread) = &self.thread {
            thread.offer(observed);
        }
    }
}

struct Worker {
    engine: Arc<PolicyEngine>,
    metrics: RouteMetrics,
    limiter: LogLimiter,
}

impl ObserverWork for Worker {
    /// Evaluates the candidate on one decision, counts and logs.
    fn observe(&mut self, o: &Observed) {
        let candidate = self.engine.current();
        let result = run_candidate(
            &self.engine,
            &candidate,
            o.time,
            o.user.clone(),
            o.request.clone(),
            o.id_token,
        );
        let sub = o
            .user
            .clone()
            .try_cast::<rhai::Map>()
            .and_then(|u| u.get("sub").map(|s| s.to_string()))
            .unwrap_or_default();
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(error) => {
                self.metrics.shadow_error();
                if self.limiter.allow() {
                    tracing::warn!(target: "policy", route = %o.route, shadow = %candidate.name, %sub, %error, "the shadow policy failed (not enforced)");
                }
                return;
            }
        };
        let differences = compare(&o.outcome, &outcome);
        let disagreements: Vec<_> = differences
            .iter()
            .filter_map(Difference::disagreement)
            .collect();
        for &kind in &disagreements {
            self.metrics.shadow_disagreement(kind);
        }
        let counted = !disagreements.is_empty();
        if counted && self.limiter.allow() {
            let request = super::replay::describe_request(&o.request);
            let what: Vec<String> = differences.iter().map(Difference::to_string).collect();
            tracing::info!(
                target: "policy",
                route = %o.route,
                shadow = %candidate.name,
                %sub,
                %request,
                disagreement = %what.join(", "),
                enforced = ?o.outcome.reason,
                candidate = ?outcome.reason,
                "the shadow policy disagrees (not enforced)"
            );
        }
    }
}

/// At most `per_minute` log lines a minute; the rest are counted in the
/// metrics only, and the next line says how many were left out.
struct LogLimiter {
    per_minute: u32,
    window: Instant,
    used: u32,
    skipped: u64,
}

impl LogLimiter {
    fn new(per_minute: u32) -> Self {
        LogLimiter {
            per_minute,
            window: Instant::now(),
            used: 0,
            skipped: 0,
        }
    }

    fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(60) {
            if self.skipped > 0 {
                tracing::info!(target: "policy", skipped = self.skipped, "shadow policy log lines left out in the last minute (the metrics count every one)");
            }
            self.window = Instant::now();
            self.used = 0;
            self.skipped = 0;
        }
        if self.used < self.per_minute {
            self.used += 1;
            true
        } else {
            self.skipped += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_limiter_allows_a_few_lines_a_minute() {
        let mut limiter = LogLimiter::new(3);
        let allowed = (0..10).filter(|_| limiter.allow()).count();
        assert_eq!(allowed, 3);
        assert_eq!(limiter.skipped, 7);
    }
}
