//! Operator policies in Rhai: who may use the MCP server, and which identity
//! headers the downstream receives.
//!
//! Scripts are compiled once, off the request path, by a sandboxed engine:
//! no modules, no `eval`, limits on operations, call depth, expression depth,
//! string, array and map sizes, and a wall-clock deadline. Any error denies.
//! Rust checks every header a script returns.

use std::cell::Cell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue, StatusCode};
use rhai::{CallFnOptions, Dynamic, Engine, EvalAltResult, Map, Position, Scope, AST};

use crate::store::UpstreamTokens;

pub mod cases;
pub mod filter;
pub mod header_rules;
pub mod helpers;
pub mod jsonrpc;
pub mod layer;
pub mod login;

use header_rules::{HeaderNameRules, HeaderRefusal, PolicyValue};

/// The policy that runs when `policy.path` is not set.
pub const DEFAULT_POLICY: &str = include_str!("../../policies/default.rhai");
const DEFAULT_POLICY_NAME: &str = "policies/default.rhai (built in)";

/// Sandbox limits.
const MAX_OPERATIONS: u64 = 200_000;
const MAX_CALL_LEVELS: usize = 32;
const MAX_EXPR_DEPTH: usize = 64;
const MAX_FN_EXPR_DEPTH: usize = 32;
const MAX_STRING_SIZE: usize = 64 * 1024;
const MAX_ARRAY_SIZE: usize = 10_000;
const MAX_MAP_SIZE: usize = 10_000;
const MAX_VARIABLES: usize = 1_000;
/// A policy call that runs longer than this is stopped and denies.
pub const DEADLINE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error, Clone)]
pub enum PolicyError {
    #[error("{path}: cannot read the policy: {message}")]
    Read { path: String, message: String },
    #[error("{location}: {message}")]
    Compile { location: String, message: String },
    #[error("{name}: the policy has no `fn authorize(user, request)`")]
    NoAuthorize { name: String },
}

/// What the policy decided for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow {
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    Deny {
        status: StatusCode,
        reason: String,
    },
}

/// The script's result types, opaque to scripts.
#[derive(Debug, Clone)]
enum ScriptDecision {
    Allow(Map),
    Deny(i64, String),
}

/// A reference to one of the provider's tokens; the value never enters the
/// script, the proxy substitutes it when it builds the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamSecret {
    AccessToken,
    Bearer,
    IdToken,
}

