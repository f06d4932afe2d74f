//! The registration parser's rules, case by case and by property.

use super::*;
use serde_json::json;

fn parse(v: Value) -> Result<ClientRecord, OAuthError> {
    parse_registration(v.as_object().unwrap(), &["cursor".into()], 3)
}

#[test]
fn mcp_sdk_style_registration_is_accepted() {
    let c = parse(json!({
        "redirect_uris": ["http://localhost:3000/callback"],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "client_name": "MCP Inspector",
        "client_uri": "https://github.com/modelcontextprotocol/inspector",
        "scope": "mcp",
        "software_id": "inspector",
        "application_type": "native",
        "unknown_extension": {"ignored": true}
    }))
    .unwrap();
    assert!(c.is_public());
    assert_eq!(c.metadata["scope"], "mcp");
    assert!(!c.metadata.contains_key("unknown_extension"));
}

#[test]
fn defaults_follow_rfc7591_with_refresh_for_mcp() {
    let c = parse(json!({"redirect_uris": ["https://a.example/cb"]})).unwrap();
    assert_eq!(c.token_endpoint_auth_method, "client_secret_basic");
    assert_eq!(c.grant_types, vec!["authorization_code", "refresh_token"]);
}

#[test]
fn bad_metadata_is_refused_with_the_right_code() {
    let cases = [
        (json!({}), "invalid_redirect_uri"),
        (json!({"redirect_uris": []}), "invalid_redirect_uri"),
        (
            json!({"redirect_uris": "https://a.example/cb"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["javascript:alert(1)"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["https://a/1", "https://a/2", "https://a/3", "https://a/4"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["https://a/1"], "grant_types": ["password"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a/1"], "response_types": ["token"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a/1"], "token_endpoint_auth_method": "private_key_jwt"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a/1"], "client_name": "x".repeat(500)}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a/1"], "client_name": 5}),
            "invalid_client_metadata",
        ),
    ];
    for (body, code) in cases {
        let err = parse(body.clone()).unwrap_err();
        assert_eq!(err.code, code, "{body}");
    }
}

#[test]
fn registration_refuses_invisible_control_and_bidi_characters_in_displayed_metadata() {
    for bad in [
        "\u{202e}moc.elgoog",
        "App\u{200b}",
        "App\u{2066}x\u{2069}",
        "\u{feff}App",
        "App\u{7}",
        "App\nSecond line",
        "App\u{2028}",
        "App\u{e000}",
        "App\u{a0}Name",
        "App\u{3000}Name",
        "App\u{10ffff}",
    ] {
        for key in ["client_name", "scope", "software_id", "software_version"] {
            let err =
                parse(json!({"redirect_uris": ["https://a.example/cb"], key: bad})).unwrap_err();
            assert_eq!(err.code, "invalid_client_metadata", "{key}: {bad:?}");
            assert!(err.description.starts_with(key), "{}", err.description);
        }
        let err = parse(json!({"redirect_uris": ["https://a.example/cb"], "contacts": [bad]}))
            .unwrap_err();
        assert_eq!(err.code, "invalid_client_metadata", "contacts: {bad:?}");
    }
    let c = parse(json!({
        "redirect_uris": ["https://a.example/cb"],
        "client_name": "Café ☕ 日本語 — Claude (beta)",
    }))
    .unwrap();
    assert_eq!(
        c.client_name.as_deref(),
        Some("Café ☕ 日本語 — Claude (beta)")
    );
}

#[test]
fn invariant_3_registration_refuses_wildcard_and_unreadable_hosts() {
    for uri in [
        "https://*.example.com/cb",
        "https://*/cb",
        "https://a_b.example.com/cb",
        "http://127.1:3000/cb",
    ] {
        let err = parse(json!({"redirect_uris": [uri]})).unwrap_err();
        assert_eq!(err.code, "invalid_redirect_uri", "{uri}");
    }
    for (key, uri) in [
        ("client_uri", "https://*.example.com/"),
        ("client_uri", "javascript:alert(1)"),
        ("logo_uri", "data:image/png;base64,AAAA"),
        ("tos_uri", "https://user@app.example.com/tos"),
        ("policy_uri", "https://a..example.com/p"),
        ("client_uri", "https://app.example.com/\u{202e}"),
    ] {
        let err = parse(json!({"redirect_uris": ["https://a.example/cb"], key: uri})).unwrap_err();
        assert_eq!(err.code, "invalid_client_metadata", "{key} {uri}");
    }
    assert!(parse(json!({
        "redirect_uris": ["https://a.example/cb"],
        "client_uri": "https://github.com/modelcontextprotocol/inspector",
        "logo_uri": "https://app.example.com",
    }))
    .is_ok());
}

mod properties {
    use super::super::*;
    use proptest::prelude::*;

    const KEYS: [&str; 14] = [
        "redirect_uris",
        "client_name",
        "token_endpoint_auth_method",
        "grant_types",
        "response_types",
        "client_uri",
        "logo_uri",
        "scope",
        "contacts",
        "software_id",
        "application_type",
        "tos_uri",
        "policy_uri",
        "other",
    ];

    /// Strings near the edges of what registration accepts.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            prop::sample::select(vec![
                "https://app.example.com/cb",
                "http://127.0.0.1:3000/cb",
                "http://127.1:3000/cb",
                "http://localhost/cb",
                "http://evil.example/cb",
                "https://*.example.com/cb",
                "https://user@a.example/cb",
                "https://@a.example/cb",
                "https://a.example/cb#f",
                "cursor://x/cb",
                "javascript:alert(1)",
                "data:text/html,x",
                "none",
                "code",
                "authorization_code",
                "refresh_token",
                "native",
                "\u{202e}App",
                "App\u{200b}",
            ])
            .prop_map(str::to_string),
            "(https?|cursor|HTTPS)://[a-zA-Z0-9.*_%@:\\[\\]-]{0,20}(/[a-z%.]{0,5}){0,2}",
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((text(), inner), 0..3)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn request() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::vec(
            (
                prop::sample::select(KEYS.to_vec()),
                prop_oneof![
                    json_value(),
                    prop::collection::vec(text().prop_map(Value::String), 0..4)
                        .prop_map(Value::Array),
                ],
            ),
            0..8,
        )
        .prop_map(|kv| kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    fn assert_readable(text: &str) -> Result<(), TestCaseError> {
        prop_assert!(
            !text.chars().any(|c| c.is_control()
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')),
            "{:?}",
            text
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn invariant_3_accepted_registrations_satisfy_the_redirect_and_text_rules(
            req in request(),
        ) {
            // Never panics; when it accepts, the invariants hold.
            if let Ok(client) = parse_registration(&req, &["cursor".to_string()], 10) {
                prop_assert!(!client.redirect_uris.is_empty());
                for uri in &client.redirect_uris {
                    let url = Url::parse(uri).unwrap();
                    prop_assert_eq!(url.as_str(), uri.as_str());
                    prop_assert!(!uri.contains('#') && !uri.contains('@') && !uri.contains('*'));
                    match url.scheme() {
                        "https" => prop_assert!(url.host_str().is_some_and(|h| !h.is_empty())),
                        "http" => prop_assert!(crate::net::is_loopback_host(url.host_str().unwrap())),
                        other => prop_assert_eq!(other, "cursor"),
                    }
                    if let Some(host) = url.host_str() {
                        prop_assert!(host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b)), "{}", host);
                    }
                }
                if let Some(name) = &client.client_name {
                    assert_readable(name)?;
                }
                for value in client.metadata.values() {
                    match value {
                        Value::String(s) => assert_readable(s)?,
                        Value::Array(items) => {
                            for item in items {
                                assert_readable(item.as_str().unwrap())?;
                            }
                        }
                        other => prop_assert!(false, "unexpected metadata {:?}", other),
                    }
                }
                prop_assert!(client.response_types.iter().all(|r| r == "code"));
                prop_assert!(AUTH_METHODS.contains(&client.token_endpoint_auth_method.as_str()));
            }
        }
    }
}
