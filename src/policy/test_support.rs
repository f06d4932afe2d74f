//! What the policy modules' unit tests share: an engine around one script,
//! a user, the provider's tokens.

use std::sync::{Arc, RwLock};

use rhai::{Dynamic, Map};

use super::reload::ReloadCounters;
use super::{compile, header_rules, sandboxed_engine, Decision, PolicyEngine};
use crate::store::UpstreamTokens;

fn tokens() -> UpstreamTokens {
    UpstreamTokens {
        access_token: "up-at".into(),
        id_token: Some("up-id".into()),
        ..Default::default()
    }
}

pub(super) fn run(source: &str, user: Dynamic) -> Decision {
    let engine = PolicyEngine {
        engine: sandboxed_engine(),
        current: RwLock::new(Arc::new(
            compile(&sandboxed_engine(), "t.rhai", source).unwrap(),
        )),
        path: None,
        extra_identity_headers: vec![],
        fingerprint: std::sync::Mutex::new(None),
        reloads: ReloadCounters::default(),
        metrics: crate::metrics::Metrics::disabled(),
        max_header_bytes: header_rules::DEFAULT_MAX_HEADER_BYTES,
        route: "default".into(),
        observer: None,
    };
    let policy = engine.current();
    engine.authorize(&policy, user, Dynamic::from_map(Map::new()), &tokens())
}

pub(super) fn user() -> Dynamic {
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