/// A compiled policy and what was learned from its source.
pub struct CompiledPolicy {
    pub name: String,
    ast: AST,
    /// Normalised header names this policy may set: client headers with
    /// these names never reach the downstream.
    may_set: HashSet<String>,
    pub has_login: bool,
    /// Distinguishes versions of the policy (each compile gets a new one).
    pub version: u64,
    /// The decision depends on the user alone: `authorize` never reads its
    /// `request` argument and calls nothing time-dependent or side-effecting,
    /// so it can be computed once per session.
    pub per_user_only: bool,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The engine and the current policy, swapped atomically on reload.
pub struct PolicyEngine {
    engine: Engine,
    current: RwLock<Arc<CompiledPolicy>>,
    path: Option<PathBuf>,
    extra_identity_headers: Vec<String>,
    /// What the file looked like when last read (modified time, length).
    fingerprint: std::sync::Mutex<Option<(std::time::SystemTime, u64)>>,
    pub reloads: ReloadCounters,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// `policy.max_header_bytes`: the longest value a policy may set.
    max_header_bytes: usize,
}

/// Reload outcomes, for metrics and readiness.
#[derive(Default)]
pub struct ReloadCounters {
    pub succeeded: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// The last failure, while the previous version keeps serving.
    pub last_error: std::sync::Mutex<Option<String>>,
}

thread_local! {
    static CALL_DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Normalises a header name the way invariant 6 compares them.
pub fn normalise_header(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('_', "-")
}

pub fn sandboxed_engine() -> Engine {
    let mut engine = Engine::new_raw();
    use rhai::packages::Package;
    rhai::packages::StandardPackage::new().register_into_engine(&mut engine);
    engine
        .set_max_operations(MAX_OPERATIONS)
        .set_max_call_levels(MAX_CALL_LEVELS)
        .set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FN_EXPR_DEPTH)
        .set_max_string_size(MAX_STRING_SIZE)
        .set_max_array_size(MAX_ARRAY_SIZE)
        .set_max_map_size(MAX_MAP_SIZE)
        .set_max_variables(MAX_VARIABLES)
        .set_max_functions(256)
        .set_strict_variables(true);
    engine.disable_symbol("eval");
    // Printing goes to the log, never to stdout.
    engine.on_print(|text| tracing::info!(target: "policy", "{text}"));
    engine.on_debug(|text, source, pos| tracing::debug!(target: "policy", source = source.unwrap_or_default(), %pos, "{text}"));
    engine.on_progress(|operations| {
        if operations % 512 != 0 {
            return None;
        }
        let expired =
            CALL_DEADLINE.with(|d| d.get().is_some_and(|deadline| Instant::now() > deadline));
        expired.then(|| Dynamic::from("policy deadline exceeded"))
    });
    register_api(&mut engine);
    engine
}

fn register_api(engine: &mut Engine) {
    register_helpers(engine);
    engine
        .register_type_with_name::<ScriptDecision>("Decision")
        .register_fn("to_string", |d: &mut ScriptDecision| format!("{d:?}"))
        .register_fn("allow", || ScriptDecision::Allow(Map::new()))
        .register_fn("allow", ScriptDecision::Allow)
        .register_fn("deny", |status: i64, reason: &str| {
            ScriptDecision::Deny(status, reason.to_string())
        })
        .register_fn("deny", |reason: &str| {
            ScriptDecision::Deny(403, reason.to_string())
        });
    engine
        .register_type_with_name::<UpstreamSecret>("UpstreamSecret")
        .register_fn("to_string", |s: &mut UpstreamSecret| {
            format!("[upstream {s:?}]")
        })
        .register_fn("upstream_access_token", || UpstreamSecret::AccessToken)
        .register_fn("upstream_bearer", || UpstreamSecret::Bearer)
        .register_fn("upstream_id_token", || UpstreamSecret::IdToken);
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
            fingerprint: std::sync::Mutex::new(path.and_then(file_fingerprint)),
            path: path.map(Path::to_path_buf),
            extra_identity_headers: extra_identity_headers
                .iter()
                .map(|h| normalise_header(h))
                .collect(),
            reloads: ReloadCounters::default(),
            metrics: None,
            max_header_bytes: header_rules::DEFAULT_MAX_HEADER_BYTES,
        })
    }

    /// Bounds each header value a policy sets (`policy.max_header_bytes`).
    pub fn with_max_header_bytes(mut self, limit: usize) -> Self {
        self.max_header_bytes = limit;
        self
    }

    fn header_name_rules<'a>(&'a self, policy: &'a CompiledPolicy) -> HeaderNameRules<'a> {
        HeaderNameRules {
            declared: &policy.may_set,
            configured: &self.extra_identity_headers,
        }
    }

    /// Counts reloads in the metrics too.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Reads and compiles the policy file again; on success the new version
    /// replaces the old one atomically, on failure the old one keeps serving.
    pub fn reload(&self) -> Result<(), PolicyError> {
        use std::sync::atomic::Ordering;
        let Some(path) = &self.path else {
            return Ok(());
        };
        let fingerprint = file_fingerprint(path);
        match compile_file(&self.engine, path) {
            Ok(compiled) => {
                match self.current.write() {
                    Ok(mut guard) => *guard = Arc::new(compiled),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(compiled),
                }
                self.reloads.succeeded.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.policy_reloads.with_label_values(&["success"]).inc();
                }
                if let Ok(mut e) = self.reloads.last_error.lock() {
                    *e = None;
                }
                tracing::info!(target: "policy", path = %path.display(), "policy reloaded");
                Ok(())
            }
            Err(e) => {
                self.reloads.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.policy_reloads.with_label_values(&["failure"]).inc();
                }
                if let Ok(mut last) = self.reloads.last_error.lock() {
                    *last = Some(e.to_string());
                }
                tracing::error!(target: "policy", error = %e, "policy reload failed; the previous version keeps serving");
                Err(e)
            }
        }
        .inspect(|_| self.remember(fingerprint))
        .inspect_err(|_| self.remember(fingerprint))
    }

    fn remember(&self, fingerprint: Option<(std::time::SystemTime, u64)>) {
        if let Ok(mut f) = self.fingerprint.lock() {
            *f = fingerprint;
        }
    }

    /// Reloads when the file changed since it was last read.
    pub fn reload_if_changed(&self) {
        let Some(path) = &self.path else { return };
        let now = file_fingerprint(path);
        let before = self.fingerprint.lock().ok().and_then(|f| *f);
        if now.is_some() && now != before {
            let _ = self.reload();
        }
    }

    /// Watches the policy file (polling survives editors' atomic renames and
    /// Kubernetes' ConfigMap symlink swaps) and reloads on SIGHUP. Compiling
    /// happens on a blocking thread, never on the request path.
    pub fn spawn_watcher(self: &Arc<Self>, interval: Duration) {
        if self.path.is_none() {
            return;
        }
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            #[cfg(unix)]
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let forced = tokio::select! {
                    _ = ticker.tick() => false,
                    Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                #[cfg(not(unix))]
                let forced = {
                    ticker.tick().await;
                    false
                };
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                let _ = tokio::task::spawn_blocking(move || {
                    if forced {
                        tracing::info!(target: "policy", "SIGHUP: reloading the policy");
                        let _ = engine.reload();
                    } else {
                        engine.reload_if_changed();
                    }
                })
                .await;
            }
        });
    }

    pub fn current(&self) -> Arc<CompiledPolicy> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether a client header must be removed because a policy may set it.
    pub fn is_identity_header(&self, policy: &CompiledPolicy, name: &str) -> bool {
        let n = normalise_header(name);
        n == "authorization"
            || n.starts_with("x-user-")
            || policy.may_set.contains(&n)
            || self.extra_identity_headers.contains(&n)
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
        let result = self.call(policy, "authorize", (user, request));
        let decision = match result {
            Ok(value) => interpret(
                value,
                tokens,
                &self.header_name_rules(policy),
                self.max_header_bytes,
            ),
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

    /// Runs `login(user)` when the policy defines it: a denial ends the
    /// login before any token exists.
    pub fn login(&self, policy: &CompiledPolicy, user: Dynamic) -> Decision {
        if !policy.has_login {
            return Decision::Allow {
                headers: Vec::new(),
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
        CALL_DEADLINE.with(|d| d.set(Some(Instant::now() + DEADLINE)));
        let mut scope = Scope::new();
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(false);
        let result = self.engine.call_fn_with_options::<Dynamic>(
            options,
            &mut scope,
            &policy.ast,
            function,
            args,
        );
        CALL_DEADLINE.with(|d| d.set(None));
        result
    }
}

fn compile_file(engine: &Engine, path: &Path) -> Result<CompiledPolicy, PolicyError> {
    let source = std::fs::read_to_string(path).map_err(|e| PolicyError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    compile(engine, &path.display().to_string(), &source)
}

/// Compiles a script; errors carry `name:line:col`.
pub fn compile(engine: &Engine, name: &str, source: &str) -> Result<CompiledPolicy, PolicyError> {
    let mut ast = engine.compile(source).map_err(|e| PolicyError::Compile {
        location: location(name, e.position()),
        message: e.err_type().to_string(),
    })?;
    ast.set_source(name);
    let has_authorize = ast
        .iter_functions()
        .any(|f| f.name == "authorize" && f.params.len() == 2);
    if !has_authorize {
        return Err(PolicyError::NoAuthorize {
            name: name.to_string(),
        });
    }
    check_allow_literals(&ast, name)?;
    let has_login = ast
        .iter_functions()
        .any(|f| f.name == "login" && f.params.len() == 1);
    let request_param = ast
        .iter_functions()
        .find(|f| f.name == "authorize" && f.params.len() == 2)
        .map(|f| f.params[1].to_string())
        .unwrap_or_default();
    static VERSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Ok(CompiledPolicy {
        version: VERSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        per_user_only: depends_on_user_only(source, &request_param),
        name: name.to_string(),
        may_set: header_like_literals(source),
        ast,
        has_login,
    })
}

/// Refuses, at compile time, a header name written in an `allow(#{ ... })`
/// literal that no decision could send (reserved, `_`, not a name, or twice),
/// so `check` and the reload log point at the line. Names in maps built
/// elsewhere are refused when the policy runs.
fn check_allow_literals(ast: &AST, name: &str) -> Result<(), PolicyError> {
    use rhai::{ASTNode, Expr, Stmt};
    let mut problem = None;
    ast.walk(&mut |path: &[ASTNode]| {
        let call = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, _))) => call,
            Some(ASTNode::Stmt(Stmt::FnCall(call, _))) => call,
            _ => return true,
        };
        if call.name != "allow" {
            return true;
        }
        let keys: Vec<(String, Position)> = match call.args.first() {
            Some(Expr::Map(map, _)) => map
                .0
                .iter()
                .map(|(key, _)| (key.name.to_string(), key.pos))
                .collect(),
            Some(Expr::DynamicConstant(value, pos)) => value
                .read_lock::<Map>()
                .map(|m| m.keys().map(|k| (k.to_string(), *pos)).collect())
                .unwrap_or_default(),
            _ => return true,
        };
        let mut seen = HashSet::new();
        for (key, pos) in keys {
            let refusal = match header_rules::check_fixed_name(&key) {
                Ok(header) if !seen.insert(header.clone()) => HeaderRefusal::Duplicate(key),
                Ok(_) => continue,
                Err(refusal) => refusal,
            };
            problem = Some((refusal, pos));
            return false;
        }
        true
    });
    match problem {
        Some((refusal, pos)) => Err(PolicyError::Compile {
            location: location(name, pos),
            message: refusal.to_string(),
        }),
        None => Ok(()),
    }
}

