//! What the policy remembers with a cached session, so that a script runs
//! once per session and what its decision depends on.

use std::sync::{Mutex, OnceLock};

use rhai::Dynamic;

use super::McpCall;
use crate::policy::Decision;
use crate::session::Session;

/// What the policy keeps with a cached session: its view of the user,
/// built once; `authorize`'s decisions, for policies that decide on the
/// user alone (per version) or on the user and the call (per version and
/// call); and each route's `login()` verdict (per version) — so each
/// script runs once per session and what it decides on.
#[derive(Default)]
pub(super) struct SessionMemo {
    pub(super) user: OnceLock<Dynamic>,
    pub(super) decisions: Remembered<u64>,
    pub(super) call_decisions: Remembered<(u64, CallKey)>,
    pub(super) logins: Remembered<u64>,
}

/// Decisions by key, the oldest forgotten past `capacity`. Versions are
/// unique across routes, so one session used on several routes keeps one
/// entry per route.
pub(super) struct Remembered<K>(Mutex<Vec<(K, Decision)>>);

impl<K> Default for Remembered<K> {
    fn default() -> Self {
        Remembered(Mutex::new(Vec::new()))
    }
}

/// How many policy versions' decisions a session keeps.
pub(super) const REMEMBERED_VERSIONS: usize = 16;

/// How many calls' decisions a session keeps, over all versions. A client
/// uses a handful of tools; one that names a new one each time only costs
/// itself the script's runs, never memory beyond this bound.
pub(super) const REMEMBERED_CALLS: usize = 32;

impl<K> Remembered<K> {
    /// The decision for the key that `is_key` recognises, computed by
    /// `decide` (and remembered under `key()`) the first time.
    pub(super) fn get_or_insert_with(
        &self,
        capacity: usize,
        is_key: impl Fn(&K) -> bool,
        key: impl FnOnce() -> K,
        decide: impl FnOnce() -> Decision,
    ) -> Decision {
        if let Ok(known) = self.0.lock() {
            if let Some((_, decision)) = known.iter().find(|(k, _)| is_key(k)) {
                return decision.clone();
            }
        }
        let decision = decide();
        if let Ok(mut known) = self.0.lock() {
            if known.len() >= capacity {
                known.remove(0);
            }
            known.push((key(), decision.clone()));
        }
        decision
    }
}

impl Remembered<u64> {
    /// The decision for `version`, computed by `decide` the first time.
    pub(super) fn get_or_insert(
        &self,
        version: u64,
        decide: impl FnOnce() -> Decision,
    ) -> Decision {
        self.get_or_insert_with(REMEMBERED_VERSIONS, |v| *v == version, || version, decide)
    }
}

/// What a policy that reads only `request.mcp` sees of a call: its method
/// and the tool, resource or prompt it names (`RequestView::into_call`).
/// Two calls with the same key look the same to such a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CallKey {
    method: Option<Box<str>>,
    item: Option<Box<str>>,
}

impl CallKey {
    fn parts(call: Option<&McpCall>) -> (Option<&str>, Option<&str>) {
        let method = call.and_then(|c| c.method.as_deref());
        let item = call.and_then(|c| c.tool().or(c.resource()).or(c.prompt()));
        (method, item)
    }

    pub(super) fn of(call: Option<&McpCall>) -> Self {
        let (method, item) = Self::parts(call);
        CallKey {
            method: method.map(Into::into),
            item: item.map(Into::into),
        }
    }

    pub(super) fn is(&self, call: Option<&McpCall>) -> bool {
        let (method, item) = Self::parts(call);
        self.method.as_deref() == method && self.item.as_deref() == item
    }
}

/// The policy's memo of a session (`None` only if the session's memo
/// held another type, which would be a bug).
pub(super) fn memo(session: &Session) -> Option<&SessionMemo> {
    session.memo.get_or_init(SessionMemo::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_on_several_routes_keeps_each_routes_decision() {
        let memo = Remembered::<u64>::default();
        let runs = std::cell::Cell::new(0);
        let decide = |allowed: bool| {
            runs.set(runs.get() + 1);
            if allowed {
                Decision::Allow {
                    headers: Default::default(),
                }
            } else {
                Decision::Deny {
                    status: axum::http::StatusCode::FORBIDDEN,
                    reason: "no".into(),
                }
            }
        };
        // Two routes' policies (versions 1 and 2), used alternately: each
        // script runs once, and each answer stays its own.
        for _ in 0..3 {
            assert!(matches!(
                memo.get_or_insert(1, || decide(true)),
                Decision::Allow { .. }
            ));
            assert!(matches!(
                memo.get_or_insert(2, || decide(false)),
                Decision::Deny { .. }
            ));
        }
        assert_eq!(runs.get(), 2);
        // Bounded: the oldest version goes first.
        for version in 3..3 + REMEMBERED_VERSIONS as u64 {
            memo.get_or_insert(version, || decide(true));
        }
        let before = runs.get();
        memo.get_or_insert(1, || decide(true));
        assert_eq!(runs.get(), before + 1, "version 1 was forgotten");
    }
}
