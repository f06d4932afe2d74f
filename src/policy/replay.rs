//! `policy replay`: logged decisions re-run under a candidate policy, and
//! the comparison the shadow uses too.
//!
//! A replayed decision runs in the same sandbox as a live one, at the time
//! the decision log recorded (`now()`, `utc_hour()` and `utc_weekday()`
//! read it), with placeholder tokens: replays are deterministic.

use std::collections::BTreeMap;
use std::path::Path;

use rhai::{Dynamic, Map};
use serde::Serialize;
use serde_json::Value;

use super::decision_log::DecisionRecord;
use super::observer::{placeholder_tokens, Outcome};
use super::script_api::with_fixed_clock;
use super::{CompiledPolicy, Decision, PolicyEngine, PolicyError};
use crate::metrics::labels::ShadowDisagreement;

/// How a candidate's outcome differs from the logged one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// The logged decision allowed; the candidate denies.
    AllowToDeny,
    /// The logged decision denied; the candidate allows.
    DenyToAllow,
    /// Both allow, with these headers set differently (added, removed or
    /// another value).
    Headers(Vec<String>),
    /// Both deny, with another status or reason.
    Reason,
}

impl Difference {
    /// Where reports list its kind.
    fn order(&self) -> usize {
        match self {
            Difference::AllowToDeny => 0,
            Difference::DenyToAllow => 1,
            Difference::Headers(_) => 2,
            Difference::Reason => 3,
        }
    }

    /// Its kind's name in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Difference::AllowToDeny => "allow_to_deny",
            Difference::DenyToAllow => "deny_to_allow",
            Difference::Headers(_) => "headers",
            Difference::Reason => "reason",
        }
    }

    /// What shadow mode counts it as; a changed reason alone is no
    /// disagreement.
    pub(crate) fn disagreement(&self) -> Option<ShadowDisagreement> {
        match self {
            Difference::AllowToDeny => Some(ShadowDisagreement::AllowToDeny),
            Difference::DenyToAllow => Some(ShadowDisagreement::DenyToAllow),
            Difference::Headers(_) => Some(ShadowDisagreement::Headers),
            Difference::Reason => None,
        }
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::AllowToDeny => f.write_str("allow → deny"),
            Difference::DenyToAllow => f.write_str("deny → allow"),
            Difference::Headers(names) => write!(f, "headers changed: {}", names.join(", ")),
            Difference::Reason => f.write_str("reason changed"),
        }
    }
}

/// How `after` differs from `before` (nothing: the same decision).
pub fn compare(before: &Outcome, after: &Outcome) -> Vec<Difference> {
    match (before.allow, after.allow) {
        (true, false) => vec![Difference::AllowToDeny],
        (false, true) => vec![Difference::DenyToAllow],
        (true, true) => {
            let mut names: Vec<String> = before
                .headers
                .keys()
                .chain(after.headers.keys())
                .filter(|name| before.headers.get(*name) != after.headers.get(*name))
                .cloned()
                .collect();
            names.sort();
            names.dedup();
            if names.is_empty() {
                Vec::new()
            } else {
                vec![Difference::Headers(names)]
            }
        }
        (false, false) => {
            if before.status != after.status || before.reason != after.reason {
                vec![Difference::Reason]
            } else {
                Vec::new()
            }
        }
    }
}

/// Runs `policy` (its `login`, then `authorize`) on one logged decision's
/// inputs at `time`, with placeholder tokens; a script error is returned.
/// What the shadow runs for each live decision, and replay for each
/// logged one.
pub fn run_candidate(
    engine: &PolicyEngine,
    policy: &CompiledPolicy,
    time: i64,
    user: Dynamic,
    request: Dynamic,
    id_token: bool,
) -> Result<Outcome, String> {
    let tokens = placeholder_tokens(id_token);
    with_fixed_clock(time, || {
        let login = engine
            .try_login(policy, user.clone())
            .map_err(|e| e.to_string())?;
        if let Decision::Deny { .. } = login {
            return Ok(Outcome::of(&login, &tokens));
        }
        let decision = engine
            .try_authorize(policy, user, request, &tokens)
            .map_err(|e| e.to_string())?;
        Ok(Outcome::of(&decision, &tokens))
    })
}