/// Conservatively true only when the request parameter's name appears in
/// the source exactly once (its declaration) and nothing time-dependent or
/// side-effecting is called. Any doubt (the name used elsewhere, in a string,
/// by another function) keeps evaluating per request.
fn depends_on_user_only(source: &str, request_param: &str) -> bool {
    if request_param.is_empty() {
        return false;
    }
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = source.as_bytes();
    let mut uses = 0;
    let mut start = 0;
    while let Some(found) = source[start..].find(request_param) {
        let at = start + found;
        let end = at + request_param.len();
        let bounded =
            (at == 0 || !is_word(bytes[at - 1])) && (end == bytes.len() || !is_word(bytes[end]));
        if bounded {
            uses += 1;
        }
        start = end;
    }
    const IMPURE: [&str; 7] = [
        "now(",
        "utc_hour(",
        "utc_weekday(",
        "log_",
        "print(",
        "debug(",
        "timestamp(",
    ];
    uses == 1 && !IMPURE.iter().any(|f| source.contains(f))
}

fn location(name: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(line), Some(col)) => format!("{name}:{line}:{col}"),
        (Some(line), None) => format!("{name}:{line}"),
        _ => name.to_string(),
    }
}

/// Every quoted string and map key in the source that could be a header
/// name, normalised. A policy can only set a header it names, so these are
/// the client headers to remove; extra names only remove more.
fn header_like_literals(source: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    let mut add = |candidate: &str| {
        let n = normalise_header(candidate);
        if !n.is_empty()
            && n.len() <= 64
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !header_rules::is_reserved(&n)
            && !matches!(
                n.as_str(),
                "accept" | "user-agent" | "origin" | "x-request-id"
            )
        {
            names.insert(n);
        }
    };
    let bytes = source.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'"' {
            let start = i + 1;
            let mut j = start;
            while j < bytes.len() && bytes[j] != b'"' {
                if bytes[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            if let Some(text) = source.get(start..j.min(bytes.len())) {
                add(text);
            }
            i = j + 1;
        } else {
            i += 1;
        }
    }
    // Unquoted map keys: `#{ x_user_team: ... }`.
    for part in source.split(['{', ',', '\n']) {
        if let Some((key, _)) = part.split_once(':') {
            let key = key.trim();
            if key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                add(key);
            }
        }
    }
    names
}

