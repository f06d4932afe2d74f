//! `mcp-oauth-proxy policy test`: operators' cases for their policies.
//!
//! Beside `name.rhai` lives `name.test.toml`: users and requests with the
//! decision and headers expected. A mismatch prints what differs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::layer::{script_request, McpCall};
use super::{user_value, Decision, PolicyEngine, UserFacts};
use crate::store::UpstreamTokens;

/// What `upstream_access_token()` stands for in cases.
pub(crate) const TEST_ACCESS_TOKEN: &str = "UPSTREAM_ACCESS_TOKEN";
/// What `identity_assertion()` renders as in cases (the proxy signs one
/// per request; a case has no request to sign for).
const TEST_IDENTITY_ASSERTION: &str = "IDENTITY_ASSERTION";
/// What `upstream_id_token()` stands for in cases.
pub(crate) const TEST_ID_TOKEN: &str = "UPSTREAM_ID_TOKEN";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Defaults {
    #[serde(default)]
    user: UserSpec,
    #[serde(default)]
    request: RequestSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default = "authorize_fn")]
    function: String,
    #[serde(default)]
    user: UserSpec,
    #[serde(default)]
    request: RequestSpec,
    expect: Expect,
}

fn authorize_fn() -> String {
    "authorize".into()
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct UserSpec {
    sub: Option<String>,
    email: Option<String>,
    name: Option<String>,
    groups: Option<Vec<String>>,
    #[serde(default)]
    claims: Map<String, Value>,
    /// Claims the defaults set that this case's user does not have.
    #[serde(default)]
    unset_claims: Vec<String>,
    /// The provider's issuer (default `https://idp.example.com`).
    issuer: Option<String>,
    client_id: Option<String>,
    client_name: Option<String>,
}

impl UserSpec {
    /// `self` with `defaults` where `self` says nothing.
    fn over(self, defaults: &UserSpec) -> UserSpec {
        let mut claims = defaults.claims.clone();
        claims.extend(self.claims);
        for name in &self.unset_claims {
            claims.remove(name);
        }
        UserSpec {
            sub: self.sub.or_else(|| defaults.sub.clone()),
            email: self.email.or_else(|| defaults.email.clone()),
            name: self.name.or_else(|| defaults.name.clone()),
            groups: self.groups.or_else(|| defaults.groups.clone()),
            claims,
            unset_claims: self.unset_claims,
            issuer: self.issuer.or_else(|| defaults.issuer.clone()),
            client_id: self.client_id.or_else(|| defaults.client_id.clone()),
            client_name: self.client_name.or_else(|| defaults.client_name.clone()),
        }
    }
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    /// `request.route`: the route the request arrives on ("default"
    /// unless the case says).
    route: Option<String>,
    method: Option<String>,
    path: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    mcp: McpSpec,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct McpSpec {
    method: Option<String>,
    tool: Option<String>,
    resource: Option<String>,
    prompt: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    decision: String,
    status: Option<u16>,
    reason: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    absent_headers: Vec<String>,
}

/// Totals of a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Cases whose decision and headers were as expected.
    pub passed: usize,
    /// Cases that differed, or could not run.
    pub failed: usize,
}

/// The policies named by `paths` (files, or directories of `*.rhai`).
pub fn policies_in(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut found = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "rhai"))
                .collect();
            entries.sort();
            found.extend(entries);
        } else if path.to_string_lossy().ends_with(".test.toml") {
            let text = path.to_string_lossy();
            found.push(PathBuf::from(format!(
                "{}.rhai",
                &text[..text.len() - ".test.toml".len()]
            )));
        } else {
            found.push(path.clone());
        }
    }
    if found.is_empty() {
        return Err("no policies found".into());
    }
    Ok(found)
}

/// Where a policy's cases live: `name.test.toml` beside `name.rhai`.
pub(crate) fn cases_path(policy: &Path) -> PathBuf {
    policy.with_extension("test.toml")
}