/// A request in a few words: `POST /mcp tools/call search`.
pub(crate) fn describe_request(request: &Dynamic) -> String {
    describe_request_value(&rhai::serde::from_dynamic::<Value>(request).unwrap_or(Value::Null))
}

fn describe_request_value(request: &Value) -> String {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    let mcp = request.get("mcp");
    let item = ["tool", "resource", "prompt"]
        .iter()
        .map(|k| text(mcp.and_then(|m| m.get(*k))))
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    [
        text(request.get("method")),
        text(request.get("path")),
        text(mcp.and_then(|m| m.get("method"))),
        item,
    ]
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" ")
}

/// A user in a few words: the email, or the subject.
fn describe_user(user: &Value) -> String {
    let text = |k: &str| user.get(k).and_then(Value::as_str).unwrap_or_default();
    match (text("email"), text("sub")) {
        ("", sub) => sub.to_string(),
        (email, _) => email.to_string(),
    }
}

/// Changes of one kind for one user and request, counted.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeGroup {
    /// `allow_to_deny`, `deny_to_allow`, `headers` or `reason`.
    pub kind: &'static str,
    /// How many logged decisions changed this way.
    pub count: usize,
    /// The user (email, or subject).
    pub user: String,
    /// The request (`POST /mcp tools/call search`).
    pub request: String,
    /// The headers whose value changed (`headers` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// The logged outcome.
    pub before: Outcome,
    /// The candidate's outcome.
    pub after: Outcome,
}

/// What a replay found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReplayReport {
    /// The candidate policy file.
    pub candidate: String,
    /// SHA-256 of its source.
    pub candidate_hash: String,
    /// Decisions replayed.
    pub decisions: usize,
    /// Decisions the candidate makes the same way.
    pub unchanged: usize,
    /// Logged allows the candidate denies.
    pub allow_to_deny: usize,
    /// Logged denials the candidate allows.
    pub deny_to_allow: usize,
    /// Allows with different headers.
    pub headers_changed: usize,
    /// For each header name, how many decisions set it differently.
    pub headers_by_name: BTreeMap<String, usize>,
    /// Denials with another status or reason.
    pub reasons_changed: usize,
    /// Decisions where the candidate failed (it denies them).
    pub candidate_errors: usize,
    /// Logged decisions of other routes, left out (`--route`).
    pub other_routes: usize,
    /// The changes, grouped by kind, user and request, largest first.
    pub changes: Vec<ChangeGroup>,
}

impl ReplayReport {
    /// Whether the candidate decides anything differently.
    pub fn changed(&self) -> bool {
        self.unchanged != self.decisions
    }
}

/// Replays `records` (those of `route`, when given) under the policy in
/// `candidate`.
pub fn replay(
    candidate: &Path,
    identity_headers: &[String],
    records: &[DecisionRecord],
    route: Option<&str>,
) -> Result<ReplayReport, PolicyError> {
    let engine = PolicyEngine::new(Some(candidate), identity_headers)?;
    let policy = engine.current();
    let mut report = ReplayReport {
        candidate: candidate.display().to_string(),
        candidate_hash: policy.hash.clone(),
        ..ReplayReport::default()
    };
    let mut groups = Groups::new();
    for record in records {
        if route.is_some_and(|r| r != record.route) {
            report.other_routes += 1;
            continue;
        }
        report.decisions += 1;
        let after = match run_candidate(
            &engine,
            &policy,
            record.time,
            script_value(&record.user, false),
            script_value(&record.request, true),
            record.upstream_id_token,
        ) {
            Ok(outcome) => outcome,
            Err(error) => {
                report.candidate_errors += 1;
                Outcome {
                    allow: false,
                    status: Some(403),
                    reason: Some(format!("access denied by policy (policy error: {error})")),
                    headers: BTreeMap::new(),
                }
            }
        };
        let differences = compare(&record.outcome, &after);
        if differences.is_empty() {
            report.unchanged += 1;
        }
        for difference in differences {
            tally(&mut report, &mut groups, record, &after, difference);
        }
    }
    // Grouped by kind (the map's keys start with the kind's order), the
    // largest groups of each kind first.
    let mut changes: Vec<(usize, ChangeGroup)> = groups
        .into_iter()
        .map(|((order, ..), group)| (order, group))
        .collect();
    changes.sort_by_key(|(order, group)| (*order, std::cmp::Reverse(group.count)));
    report.changes = changes.into_iter().map(|(_, group)| group).collect();
    Ok(report)
}