/// Logging, time, regex, claim, email and URI helpers (policies/README.md
/// documents them).
fn register_helpers(engine: &mut Engine) {
    use rhai::NativeCallContext;
    engine
        .register_fn("log_info", |ctx: NativeCallContext, message: &str| {
            tracing::info!(target: "policy", script = ctx.call_source().unwrap_or_default(), "{message}")
        })
        .register_fn("log_warn", |ctx: NativeCallContext, message: &str| {
            tracing::warn!(target: "policy", script = ctx.call_source().unwrap_or_default(), "{message}")
        })
        .register_fn("log_debug", |ctx: NativeCallContext, message: &str| {
            tracing::debug!(target: "policy", script = ctx.call_source().unwrap_or_default(), "{message}")
        })
        .register_fn("now", crate::now_unix)
        .register_fn("utc_hour", || crate::now_unix().rem_euclid(86_400) / 3600)
        // 0 = Monday … 6 = Sunday (1970-01-01 was a Thursday).
        .register_fn("utc_weekday", || (crate::now_unix().div_euclid(86_400) + 3).rem_euclid(7))
        .register_fn("matches", |text: &str, pattern: &str| -> Result<bool, Box<EvalAltResult>> {
            cached_regex(pattern).map(|re| re.is_match(text))
        })
        .register_fn("email_domain", helpers::email_domain)
        .register_fn("in_any_group", |user: &mut rhai::Map, groups: rhai::Array| {
            helpers::in_any_group(user, &groups)
        })
        .register_fn("uri_normalise", |uri: &str| -> Dynamic {
            helpers::normalise_uri(uri).map(Dynamic::from).unwrap_or(Dynamic::UNIT)
        })
        .register_fn("uri_within", |uri: &str, prefix: &str| -> Result<bool, Box<EvalAltResult>> {
            helpers::uri_within(uri, prefix).map_err(|e| e.into())
        })
        .register_fn("claim", |user: rhai::Map, path: &str, default: Dynamic| claim(&user, path, default))
        .register_fn("claim", |user: rhai::Map, path: &str| claim(&user, path, Dynamic::UNIT));
}

