//! What the policy layers' tests share: a small policy, its engine, and a
//! session as Authenticate would hand it on.

use std::sync::Arc;

use crate::policy::PolicyEngine;
use crate::session::{Memo, Session, UpstreamTokens};

/// Denies the `deploy` tool and the `secret://` resources; everything else
/// goes on with the user's `sub` as a header.
const POLICY: &str = r#"
fn authorize(user, request) {
    if request.mcp.tool == "deploy" { return deny(403, "not for you"); }
    if request.mcp.resource != () && request.mcp.resource.starts_with("secret://") {
        return deny(403, "not for you");
    }
    allow(#{ "X-User-Sub": user.sub })
}
"#;

/// The test policy's engine (the directory holds its file).
pub(crate) fn engine() -> (tempfile::TempDir, Arc<PolicyEngine>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("test.rhai");
    std::fs::write(&path, POLICY).expect("write the policy");
    let engine = PolicyEngine::new(Some(&path), &[]).expect("the test policy compiles");
    (dir, Arc::new(engine))
}

/// Alice's session.
pub(crate) fn session() -> Arc<Session> {
    Arc::new(Session {
        grant_id: "grant-1".into(),
        token_hash: "hash-1".into(),
        client_id: "client-1".into(),
        sub: "alice".into(),
        email: Some("alice@example.com".into()),
        claims: serde_json::Map::new(),
        upstream: UpstreamTokens::default(),
        resource: None,
        scope: None,
        expires_at: crate::now_unix() + 3600,
        client_name: None,
        memo: Memo::default(),
        confirmed: Default::default(),
    })
}
