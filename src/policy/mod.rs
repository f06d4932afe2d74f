//! Operator policies in Rhai: who may use the MCP server, and which identity
//! headers the downstream receives.
//!
//! Scripts are compiled once, off the request path (`compile`), by a
//! sandboxed engine (`sandbox`) that offers them the script API
//! (`script_api`). Any error denies. Rust checks every header a script
//! returns (`decision`, `header_rules`). The file is watched and reloaded
//! (`reload`); this module holds the engine that ties them together.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::http::{HeaderName, StatusCode};
use rhai::{Dynamic, Engine, EvalAltResult};

use crate::store::UpstreamTokens;

pub mod cases;
mod compile;
mod decision;
pub mod decision_log;
pub mod filter;
pub(crate) mod header_rules;
pub(crate) mod helpers;
pub(crate) mod jsonrpc;
pub mod layer;
pub(crate) mod login;
pub mod observer;
mod reload;
pub mod replay;
mod sandbox;
mod script_api;
pub(crate) mod shadow;
mod source_scan;
#[cfg(test)]
mod test_support;

pub use crate::session::PolicyHeaders;
pub(crate) use compile::{compile, DEFAULT_POLICY};
pub use compile::{CompiledPolicy, PolicyError};
pub use decision::Decision;
pub(crate) use header_rules::normalise_header;
pub use reload::ReloadCounters;
pub(crate) use sandbox::sandboxed_engine;
pub use script_api::{user_value, UserFacts};

use crate::session::StripRule;
use compile::{compile_file, DEFAULT_POLICY_NAME};
use decision::interpret;
use header_rules::HeaderNameRules;
use reload::{file_fingerprint, Fingerprint};

/// The engine and the current policy, swapped atomically on reload.
pub struct PolicyEngine {
    engine: Engine,
    current: RwLock<Arc<CompiledPolicy>>,
    path: Option<PathBuf>,
    extra_identity_headers: Vec<String>,
    /// What the file looked like when last read.
    fingerprint: Mutex<Option<Fingerprint>>,
    /// How reloads went, for `/readyz` and the admin listener.
    pub reloads: ReloadCounters,
    metrics: Arc<crate::metrics::Metrics>,
    /// `policy.max_header_bytes`: the longest value a policy may set.
    max_header_bytes: usize,
    /// The route this policy guards (`request.route`, metric labels).
    route: Arc<str>,
    /// The decision log and the shadow policy, when either is configured.
    observer: Option<Arc<observer::PolicyObserver>>,
}

impl PolicyEngine {
    /// Compiles the configured policy (or the built-in default).
    pub fn new(
        path: Option<&Path>,
        extra_identity_headers: &[String],
    ) -> Result<Self, PolicyError> {
        let engine = sandboxed_engine();
        let compiled = match path {
            Some(p) => compile_file(&engine, p)?,
            None => compile(&engine, DEFAULT_POLICY_NAME, DEFAULT_POLICY)?,
        };
        Ok(PolicyEngine {
            engine,
            current: RwLock::new(Arc::new(compiled)),
            fingerprint: Mutex::new(path.and_then(file_fingerprint)),
            path: path.map(Path::to_path_buf),
            extra_identity_headers: extra_identity_headers
                .iter()
                .map(|h| normalise_header(h))
                .collect(),
            reloads: ReloadCounters::default(),
            metrics: crate::metrics::Metrics::disabled(),
            max_header_bytes: header_rules::DEFAULT_MAX_HEADER_BYTES,
            route: crate::config::DEFAULT_ROUTE.into(),
            observer: None,
        })
    }

    /// Records decisions and evaluates a shadow policy as `settings` say
    /// (nothing when neither is configured). Call after
    /// `with_max_header_bytes`: the shadow policy gets the same bound.
    pub fn with_observers(
        mut self,
        settings: &crate::config::PolicyConfig,
        metrics: &Arc<crate::metrics::Metrics>,
    ) -> Result<Self, observer::ObserverError> {
        self.observer =
            observer::PolicyObserver::new(settings, &self.route, self.max_header_bytes, metrics)?
                .map(Arc::new);
        Ok(self)
    }

    /// Whether a decision log or a shadow policy observes this route.
    pub(crate) fn observes(&self) -> bool {
        self.observer.is_some()
    }

    /// What one request's decisions need to be recorded or shadowed;
    /// `None` (no allocation) when nothing observes this route.
    pub fn observe(&self, view: &layer::RequestView) -> Option<observer::Observation> {
        self.observer
            .as_ref()
            .map(|o| observer::Observation::new(o.clone(), view))
    }

    /// The shadow policy's engine, when one is configured.
    pub fn shadow(&self) -> Option<&Arc<PolicyEngine>> {
        self.observer.as_ref().and_then(|o| o.shadow_engine())
    }