/// `user.claims` at a dotted path ("realm_access.roles"), or `default`.
fn claim(user: &rhai::Map, path: &str, default: Dynamic) -> Dynamic {
    let mut current = match user.get("claims") {
        Some(c) => c.clone(),
        None => return default,
    };
    for part in path.split('.') {
        let next = current
            .read_lock::<rhai::Map>()
            .and_then(|m| m.get(part).cloned());
        match next {
            Some(v) => current = v,
            None => return default,
        }
    }
    if current.is_unit() {
        default
    } else {
        current
    }
}

/// Patterns compile once; a policy naming many distinct patterns is bounded.
fn cached_regex(pattern: &str) -> Result<Arc<regex::Regex>, Box<EvalAltResult>> {
    static CACHE: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, Arc<regex::Regex>>>,
    > = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(re) = cache.lock().ok().and_then(|c| c.get(pattern).cloned()) {
        return Ok(re);
    }
    let re = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map(Arc::new)
        .map_err(|e| {
            Box::new(EvalAltResult::from(format!(
                "invalid regex `{pattern}`: {e}"
            )))
        })?;
    if let Ok(mut c) = cache.lock() {
        if c.len() < 1024 {
            c.insert(pattern.to_string(), re.clone());
        }
    }
    Ok(re)
}

fn file_fingerprint(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The policy's view of a user.
pub struct UserFacts<'a> {
    pub sub: &'a str,
    pub email: Option<&'a str>,
    pub claims: &'a serde_json::Map<String, serde_json::Value>,
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub client_name: Option<&'a str>,
}

/// Builds the script's `user` map. Claims are data: strings stay strings,
/// whatever they contain.
pub fn user_value(facts: &UserFacts<'_>) -> Dynamic {
    use serde_json::Value;
    let claims = facts.claims;
    let text = |key: &str| {
        claims
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let groups: rhai::Array = match claims.get("groups") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|g| match g {
                Value::String(s) => Some(Dynamic::from(s.clone())),
                Value::Number(n) => Some(Dynamic::from(n.to_string())),
                _ => None,
            })
            .collect(),
        Some(Value::String(s)) => s
            .split([',', ' '])
            .filter(|g| !g.is_empty())
            .map(|g| Dynamic::from(g.to_string()))
            .collect(),
        _ => rhai::Array::new(),
    };
    let name = [text("name"), text("preferred_username"), text("email")]
        .into_iter()
        .find(|n| !n.is_empty())
        .unwrap_or_default();
    let mut user = rhai::Map::new();
    user.insert("sub".into(), facts.sub.to_string().into());
    user.insert(
        "email".into(),
        facts.email.unwrap_or_default().to_string().into(),
    );
    user.insert("name".into(), name.into());
    user.insert("groups".into(), Dynamic::from_array(groups));
    user.insert(
        "claims".into(),
        rhai::serde::to_dynamic(claims).unwrap_or_else(|_| Dynamic::from_map(rhai::Map::new())),
    );
    user.insert("issuer".into(), facts.issuer.to_string().into());
    user.insert("client_id".into(), facts.client_id.to_string().into());
    user.insert(
        "client_name".into(),
        facts.client_name.unwrap_or_default().to_string().into(),
    );
    Dynamic::from_map(user)
}

/// Turns what a script returned into a checked decision.
fn interpret(
    value: Dynamic,
    tokens: &UpstreamTokens,
    names: &HeaderNameRules<'_>,
    max_header_bytes: usize,
) -> Decision {
    let deny = |reason: String| Decision::Deny {
        status: StatusCode::FORBIDDEN,
        reason,
    };
    let Some(decision) = value.try_cast::<ScriptDecision>() else {
        tracing::warn!(target: "policy", "authorize() must return allow(...) or deny(...); denying");
        return deny("access denied by policy (no decision)".into());
    };
    match decision {
        ScriptDecision::Deny(status, reason) => {
            let status = u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::FORBIDDEN);
            Decision::Deny { status, reason }
        }
        ScriptDecision::Allow(map) => match headers_from(map, tokens, names, max_header_bytes) {
            Ok(headers) => Decision::Allow { headers },
            Err(problem) => {
                tracing::warn!(target: "policy", %problem, "the policy set a header the proxy refuses; denying");
                // The reason names the header, never its value.
                deny(format!("access denied by policy: {problem}"))
            }
        },
    }
}

