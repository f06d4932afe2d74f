//! Hot reload: the policy file is compiled again when it changes or on
//! SIGHUP; a new version replaces the old one atomically, and a version
//! that fails to compile leaves the last good one serving.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::compile::{compile_file, CompiledPolicy, PolicyError};
use super::PolicyEngine;
use crate::metrics::labels::ReloadResult;

/// Reload outcomes, for metrics and readiness.
#[derive(Default)]
pub struct ReloadCounters {
    /// Reloads that replaced the policy.
    pub succeeded: AtomicU64,
    /// Reloads that left the previous version serving.
    pub failed: AtomicU64,
    /// The last failure, while the previous version keeps serving.
    pub last_error: Mutex<Option<String>>,
}

/// What a file looked like when last read: its modified time and length.
pub(crate) type Fingerprint = (SystemTime, u64);

/// The file's fingerprint, or `None` when it cannot be read now.
pub(crate) fn file_fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl PolicyEngine {
    /// Reads and compiles the policy file again; on success the new version
    /// replaces the old one atomically, on failure the old one keeps serving.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let fingerprint = file_fingerprint(path);
        let outcome = match compile_file(&self.engine, path) {
            Ok(compiled) => {
                self.install(compiled);
                tracing::info!(target: "policy", path = %path.display(), "policy reloaded");
                Ok(())
            }
            Err(e) => {
                self.count_failure(&e);
                tracing::error!(target: "policy", error = %e, "policy reload failed; the previous version keeps serving");
                Err(e)
            }
        };
        self.remember(fingerprint);
        outcome
    }

    /// Makes a newly compiled version current and counts the success.
    fn install(&self, compiled: CompiledPolicy) {
        match self.current.write() {
            Ok(mut guard) => *guard = Arc::new(compiled),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(compiled),
        }
        self.reloads.succeeded.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .route(&self.route)
            .policy_reload(ReloadResult::Success);
        if let Ok(mut e) = self.reloads.last_error.lock() {
            *e = None;
        }
    }

    /// Counts a failed reload and keeps its error for readiness.
    fn count_failure(&self, error: &PolicyError) {
        self.reloads.failed.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .route(&self.route)
            .policy_reload(ReloadResult::Failure);
        if let Ok(mut last) = self.reloads.last_error.lock() {
            *last = Some(error.to_string());
        }
    }

    fn remember(&self, fingerprint: Option<Fingerprint>) {
        if let Ok(mut f) = self.fingerprint.lock() {
            *f = fingerprint;
        }
    }

    /// Reloads when the file changed since it was last read.
    pub(crate) fn reload_if_changed(&self) {
        let Some(path) = &self.path else { return };
        let now = file_fingerprint(path);
        let before = self.fingerprint.lock().ok().and_then(|f| *f);
        if now.is_some() && now != before {
            let _ = self.reload();
        }
    }

    /// Watches the policy file (polling survives editors' atomic renames and
    /// Kubernetes' ConfigMap symlink swaps). Compiling happens on a blocking
    /// thread, never on the request path. SIGHUP is the server's (one
    /// listener reloads every route's policy: `reload_now`).
    pub(crate) fn spawn_watcher(self: &Arc<Self>, interval: Duration) {
        // The shadow policy is watched the same way, on its own.
        if let Some(shadow) = self.shadow() {
            shadow.spawn_watcher(interval);
        }
        if self.path.is_none() {
            return;
        }
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                let _ = tokio::task::spawn_blocking(move || engine.reload_if_changed()).await;
            }
        });
    }

    /// Reloads the policy file (and the shadow policy's) now (SIGHUP), on a
    /// blocking thread; `false` when there is neither (the built-in policy
    /// never changes).
    pub fn reload_now(self: &Arc<Self>) -> bool {
        let shadow = self.shadow().is_some_and(|shadow| shadow.reload_now());
        if self.path.is_none() {
            return shadow;
        }
        let engine = self.clone();
        tokio::task::spawn_blocking(move || {
            tracing::info!(target: "policy", route = engine.route(), "SIGHUP: reloading the policy");
            let _ = engine.reload();
        });
        true
    }
}