/// Runs every case of one policy, writing a report to `out`.
pub fn run_policy(policy: &Path, out: &mut impl std::io::Write) -> Outcome {
    let mut outcome = Outcome::default();
    let cases_file = cases_path(policy);
    let engine = match PolicyEngine::new(Some(policy), &[]) {
        Ok(e) => e,
        Err(e) => {
            let _ = writeln!(out, "FAIL {}: {e}", policy.display());
            outcome.failed += 1;
            return outcome;
        }
    };
    let text = match std::fs::read_to_string(&cases_file) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(
                out,
                "FAIL {}: no test cases ({}: {e})",
                policy.display(),
                cases_file.display()
            );
            outcome.failed += 1;
            return outcome;
        }
    };
    let file: CaseFile = match toml::from_str(&text) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(out, "FAIL {}: {e}", cases_file.display());
            outcome.failed += 1;
            return outcome;
        }
    };
    if file.cases.is_empty() {
        let _ = writeln!(out, "FAIL {}: has no [[case]]", cases_file.display());
        outcome.failed += 1;
        return outcome;
    }
    let _ = writeln!(out, "{} ({} cases)", policy.display(), file.cases.len());
    for case in file.cases {
        let name = case.name.clone();
        let problems = run_case(&engine, case, &file.defaults);
        if problems.is_empty() {
            outcome.passed += 1;
            let _ = writeln!(out, "  ok   {name}");
        } else {
            outcome.failed += 1;
            let _ = writeln!(out, "  FAIL {name}");
            for p in problems {
                let _ = writeln!(out, "         {p}");
            }
        }
    }
    outcome
}

fn run_case(engine: &PolicyEngine, case: Case, defaults: &Defaults) -> Vec<String> {
    let user = case.user.over(&defaults.user);
    let mut claims = user.claims.clone();
    let sub = user.sub.clone().unwrap_or_else(|| "test-user".into());
    claims.insert("sub".into(), Value::from(sub.clone()));
    if let Some(email) = &user.email {
        claims.insert("email".into(), Value::from(email.clone()));
    }
    if let Some(name) = &user.name {
        claims.insert("name".into(), Value::from(name.clone()));
    }
    if let Some(groups) = &user.groups {
        claims.insert("groups".into(), Value::from(groups.clone()));
    }
    let user_dynamic = user_value(&UserFacts {
        sub: &sub,
        email: user.email.as_deref(),
        claims: &claims,
        issuer: user.issuer.as_deref().unwrap_or("https://idp.example.com"),
        client_id: user.client_id.as_deref().unwrap_or("test-client"),
        client_name: user.client_name.as_deref(),
    });
    let policy = engine.current();
    let decision = match case.function.as_str() {
        "authorize" => {
            let request = merge_request(case.request, &defaults.request);
            let method = Method::from_bytes(request.method.as_deref().unwrap_or("POST").as_bytes())
                .unwrap_or(Method::POST);
            let mut headers = HeaderMap::new();
            for (k, v) in &request.headers {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    headers.insert(k, v);
                }
            }
            let mcp = &request.mcp;
            let call = McpCall {
                method: mcp.method.clone(),
                id: None,
                target: mcp
                    .tool
                    .clone()
                    .or_else(|| mcp.resource.clone())
                    .or_else(|| mcp.prompt.clone()),
            };
            let view = script_request(
                request
                    .route
                    .as_deref()
                    .unwrap_or(crate::config::DEFAULT_ROUTE),
                &method,
                request.path.as_deref().unwrap_or("/mcp"),
                &headers,
                Some(&call),
            );
            let tokens = UpstreamTokens {
                access_token: TEST_ACCESS_TOKEN.into(),
                id_token: Some(TEST_ID_TOKEN.into()),
                ..Default::default()
            };
            engine.authorize(&policy, user_dynamic, view, &tokens)
        }
        "login" => engine.login(&policy, user_dynamic),
        other => {
            return vec![format!(
                "function must be \"authorize\" or \"login\", not \"{other}\""
            )]
        }
    };
    compare(&case.expect, &decision)
}