/// Every header of an `allow(...)`, checked by the rules in `header_rules`;
/// the first refusal refuses them all.
fn headers_from(
    map: Map,
    tokens: &UpstreamTokens,
    names: &HeaderNameRules<'_>,
    max_header_bytes: usize,
) -> Result<Vec<(HeaderName, HeaderValue)>, HeaderRefusal> {
    let mut headers = Vec::with_capacity(map.len());
    let mut seen = HashSet::with_capacity(map.len());
    for (key, value) in map {
        let name = names.check(&key, &mut seen)?;
        if value.is_unit() {
            continue;
        }
        let value = if let Some(secret) = value.clone().try_cast::<UpstreamSecret>() {
            let token = match secret {
                UpstreamSecret::AccessToken => tokens.access_token.clone(),
                UpstreamSecret::Bearer => format!("Bearer {}", tokens.access_token),
                UpstreamSecret::IdToken => match &tokens.id_token {
                    Some(t) => t.clone(),
                    None => continue,
                },
            };
            header_rules::token_header_value(&key, &token)?
        } else if value.is_array() {
            let items = value
                .into_array()
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(index, item)| scalar_text(&key, Some(index), item))
                .collect::<Result<Vec<_>, _>>()?;
            header_rules::identity_header_value(&key, PolicyValue::List(&items), max_header_bytes)?
        } else {
            let text = scalar_text(&key, None, &value)?;
            header_rules::identity_header_value(&key, PolicyValue::One(&text), max_header_bytes)?
        };
        headers.push((name, value));
    }
    Ok(headers)
}