/// Changes by kind, user, request and what changed.
type Groups = BTreeMap<(usize, String, String, String), ChangeGroup>;

/// Counts one difference in the summary and in its group.
fn tally(
    report: &mut ReplayReport,
    groups: &mut Groups,
    record: &DecisionRecord,
    after: &Outcome,
    difference: Difference,
) {
    let counter = match difference {
        Difference::AllowToDeny => &mut report.allow_to_deny,
        Difference::DenyToAllow => &mut report.deny_to_allow,
        Difference::Headers(_) => &mut report.headers_changed,
        Difference::Reason => &mut report.reasons_changed,
    };
    *counter += 1;
    let (order, kind) = (difference.order(), difference.kind());
    let headers = match difference {
        Difference::Headers(names) => names,
        _ => Vec::new(),
    };
    for name in &headers {
        *report.headers_by_name.entry(name.clone()).or_default() += 1;
    }
    let user = describe_user(&record.user);
    let request = describe_request_value(&record.request);
    let key = (
        order,
        user.clone(),
        request.clone(),
        serde_json::to_string(&(&headers, &record.outcome.reason, &after.reason))
            .unwrap_or_default(),
    );
    groups
        .entry(key)
        .or_insert_with(|| ChangeGroup {
            kind,
            count: 0,
            user,
            request,
            headers,
            before: record.outcome.clone(),
            after: after.clone(),
        })
        .count += 1;
}

/// A logged value as the script saw it; the request's headers read-only,
/// as they are live.
fn script_value(value: &Value, request: bool) -> Dynamic {
    let dynamic = rhai::serde::to_dynamic(value).unwrap_or(Dynamic::UNIT);
    if !request {
        return dynamic;
    }
    let Some(mut map) = dynamic.clone().try_cast::<Map>() else {
        return dynamic;
    };
    if let Some(headers) = map.remove("headers") {
        map.insert("headers".into(), headers.into_read_only());
    }
    Dynamic::from_map(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(headers: &[(&str, &str)]) -> Outcome {
        Outcome {
            allow: true,
            status: None,
            reason: None,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn deny(reason: &str) -> Outcome {
        Outcome {
            allow: false,
            status: Some(403),
            reason: Some(reason.into()),
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn comparisons_name_what_changed() {
        assert!(compare(&allow(&[("x-a", "1")]), &allow(&[("x-a", "1")])).is_empty());
        assert_eq!(
            compare(&allow(&[]), &deny("no")),
            vec![Difference::AllowToDeny]
        );
        assert_eq!(
            compare(&deny("no"), &allow(&[])),
            vec![Difference::DenyToAllow]
        );
        assert_eq!(
            compare(
                &allow(&[("x-a", "1"), ("x-b", "2")]),
                &allow(&[("x-a", "2"), ("x-c", "3"), ("x-b", "2")])
            ),
            vec![Difference::Headers(vec!["x-a".into(), "x-c".into()])]
        );
        assert_eq!(compare(&deny("a"), &deny("b")), vec![Difference::Reason]);
        assert!(compare(&deny("a"), &deny("a")).is_empty());
    }

    #[test]
    fn replays_read_the_logged_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hours.rhai");
        std::fs::write(
            &path,
            "fn authorize(user, request) { if utc_hour() < 12 { allow() } else { deny(\"afternoon\") } }",
        )
        .unwrap();
        let record = |time: i64| DecisionRecord {
            v: 1,
            time,
            route: "default".into(),
            policy: "p".into(),
            policy_hash: String::new(),
            user: serde_json::json!({"sub": "u", "claims": {}}),
            request: serde_json::json!({"method": "POST", "headers": {}}),
            upstream_id_token: false,
            outcome: allow(&[]),
        };
        // 09:00 and 15:00 UTC on 2026-01-01.
        let morning = 1_767_258_000;
        let afternoon = morning + 6 * 3600;
        for _ in 0..3 {
            let report = replay(&path, &[], &[record(morning), record(afternoon)], None).unwrap();
            assert_eq!(
                (report.unchanged, report.allow_to_deny),
                (1, 1),
                "{report:?}"
            );
        }
    }
}