fn merge_request(case: RequestSpec, defaults: &RequestSpec) -> RequestSpec {
    let mut headers = defaults.headers.clone();
    headers.extend(case.headers);
    RequestSpec {
        route: case.route.or_else(|| defaults.route.clone()),
        method: case.method.or_else(|| defaults.method.clone()),
        path: case.path.or_else(|| defaults.path.clone()),
        headers,
        mcp: McpSpec {
            method: case.mcp.method.or_else(|| defaults.mcp.method.clone()),
            tool: case.mcp.tool.or_else(|| defaults.mcp.tool.clone()),
            resource: case.mcp.resource.or_else(|| defaults.mcp.resource.clone()),
            prompt: case.mcp.prompt.or_else(|| defaults.mcp.prompt.clone()),
        },
    }
}

/// Every difference between what was expected and what happened.
fn compare(expect: &Expect, decision: &Decision) -> Vec<String> {
    let mut problems = Vec::new();
    match (expect.decision.as_str(), decision) {
        ("allow", Decision::Allow { headers }) => {
            let find = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
                    .map(|(_, v)| {
                        if crate::assertion::is_placeholder(v) {
                            TEST_IDENTITY_ASSERTION.to_string()
                        } else {
                            v.to_str().unwrap_or("<binary>").to_string()
                        }
                    })
            };
            for (name, want) in &expect.headers {
                match find(name) {
                    Some(got) if &got == want => {}
                    Some(got) => {
                        problems.push(format!("header {name}: expected {want:?}, got {got:?}"))
                    }
                    None => problems.push(format!(
                        "header {name}: expected {want:?}, but the policy did not set it"
                    )),
                }
            }
            for name in &expect.absent_headers {
                if let Some(got) = find(name) {
                    problems.push(format!("header {name}: expected absent, got {got:?}"));
                }
            }
        }
        ("deny", Decision::Deny { status, reason }) => {
            if let Some(want) = expect.status {
                if status.as_u16() != want {
                    problems.push(format!("status: expected {want}, got {}", status.as_u16()));
                }
            }
            if let Some(want) = &expect.reason {
                if reason != want {
                    problems.push(format!("reason: expected {want:?}, got {reason:?}"));
                }
            }
        }
        ("allow", Decision::Deny { status, reason }) => problems.push(format!(
            "decision: expected allow, got deny ({} {reason:?})",
            status.as_u16()
        )),
        ("deny", Decision::Allow { headers }) => {
            let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
            problems.push(format!(
                "decision: expected deny, got allow (headers {names:?})"
            ))
        }
        (other, _) => problems.push(format!(
            "expect.decision must be \"allow\" or \"deny\", not {other:?}"
        )),
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, policy: &str, cases: &str) -> PathBuf {
        let p = dir.join(format!("{name}.rhai"));
        std::fs::write(&p, policy).unwrap();
        std::fs::write(dir.join(format!("{name}.test.toml")), cases).unwrap();
        p
    }

    const POLICY: &str = r#"
fn authorize(user, request) {
    if request.mcp.tool == "deploy" && !("ops" in user.groups) { return deny(403, "ops only"); }
    allow(#{ "X-User-Email": user.email, "Authorization": upstream_bearer() })
}"#;

    #[test]
    fn passing_cases_pass() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "p",
            POLICY,
            r#"
[defaults.user]
email = "a@example.com"
groups = ["ops"]

[[case]]
name = "ops may deploy"
request.mcp = { method = "tools/call", tool = "deploy" }
expect = { decision = "allow", headers = { "X-User-Email" = "a@example.com", "Authorization" = "Bearer UPSTREAM_ACCESS_TOKEN" } }

[[case]]
name = "others may not"
user = { groups = ["sales"] }
request.mcp = { method = "tools/call", tool = "deploy" }
expect = { decision = "deny", status = 403, reason = "ops only" }
"#,
        );
        let mut out = Vec::new();
        assert_eq!(
            run_policy(&p, &mut out),
            Outcome {
                passed: 2,
                failed: 0
            },
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn an_identity_assertion_renders_as_a_fixed_name_in_cases() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a",
            r#"fn authorize(user, request) { allow(#{ "X-Identity-Assertion": identity_assertion() }) }"#,
            r#"
[[case]]
name = "signed"
expect = { decision = "allow", headers = { "X-Identity-Assertion" = "IDENTITY_ASSERTION" } }
"#,
        );
        let mut out = Vec::new();
        let outcome = run_policy(&p, &mut out);
        assert_eq!(outcome.failed, 0, "{}", String::from_utf8_lossy(&out));
        assert_eq!(outcome.passed, 1);
    }

    #[test]
    fn a_wrong_expectation_fails_with_a_readable_diff() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "p",
            POLICY,
            r#"
