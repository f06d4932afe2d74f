//! Decisions as the proxy receives them: the headers a script sets, how
//! they are encoded, and what makes a decision deny.

use axum::http::StatusCode;
use rhai::{Dynamic, Map};

use super::super::test_support::{run, user};
use super::super::DEFAULT_POLICY;
use super::*;

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

#[test]
fn a_session_without_provider_tokens_sends_no_credential_header() {
    let none = UpstreamTokens::default();
    for secret in [
        UpstreamSecret::Bearer,
        UpstreamSecret::AccessToken,
        UpstreamSecret::IdToken,
    ] {
        assert_eq!(secret_text(secret, &none), None);
    }
    let tokens = UpstreamTokens {
        access_token: "up-at".into(),
        ..Default::default()
    };
    assert_eq!(
        secret_text(UpstreamSecret::Bearer, &tokens).as_deref(),
        Some("Bearer up-at")
    );
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