    /// The policy of route `name` (the default route's otherwise).
    pub(crate) fn with_route(mut self, name: &str) -> Self {
        self.route = name.into();
        self
    }

    /// The route this policy guards.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Bounds each header value a policy sets (`policy.max_header_bytes`).
    pub(crate) fn with_max_header_bytes(mut self, limit: usize) -> Self {
        self.max_header_bytes = limit;
        self
    }

    fn header_name_rules<'a>(&'a self, policy: &'a CompiledPolicy) -> HeaderNameRules<'a> {
        HeaderNameRules {
            declared: &policy.may_set,
            configured: &self.extra_identity_headers,
        }
    }

    /// Counts reloads in the metrics too, under the route's name (looked
    /// up per reload: reloads are rare, and the route may be named after).
    pub(crate) fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The version serving now; a request keeps the one it started with.
    pub fn current(&self) -> Arc<CompiledPolicy> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Which client headers must be removed because a policy may set them:
    /// `Authorization`, `X-User-*`, what `policy` may set and
    /// `policy.identity_headers`. Built once per compiled version.
    pub(crate) fn strip_rule(&self, policy: &CompiledPolicy) -> StripRule {
        policy
            .strip
            .get_or_init(|| {
                // Not a hash set: every client header is looked up here
                // (SipHash of each name was 900 instructions a request).
                let names = header_rules::NamesByLength::new(
                    policy
                        .may_set
                        .iter()
                        .chain(&self.extra_identity_headers)
                        .cloned(),
                );
                Arc::new(move |name: &HeaderName| {
                    let n = crate::client_address::lenient_name(name);
                    n == "authorization"
                        || n == header_rules::IDENTITY_ASSERTION_HEADER
                        || n.starts_with("x-user-")
                        || names.contains(&n)
                })
            })
            .clone()
    }

    /// Runs `authorize(user, request)`; every failure denies.
    pub fn authorize(
        &self,
        policy: &CompiledPolicy,
        user: Dynamic,
        request: Dynamic,
        tokens: &UpstreamTokens,
    ) -> Decision {
        let started = Instant::now();
        let decision = match self.try_authorize(policy, user, request, tokens) {
            Ok(decision) => decision,
            Err(e) => {
                tracing::warn!(target: "policy", policy = %policy.name, error = %e, "policy failed; denying");
                Decision::Deny {
                    status: StatusCode::FORBIDDEN,
                    reason: "access denied by policy (policy error)".into(),
                }
            }
        };
        tracing::trace!(target: "policy", elapsed_us = started.elapsed().as_micros() as u64, "policy evaluated");
        decision
    }

    /// Runs `authorize(user, request)`; a script error is returned, not
    /// turned into a denial (the shadow and replay count it).
    pub(crate) fn try_authorize(
        &self,
        policy: &CompiledPolicy,
        user: Dynamic,
        request: Dynamic,
        tokens: &UpstreamTokens,
    ) -> Result<Decision, Box<EvalAltResult>> {
        let value = self.call(policy, "authorize", (user, request))?;
        Ok(interpret(
            value,
            tokens,
            &self.header_name_rules(policy),
            self.max_header_bytes,
        ))
    }

    /// Runs `login(user)` (allow when the policy has none); a script error
    /// is returned, not turned into a denial.
    pub(crate) fn try_login(
        &self,
        policy: &CompiledPolicy,
        user: Dynamic,
    ) -> Result<Decision, Box<EvalAltResult>> {
        if !policy.has_login {
            return Ok(Decision::Allow {
                headers: PolicyHeaders::default(),
            });
        }
        let value = self.call(policy, "login", (user,))?;
        Ok(interpret(
            value,
            &UpstreamTokens::default(),
            &self.header_name_rules(policy),
            self.max_header_bytes,
        ))
    }

    /// Runs `login(user)` when the policy defines it: a denial ends the
    /// login before any token exists.
    pub(crate) fn login(&self, policy: &CompiledPolicy, user: Dynamic) -> Decision {
        if !policy.has_login {
            return Decision::Allow {
                headers: PolicyHeaders::default(),
            };
        }
        match self.call(policy, "login", (user,)) {
            Ok(value) => interpret(
                value,
                &UpstreamTokens::default(),
                &self.header_name_rules(policy),
                self.max_header_bytes,
            ),
            Err(e) => {
                tracing::warn!(target: "policy", policy = %policy.name, error = %e, "login policy failed; denying");
                Decision::Deny {
                    status: StatusCode::FORBIDDEN,
                    reason: "sign-in denied by policy (policy error)".into(),
                }
            }
        }
    }

    fn call(
        &self,
        policy: &CompiledPolicy,
        function: &str,
        args: impl rhai::FuncArgs,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        sandbox::call_with_deadline(&self.engine, &policy.ast, function, args)
    }
}
