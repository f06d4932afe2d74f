//! The typed recorders: one method per event, each taking its label values
//! from the fixed sets in `labels`, and each a no-op when metrics are off
//! (`metrics.enabled = false`), so callers never check. The MCP path's
//! recorders are per route, in `route.rs`.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec};

use super::labels::*;
use super::Metrics;

impl Metrics {
    /// A store operation's time, and its failure.
    pub(crate) fn observe_store(&self, operation: StoreOperation, elapsed: Duration, ok: bool) {
        if !self.enabled {
            return;
        }
        let operation = operation.as_str();
        self.store_duration
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.store_errors.with_label_values(&[operation]).inc();
        }
    }

    /// A call to the identity provider: its time, and its failure.
    pub(crate) fn observe_upstream(
        &self,
        operation: UpstreamOperation,
        elapsed: Duration,
        ok: bool,
    ) {
        if !self.enabled {
            return;
        }
        let result = if ok { "success" } else { "error" };
        self.upstream_duration
            .with_label_values(&[operation.as_str(), result])
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.upstream_errors
                .with_label_values(&[operation.as_str()])
                .inc();
        }
    }

    fn count(&self, vec: &IntCounterVec, labels: &[&str]) {
        if self.enabled {
            vec.with_label_values(labels).inc();
        }
    }

    /// A dynamic client registration's result: `success` or the OAuth
    /// error code it was refused with (see [`labels::oauth_result`]).
    pub(crate) fn registration(&self, result: &'static str) {
        self.count(&self.registrations, &[result]);
    }

    /// An authorization request's outcome.
    pub(crate) fn authorization(&self, result: AuthorizationResult) {
        self.count(&self.authorizations, &[result.as_str()]);
    }

    /// A consent form's answer.
    pub(crate) fn consent(&self, decision: ConsentDecision) {
        self.count(&self.consents, &[decision.as_str()]);
    }

    /// A return from the identity provider.
    pub(crate) fn callback(&self, result: CallbackResult) {
        self.count(&self.callbacks, &[result.as_str()]);
    }

    /// A token endpoint request: its grant type (`other` when not one we
    /// serve) and `success` or the OAuth error code.
    pub(crate) fn token_grant(&self, grant_type: Option<GrantType>, result: &'static str) {
        let grant_type = grant_type.map_or("other", GrantType::as_str);
        self.count(&self.token_grants, &[grant_type, result]);
    }

    /// A revocation request: `success` or the OAuth error code.
    pub(crate) fn revocation(&self, result: &'static str) {
        self.count(&self.revocations, &[result]);
    }

    /// A token cache lookup.
    pub(crate) fn token_cache_request(&self, result: CacheResult) {
        if self.enabled {
            self.token_cache_results[result.index()]
                .get_or_init(|| {
                    self.token_cache_requests
                        .with_label_values(&[result.as_str()])
                })
                .inc();
        }
    }

    /// A token cache entry removed.
    pub(crate) fn token_cache_eviction(&self, cause: EvictionCause) {
        self.count(&self.token_cache_evictions, &[cause.as_str()]);
    }

    /// The token cache's size after an insert.
    pub(crate) fn token_cache_size(&self, entries: u64) {
        if self.enabled {
            self.token_cache_entries.set(entries as i64);
        }
    }

    /// A request refused by a `[limits]` table.
    pub(crate) fn rate_limited(&self, group: &str) {
        self.count(&self.rate_limited, &[group]);
    }

    /// An HTTP request by route template, method and status.
    pub(crate) fn http_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        if self.enabled {
            self.http_requests_series(route, method, status_class_index(status))
                .inc();
            self.http_duration_series(route, method)
                .observe(elapsed.as_secs_f64());
        }
    }

    /// `http_requests_total`'s series for a route template, method and
    /// status class (its place in `STATUS_CLASSES`).
    pub(crate) fn http_requests_series(
        &self,
        route: &str,
        method: &str,
        class: usize,
    ) -> IntCounter {
        self.http_requests
            .with_label_values(&[route, method, STATUS_CLASSES[class]])
    }

    /// `http_request_duration_seconds`' series for a route template and
    /// method.
    pub(crate) fn http_duration_series(&self, route: &str, method: &str) -> Histogram {
        self.http_duration.with_label_values(&[route, method])
    }
}