[[case]]
name = "wrong header"
user = { email = "a@example.com", groups = ["ops"] }
expect = { decision = "allow", headers = { "X-User-Email" = "b@example.com", "X-Team" = "x" }, absent_headers = ["Authorization"] }

[[case]]
name = "wrong decision"
user = { groups = [] }
request.mcp = { method = "tools/call", tool = "deploy" }
expect = { decision = "allow" }
"#,
        );
        let mut out = Vec::new();
        assert_eq!(
            run_policy(&p, &mut out),
            Outcome {
                passed: 0,
                failed: 2
            }
        );
        let report = String::from_utf8(out).unwrap();
        assert!(
            report
                .contains("header X-User-Email: expected \"b@example.com\", got \"a@example.com\""),
            "{report}"
        );
        assert!(
            report.contains("header X-Team: expected \"x\", but the policy did not set it"),
            "{report}"
        );
        assert!(
            report.contains(
                "header Authorization: expected absent, got \"Bearer UPSTREAM_ACCESS_TOKEN\""
            ),
            "{report}"
        );
        assert!(
            report.contains("decision: expected allow, got deny (403 \"ops only\")"),
            "{report}"
        );
    }

    #[test]
    fn cases_choose_the_route_the_request_arrives_on() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "shared",
            r#"fn authorize(user, request) {
    if request.route == "wiki" && !("wiki" in user.groups) { return deny(403, "wiki only"); }
    allow(#{ "X-Route": request.route })
}"#,
            r#"
[[case]]
name = "the default route by default"
expect = { decision = "allow", headers = { "X-Route" = "default" } }

[[case]]
name = "the wiki route"
request = { route = "wiki" }
expect = { decision = "deny", status = 403, reason = "wiki only" }

[[case]]
name = "the wiki route for the wiki group"
user = { groups = ["wiki"] }
request = { route = "wiki" }
expect = { decision = "allow", headers = { "X-Route" = "wiki" } }
"#,
        );
        let mut out = Vec::new();
        let outcome = run_policy(&p, &mut out);
        assert_eq!(
            outcome,
            Outcome {
                passed: 3,
                failed: 0
            },
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn a_policy_without_cases_fails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lonely.rhai");
        std::fs::write(&p, POLICY).unwrap();
        let mut out = Vec::new();
        assert_eq!(run_policy(&p, &mut out).failed, 1);
        assert!(String::from_utf8(out).unwrap().contains("no test cases"));
    }

    /// The shipped policies' cases (resource URIs in every spelling, exact
    /// groups, verified addresses, encoded identity values) run with
    /// `cargo test`, not only with `scripts/test.sh`.
    #[test]
    fn every_shipped_policy_passes_its_cases() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let policies = policies_in(&[dir]).unwrap();
        assert!(policies.len() >= 6, "{policies:?}");
        for policy in policies {
            let mut out = Vec::new();
            let outcome = run_policy(&policy, &mut out);
            assert_eq!(outcome.failed, 0, "{}", String::from_utf8_lossy(&out));
            assert!(outcome.passed > 0, "{}", policy.display());
        }
    }
}
