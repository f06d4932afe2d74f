//! What a script sees: the `allow`/`deny` results, references to the
//! provider's tokens, the helpers policies/README.md documents, and the
//! `user` value.

use std::sync::Arc;

use rhai::{Dynamic, Engine, EvalAltResult, Map, NativeCallContext};

use super::decision::UpstreamSecret;
use super::helpers;
use crate::assertion::IdentityAssertionRef;

/// The script's result types, opaque to scripts.
#[derive(Debug, Clone)]
pub(crate) enum ScriptDecision {
    Allow(Map),
    Deny(i64, String),
}

/// Registers the whole script API on a (sandboxed) engine.
pub(crate) fn register(engine: &mut Engine) {
    register_helpers(engine);
    register_results(engine);
}

/// `allow(...)`, `deny(...)` and the `upstream_*()` token references.
fn register_results(engine: &mut Engine) {
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
    engine
        .register_type_with_name::<IdentityAssertionRef>("IdentityAssertion")
        .register_fn("to_string", |_: &mut IdentityAssertionRef| {
            "[identity assertion]".to_string()
        })
        .register_fn("identity_assertion", || IdentityAssertionRef);
}

/// Logging, time, regex, claim, email and URI helpers (policies/README.md
/// documents them).
fn register_helpers(engine: &mut Engine) {
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
        .register_fn("now", script_now)
        .register_fn("utc_hour", || script_now().rem_euclid(86_400) / 3600)
        // 0 = Monday … 6 = Sunday (1970-01-01 was a Thursday).
        .register_fn("utc_weekday", || (script_now().div_euclid(86_400) + 3).rem_euclid(7))
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

thread_local! {
    /// The time scripts on this thread see, when fixed (replay, shadow).
    static FIXED_NOW: std::cell::Cell<Option<i64>> = const { std::cell::Cell::new(None) };
}

/// What `now()`, `utc_hour()` and `utc_weekday()` read: the fixed time
/// of `with_fixed_clock`, or the system clock.
fn script_now() -> i64 {
    FIXED_NOW.with(|t| t.get()).unwrap_or_else(crate::now_unix)
}

/// Runs `f` with scripts on this thread seeing `unix_seconds` as now: a
/// replayed decision sees the time it was made at.
pub(crate) fn with_fixed_clock<T>(unix_seconds: i64, f: impl FnOnce() -> T) -> T {
    let before = FIXED_NOW.with(|t| t.replace(Some(unix_seconds)));
    let out = f();
    FIXED_NOW.with(|t| t.set(before));
    out
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

/// The policy's view of a user.
pub struct UserFacts<'a> {
    /// The provider's subject.
    pub sub: &'a str,
    /// The `email` claim, when the provider gave one.
    pub email: Option<&'a str>,
    /// The provider's claims about the user, as received.
    pub claims: &'a serde_json::Map<String, serde_json::Value>,
    /// The provider's issuer.
    pub issuer: &'a str,
    /// The OAuth client acting for the user.
    pub client_id: &'a str,
    /// The client's registered name, if any.
    pub client_name: Option<&'a str>,
}

/// Builds the script's `user` map. Claims are data: strings stay strings,
/// whatever they contain.
pub fn user_value(facts: &UserFacts<'_>) -> Dynamic {
    let claims = facts.claims;
    let name = ["name", "preferred_username", "email"]
        .into_iter()
        .map(|key| claim_text(claims, key))
        .find(|n| !n.is_empty())
        .unwrap_or_default();
    let mut user = rhai::Map::new();
    user.insert("sub".into(), facts.sub.to_string().into());
    user.insert(
        "email".into(),
        facts.email.unwrap_or_default().to_string().into(),
    );
    user.insert("name".into(), name.into());
    user.insert("groups".into(), Dynamic::from_array(groups(claims)));
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

/// A string claim, or "" when absent or not a string.
fn claim_text(claims: &serde_json::Map<String, serde_json::Value>, key: &str) -> String {
    claims
        .get(key)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The `groups` claim as a list: an array of strings or numbers, or one
/// string separated by commas or spaces.
fn groups(claims: &serde_json::Map<String, serde_json::Value>) -> rhai::Array {
    use serde_json::Value;
    match claims.get("groups") {
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
    }
}