fn scalar_text(
    header: &str,
    item: Option<usize>,
    value: &Dynamic,
) -> Result<String, HeaderRefusal> {
    if value.is_string() || value.is_int() || value.is_bool() || value.is_char() || value.is_float()
    {
        Ok(value.to_string())
    } else {
        Err(HeaderRefusal::UnsupportedType {
            header: header.to_string(),
            item,
            type_name: value.type_name().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> UpstreamTokens {
        UpstreamTokens {
            access_token: "up-at".into(),
            id_token: Some("up-id".into()),
            ..Default::default()
        }
    }

    fn run(source: &str, user: Dynamic) -> Decision {
        let engine = PolicyEngine {
            engine: sandboxed_engine(),
            current: RwLock::new(Arc::new(
                compile(&sandboxed_engine(), "t.rhai", source).unwrap(),
            )),
            path: None,
            extra_identity_headers: vec![],
            fingerprint: std::sync::Mutex::new(None),
            reloads: ReloadCounters::default(),
            metrics: None,
            max_header_bytes: header_rules::DEFAULT_MAX_HEADER_BYTES,
        };
        let policy = engine.current();
        engine.authorize(&policy, user, Dynamic::from_map(Map::new()), &tokens())
    }

    fn user() -> Dynamic {
        let mut m = Map::new();
        m.insert("email".into(), "a@example.com".into());
        m.insert("name".into(), "A".into());
        m.insert("sub".into(), "s1".into());
        m.insert(
            "groups".into(),
            Dynamic::from_array(vec!["eng".into(), "ops".into()]),
        );
        Dynamic::from_map(m)
    }

    #[test]
    fn default_policy_reproduces_the_original_headers() {
        let Decision::Allow { headers } = run(DEFAULT_POLICY, user()) else {
            panic!()
        };
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(get("x-user-email").as_deref(), Some("a@example.com"));
        assert_eq!(get("x-user-groups").as_deref(), Some("eng,ops"));
        assert_eq!(get("authorization").as_deref(), Some("Bearer up-at"));
    }

    fn user_with(name: &str, groups: &[&str]) -> Dynamic {
        let mut m = user().cast::<Map>();
        m.insert("name".into(), name.into());
        m.insert(
            "groups".into(),
            Dynamic::from_array(
                groups
                    .iter()
                    .map(|g| Dynamic::from(g.to_string()))
                    .collect(),
            ),
        );
        Dynamic::from_map(m)
    }

    fn header(decision: &Decision, name: &str) -> Option<String> {
        let Decision::Allow { headers } = decision else {
            panic!("expected allow, got {decision:?}")
        };
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_str().unwrap().to_string())
    }

    #[test]
    fn a_group_containing_a_comma_reaches_the_downstream_as_one_group() {
        let decision = run(DEFAULT_POLICY, user_with("A", &["eng,admins", "users"]));
        let groups = header(&decision, "x-user-groups").unwrap();
        assert_eq!(groups, "eng%2Cadmins,users");
        assert_eq!(groups.split(',').count(), 2);
    }

    #[test]
    fn non_ascii_identities_are_sent_percent_encoded_not_refused() {
        let decision = run(DEFAULT_POLICY, user_with("José", &["équipe"]));
        assert_eq!(
            header(&decision, "x-user-name").as_deref(),
            Some("Jos%C3%A9")
        );
        assert_eq!(
            header(&decision, "x-user-groups").as_deref(),
            Some("%C3%A9quipe")
        );
    }

    #[test]
    fn a_control_character_in_any_identity_value_denies_naming_the_header() {
        for (name, groups, header) in [
            ("A\r\nX-User-Groups: admins", vec!["eng"], "X-User-Name"),
            ("A", vec!["eng", "admins\0"], "X-User-Groups"),
            ("A\tB", vec![], "X-User-Name"),
        ] {
            let decision = run(DEFAULT_POLICY, user_with(name, &groups));
            let Decision::Deny { status, reason } = decision else {
                panic!("{name:?} {groups:?}: {decision:?}")
            };
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(reason.contains(header), "{reason}");
            assert!(
                !reason.contains("admins"),
                "the reason must not echo the value: {reason}"
            );
        }
    }

    #[test]
    fn invariant_6_a_policy_sets_only_unreserved_headers_the_proxy_strips_from_clients_once() {
        // Maps built at run time escape the compile-time check; the decision
        // refuses them.
        for set in [
            "h[\"Transfer_Encoding\"] = \"chunked\";",
            "h[\"Content_Length\"] = \"0\";",
            "h.x_user_email = \"root@example.com\";",
            "h[\"Expect\"] = \"100-continue\";",
            "h[\"Forwarded\"] = \"for=1.2.3.4\";",
            "h[\"Origin\"] = \"https://evil.example\";",
            "h[\"Sec-Fetch-Site\"] = \"same-origin\";",
            "h[\"X-User-Email\"] = \"a\"; h[\"x-user-email\"] = \"b\";",
            "h[\"X-\" + \"Team\"] = \"x\";",
        ] {
            let source = format!("fn authorize(user, request) {{ let h = #{{}}; {set} allow(h) }}");
            let decision = run(&source, user());
            assert!(
                matches!(decision, Decision::Deny { ref reason, .. } if reason.starts_with("access denied by policy: ")),
                "{source}: {decision:?}"
            );
        }
        let decision = run(
            "fn authorize(user, request) { let h = #{}; h[\"X-User-\" + \"Team\"] = \"x\"; allow(h) }",
            user(),
        );
        assert_eq!(header(&decision, "x-user-team").as_deref(), Some("x"));
    }

    #[test]
    fn invariant_9_identity_header_values_are_bounded_by_policy_max_header_bytes() {
        let many: Vec<String> = (0..2_000).map(|i| format!("group-{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let decision = run(DEFAULT_POLICY, user_with("A", &many));
        assert!(
            matches!(decision, Decision::Deny { ref reason, .. } if reason.contains("policy.max_header_bytes")),
            "{decision:?}"
        );
    }

    #[test]
    fn a_reserved_header_in_an_allow_literal_is_refused_at_compile_time() {
        for (source, line, named) in [
            ("fn authorize(user, request) {\n  allow(#{\n    \"Host\": \"evil\" })\n}", 2, "Host"),
            ("fn authorize(user, request) {\n  allow(#{ \"X-User-Email\": user.email,\n \"Transfer-Encoding\": \"chunked\" })\n}", 3, "Transfer-Encoding"),
            ("fn authorize(user, request) {\n  allow(#{ x_user_email: user.email })\n}", 2, "x_user_email"),
            ("fn login(user) { allow(#{ \"Mcp-Session-Id\": \"x\" }) }\nfn authorize(user, request) { allow() }", 1, "Mcp-Session-Id"),
            ("fn authorize(user, request) {\n  allow(#{ \"X-User-A\": 1, \"x-user-a\": 2 })\n}", 2, "x-user-a"),
        ] {
            let Err(err) = compile(&sandboxed_engine(), "p.rhai", source) else {
                panic!("{source} compiled");
            };
            let text = err.to_string();
            assert!(text.starts_with(&format!("p.rhai:{line}:")), "{source}: {text}");
            assert!(text.contains(named), "{text}");
        }
        // Reading such a header is fine; only setting it is refused.
        assert!(compile(
            &sandboxed_engine(),
            "p.rhai",
            "fn authorize(user, request) { if request.headers[\"host\"] == () { return deny(\"no host\"); } allow(#{ \"X-User-Email\": user.email }) }",
        )
        .is_ok());
    }

    #[test]
    fn compile_errors_carry_file_line_col() {
        let err = compile(
            &sandboxed_engine(),
            "p.rhai",
            "fn authorize(user, request) {\n  let x = ;\n}",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("p.rhai:2:"), "{err}");
        let err = compile(&sandboxed_engine(), "p.rhai", "fn other() { 1 }").unwrap_err();
        assert!(matches!(err, PolicyError::NoAuthorize { .. }));
    }

    #[test]
    fn errors_and_odd_results_deny() {
        for source in [
            "fn authorize(user, request) { throw \"no\" }",
            "fn authorize(user, request) { 42 }",
            "fn authorize(user, request) { user.missing.field }",
            "fn authorize(user, request) { loop { } }",
            "fn authorize(user, request) { let s = \"x\"; loop { s += s; } }",
            "fn f(n) { f(n + 1) } fn authorize(user, request) { f(0) }",
            "fn authorize(user, request) { allow(#{ \"Content-Length\": \"1\" }) }",
            "fn authorize(user, request) { allow(#{ \"X-Bad\": \"a\\r\\nInjected: 1\" }) }",
            "fn authorize(user, request) { allow(#{ \"bad header\": \"1\" }) }",
            "fn authorize(user, request) { allow(#{ \"X-Map\": #{ a: 1 } }) }",
            "fn authorize(user, request) { eval(\"allow()\") }",
        ] {
            let started = Instant::now();
            let decision = run_lenient(source);
            assert!(
                matches!(decision, Decision::Deny { .. }),
                "{source}: {decision:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{source} took {:?}",
                started.elapsed()
            );
        }
    }

    fn run_lenient(source: &str) -> Decision {
        match compile(&sandboxed_engine(), "t.rhai", source) {
            Ok(_) => run(source, user()),
            // Refused at compile time (e.g. `eval`) is just as closed.
            Err(e) => Decision::Deny {
                status: StatusCode::FORBIDDEN,
                reason: e.to_string(),
            },
        }
    }

    #[test]
    fn deny_carries_status_and_reason() {
        let d = run(
            "fn authorize(user, request) { deny(401, \"who?\") }",
            user(),
        );
        assert_eq!(
            d,
            Decision::Deny {
                status: StatusCode::UNAUTHORIZED,
                reason: "who?".into()
            }
        );
        let d = run("fn authorize(user, request) { deny(200, \"odd\") }", user());
        assert!(matches!(
            d,
            Decision::Deny {
                status: StatusCode::FORBIDDEN,
                ..
            }
        ));
    }

    #[test]
    fn only_request_independent_pure_policies_are_per_user() {
        let engine = sandboxed_engine();
        let per_user = |src: &str| compile(&engine, "t.rhai", src).unwrap().per_user_only;
        assert!(per_user(DEFAULT_POLICY));
        assert!(!per_user(include_str!("../../policies/per-tool.rhai")));
        assert!(!per_user(
            "fn authorize(u, r) { if r.mcp.tool == \"x\" { return deny(\"no\"); } allow() }"
        ));
        assert!(!per_user(
            "fn authorize(u, request) { log_info(\"hi\"); allow() }"
        ));
        assert!(!per_user(
            "fn authorize(u, request) { if utc_hour() > 18 { return deny(\"late\"); } allow() }"
        ));
        assert!(!per_user(
            "fn h(request) { request.path } fn authorize(u, request) { allow() }"
        ));
        assert!(per_user("fn authorize(user, req) { let requests = 1; allow(#{ \"X-User-Email\": user.email }) }"));
    }

    #[test]
    fn policies_declare_the_headers_clients_may_not_send() {
        let p = compile(
            &sandboxed_engine(),
            "t.rhai",
            "fn authorize(user, request) { let h = #{ \"X-Team\": 1, x_role: 2 }; allow(h) }",
        )
        .unwrap();
        assert!(p.may_set.contains("x-team"));
        assert!(p.may_set.contains("x-role"));
        assert!(!p.may_set.contains("content-type"));
    }
}
