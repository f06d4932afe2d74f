//! The authorization server end to end, in process, against an OpenID
//! provider double: every step of register → authorize → consent → provider
//! → callback → token → refresh → revoke, and DESIGN.md's invariants.

mod common;

use std::collections::HashSet;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};

// ------------------------------------------------------------ metadata

#[tokio::test]
async fn authorization_server_metadata_is_complete() {
    let p = TestProxy::start().await;
    let r = p
        .http
        .get(format!("{}/.well-known/oauth-authorization-server", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["issuer"], p.url);
    assert_eq!(m["authorization_endpoint"], format!("{}/authorize", p.url));
    assert_eq!(m["token_endpoint"], format!("{}/token", p.url));
    assert_eq!(m["registration_endpoint"], format!("{}/register", p.url));
    assert_eq!(m["revocation_endpoint"], format!("{}/revoke", p.url));
    assert_eq!(m["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(m["response_types_supported"], json!(["code"]));
    assert_eq!(
        m["grant_types_supported"],
        json!([
            "authorization_code",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:jwt-bearer"
        ])
    );
    assert_eq!(
        m["token_endpoint_auth_methods_supported"],
        json!(["none", "client_secret_post", "client_secret_basic"])
    );
    assert_eq!(m["authorization_response_iss_parameter_supported"], true);
}

#[tokio::test]
async fn protected_resource_metadata_at_root_and_path_inserted() {
    let p = TestProxy::start().await;
    for (path, resource) in [
        ("", p.url.clone()),
        ("/mcp", format!("{}/mcp", p.url)),
        ("/sse", format!("{}/sse", p.url)),
    ] {
        let m: Value = p
            .http
            .get(format!(
                "{}/.well-known/oauth-protected-resource{path}",
                p.url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(m["resource"], resource);
        assert_eq!(m["authorization_servers"], json!([p.url]));
    }
}

#[tokio::test]
async fn invariant_1_issuer_comes_from_public_url_never_from_request_headers() {
    let p = TestProxy::start().await;
    let get = |path: &str| {
        p.http
            .get(format!("{}{path}", p.url))
            .header("host", "evil.example")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .header("forwarded", "host=evil.example;proto=https")
            .send()
    };
    let as_meta: Value = get("/.well-known/oauth-authorization-server")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let prm: Value = get("/.well-known/oauth-protected-resource/mcp")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = format!("{as_meta}{prm}");
    assert!(!text.contains("evil.example"), "{text}");
    assert_eq!(as_meta["issuer"], p.url);
    // The PRM's authorization server and every `iss` are the same string.
    assert_eq!(prm["authorization_servers"][0], as_meta["issuer"]);
    let client = p.public_client().await;
    let q = p
        .login(&mut Browser::new(), &client, &Pkce::new(), &[])
        .await;
    assert_eq!(q["iss"], as_meta["issuer"].as_str().unwrap());
}

#[tokio::test]
async fn cors_on_client_endpoints_never_on_authorize() {
    let p = TestProxy::start().await;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/register",
        "/token",
        "/revoke",
    ] {
        let r = p
            .http
            .request(reqwest::Method::OPTIONS, format!("{}{path}", p.url))
            .header("origin", "https://inspector.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap()),
            Some("*"),
            "{path}"
        );
    }
    let r = p
        .http
        .get(format!("{}/authorize", p.url))
        .header("origin", "https://inspector.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = p
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/authorize", p.url))
        .header("origin", "https://inspector.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

// ------------------------------------------------------------ registration

#[tokio::test]
async fn registration_echoes_metadata_and_issues_secrets_to_confidential_clients() {
    let p = TestProxy::start().await;
    let (status, body) = p
        .register(json!({
            "client_name": "MCP Inspector",
            "redirect_uris": ["http://localhost:6274/oauth/callback"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "scope": "mcp",
            "software_id": "mcp-inspector",
            "application_type": "native",
        }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["client_name"], "MCP Inspector");
    assert_eq!(
        body["redirect_uris"],
        json!(["http://localhost:6274/oauth/callback"])
    );
    assert_eq!(body["token_endpoint_auth_method"], "none");
    assert_eq!(body["scope"], "mcp");
    assert_eq!(body["software_id"], "mcp-inspector");
    assert!(body.get("client_secret").is_none());
    assert!(body["client_id_issued_at"].as_i64().unwrap() > 0);

    let (status, body) = p
        .register(json!({"redirect_uris": ["cursor://anysphere.cursor-mcp/oauth/callback"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["token_endpoint_auth_method"], "client_secret_basic");
    assert!(body["client_secret"].as_str().unwrap().len() >= 43);
}

#[tokio::test]
async fn registration_errors_are_rfc7591_json() {
    let p = TestProxy::start().await;
    let (status, body) = p
        .register(json!({"redirect_uris": ["http://evil.example/cb"]}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_redirect_uri");
    let (status, body) = p
        .register(json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["implicit"]}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_client_metadata");
    let r = p
        .http
        .post(format!("{}/register", p.url))
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client_metadata");
}

#[tokio::test]
async fn registration_refuses_bodies_a_cross_site_form_can_send() {
    let p = TestProxy::start().await;
    let body =
        json!({"redirect_uris": ["https://evil.example/cb"], "token_endpoint_auth_method": "none"})
            .to_string();
    for content_type in [
        Some("text/plain"),
        Some("text/plain; charset=utf-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        None,
    ] {
        let mut request = p
            .http
            .post(format!("{}/register", p.url))
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 415, "{content_type:?}");
        assert_eq!(r.headers()["cache-control"], "no-store");
        let error: Value = r.json().await.unwrap();
        assert_eq!(error["error"], "invalid_request", "{content_type:?}");
    }
    let r = p
        .http
        .post(format!("{}/register", p.url))
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn invariant_9_registration_is_bounded() {
    let p = TestProxy::start().await;
    let many: Vec<String> = (0..11)
        .map(|i| format!("https://a.example/cb{i}"))
        .collect();
    let (status, body) = p.register(json!({"redirect_uris": many})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_redirect_uri");
    let huge = json!({"redirect_uris": ["https://a.example/cb"], "client_uri": "x".repeat(40_000)});
    let r = p
        .http
        .post(format!("{}/register", p.url))
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert!(r.status() == 413 || r.status() == 400, "{}", r.status());
}

// ------------------------------------------------------------ authorize, consent, callback

#[tokio::test]
async fn full_flow_issues_tokens_bound_to_the_user() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let pkce = Pkce::new();
    let mut browser = Browser::new();
    let resource = format!("{}/mcp", p.url);
    let q = p
        .login(
            &mut browser,
            &client,
            &pkce,
            &[("resource", &resource), ("scope", "mcp")],
        )
        .await;
    assert_eq!(q["state"], "client-state-1");
    assert_eq!(q["iss"], p.url);
    // The provider saw PKCE S256, a nonce and our callback.
    let upstream = p.provider.last_authorize_params();
    assert_eq!(upstream["code_challenge_method"], "S256");
    assert!(upstream.contains_key("nonce"));
    assert_eq!(upstream["redirect_uri"], format!("{}/callback", p.url));

    let (status, body, headers) = p
        .token(
            &client,
            &[
                ("grant_type", "authorization_code"),
                ("code", &q["code"]),
                ("redirect_uri", &client.redirect_uri),
                ("code_verifier", &pkce.verifier),
                ("resource", &resource),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "mcp");
    let access = body["access_token"].as_str().unwrap();
    assert!(body["refresh_token"].as_str().unwrap().len() >= 43);
    let session = p.app().grants.validate_access_token(access).await.unwrap();
    assert_eq!(&*session.sub, "alice-sub-123");
    assert_eq!(session.email.as_deref(), Some("alice@example.com"));
    assert_eq!(session.claims["groups"], json!(["engineering", "admins"]));
    assert_eq!(session.claims["name"], "Alice Example");
    assert_eq!(session.resource.as_deref(), Some(resource.as_str()));
    assert!(session
        .upstream
        .access_token
        .starts_with("upstream-access-"));
    assert!(session.upstream.refresh_token.is_some());
}

#[tokio::test]
async fn invariant_2_pkce_s256_is_mandatory() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let mut browser = Browser::new();
    // Once approved, PKCE errors go back to the client (before: pages, see
    // invariant_12_errors_before_consent_are_pages_never_redirects).
    approve(&p, &mut browser, &client).await;
    let base = format!(
        "{}/authorize?response_type=code&client_id={}&redirect_uri={}&state=s1",
        p.url,
        client.client_id,
        urlencode(&client.redirect_uri)
    );
    let challenge = Pkce::new().challenge;
    for (suffix, why) in [
        (String::new(), "missing challenge"),
        (format!("&code_challenge={challenge}"), "missing method"),
        (
            format!("&code_challenge={challenge}&code_challenge_method=plain"),
            "plain",
        ),
        (
            "&code_challenge=short&code_challenge_method=S256".to_string(),
            "malformed",
        ),
    ] {
        let r = browser.get(&format!("{base}{suffix}")).await;
        assert_eq!(r.status, StatusCode::FOUND, "{why}");
        let q = query_of(&r.location());
        assert_eq!(q["error"], "invalid_request", "{why}");
        assert_eq!(q["state"], "s1");
        assert_eq!(q["iss"], p.url);
    }
    // A token request without a verifier is refused, and so is a wrong one.
    let pkce = Pkce::new();
    let q = p.login(&mut Browser::new(), &client, &pkce, &[]).await;
    let (status, body, _) = p
        .token(
            &client,
            &[
                ("grant_type", "authorization_code"),
                ("code", &q["code"]),
                ("redirect_uri", &client.redirect_uri),
            ],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let wrong = Pkce::new().verifier;
    let (status, body, _) = p
        .token(
            &client,
            &[
                ("grant_type", "authorization_code"),
                ("code", &q["code"]),
                ("redirect_uri", &client.redirect_uri),
                ("code_verifier", &wrong),
            ],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    // The right verifier still works: a failed guess does not burn the code.
    let (status, _, _) = p
        .token(
            &client,
            &[
                ("grant_type", "authorization_code"),
                ("code", &q["code"]),
                ("redirect_uri", &client.redirect_uri),
                ("code_verifier", &pkce.verifier),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn invariant_3_untrusted_client_or_redirect_gets_a_page_never_a_redirect() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let pkce = Pkce::new();
    let mut browser = Browser::new();
    let cases = [
        p.authorize_url(
            &Client {
                client_id: "unknown".into(),
                ..client.clone()
            },
            &pkce,
            "s",
            &[],
        ),
        p.authorize_url(
            &Client {
                redirect_uri: "https://evil.example/cb".into(),
                ..client.clone()
            },
            &pkce,
            "s",
            &[],
        ),
        p.authorize_url(
            &Client {
                redirect_uri: "http://127.0.0.1:33418/other".into(),
                ..client.clone()
            },
            &pkce,
            "s",
            &[],
        ),
        p.authorize_url(
            &Client {
                redirect_uri: "http://127.0.0.1:33418/callback#x".into(),
                ..client.clone()
            },
            &pkce,
            "s",
            &[],
        ),
        format!("{}/authorize?response_type=code", p.url),
        format!(
            "{}&client_id={}",
            p.authorize_url(&client, &pkce, "s", &[]),
            client.client_id
        ),
    ];
    for url in cases {
        let r = browser.get(&url).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{url}");
        assert!(r.headers.get("location").is_none(), "{url}");
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
    }
    // RFC 8252: a loopback IP literal may change its port.
    let moved = Client {
        redirect_uri: "http://127.0.0.1:50123/callback".into(),
        ..client.clone()
    };
    let r = browser.get(&p.authorize_url(&moved, &pkce, "s", &[])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn invariant_5_consent_page_names_client_carries_csrf_and_forbids_framing() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let pkce = Pkce::new();
    let mut browser = Browser::new();
    let r = browser
        .get(&p.authorize_url(&client, &pkce, "s", &[]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("Test MCP Client"));
    assert!(r.body.contains("127.0.0.1:33418"));
    assert!(r.body.contains("<form method=\"post\""));
    assert!(r.body.contains("name=\"decision\" value=\"approve\""));
    assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"));
    assert!(r
        .header("content-security-policy")
        .unwrap()
        .contains("frame-ancestors 'none'"));
    let fields = r.form_fields();
    assert!(fields.iter().any(|(k, _)| k == "csrf"));
    let cookie = browser.set_cookie_headers.last().unwrap().clone();
    for attr in ["__Host-", "Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Domain"), "{cookie}");

    // A forged CSRF token is refused.
    let forged: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| {
            if k == "csrf" {
                (k.clone(), "forged".into())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let r2 = browser
        .post_form(
            &format!("{}/consent", p.url),
            &with_decision(forged, "approve"),
        )
        .await;
    assert_eq!(r2.status, StatusCode::FORBIDDEN);
    // Another browser (no cookie) cannot submit this browser's form.
    let mut other = Browser::new();
    let r3 = other
        .post_form(
            &format!("{}/consent", p.url),
            &with_decision(fields.clone(), "approve"),
        )
        .await;
    assert_eq!(r3.status, StatusCode::FORBIDDEN);
    // The genuine form still works once.
    let r4 = browser
        .post_form(
            &format!("{}/consent", p.url),
            &with_decision(fields.clone(), "approve"),
        )
        .await;
    assert_eq!(r4.status, StatusCode::FOUND);
    let r5 = browser
        .post_form(
            &format!("{}/consent", p.url),
            &with_decision(fields, "approve"),
        )
        .await;
    assert_eq!(r5.status, StatusCode::BAD_REQUEST);
    assert!(r5.body.contains("Invalid or expired state"));
}

#[tokio::test]
async fn consent_is_remembered_per_browser_and_client() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let mut browser = Browser::new();
    p.login(&mut browser, &client, &Pkce::new(), &[]).await;
    // Same browser, same client: straight to the provider.
    let r = browser
        .get(&p.authorize_url(&client, &Pkce::new(), "s2", &[]))
        .await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert!(r.location().starts_with(&p.provider.issuer));
    // Another client, or another browser: asked again.
    let other_client = p.public_client().await;
    let r = browser
        .get(&p.authorize_url(&other_client, &Pkce::new(), "s3", &[]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = Browser::new()
        .get(&p.authorize_url(&client, &Pkce::new(), "s4", &[]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn invariant_12_denied_consent_is_a_page_not_a_redirect() {
    let p = TestProxy::start().await;
    let (status, body) = p
        .register(json!({
            "client_name": "Phish",
            "redirect_uris": ["https://evil.example/phish"],
            "token_endpoint_auth_method": "none",
        }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let client = Client {
        client_id: body["client_id"].as_str().unwrap().to_string(),
        client_secret: None,
        redirect_uri: "https://evil.example/phish".into(),
    };
    let mut browser = Browser::new();
    let r = browser
        .get(&p.authorize_url(&client, &Pkce::new(), "st", &[]))
        .await;
    let r = browser
        .post_form(
            &format!("{}/consent", p.url),
            &with_decision(r.form_fields(), "deny"),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.headers.get("location").is_none());
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.body.contains("Access denied"), "{}", r.body);
    // Still counted as the person's answer, not as a broken form.
    let metrics = p.app().metrics.render();
    assert!(
        metrics.contains("mcp_oauth_proxy_consents_total{decision=\"deny\"} 1"),
        "{metrics}"
    );
}

/// Approves `client` in `browser`, leaving the flow at the provider.
async fn approve(p: &TestProxy, browser: &mut Browser, client: &Client) {
    let r = browser
        .get(&p.authorize_url(client, &Pkce::new(), "s", &[]))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = browser
        .post_form(
            &format!("{}/consent", p.url),
            &with_decision(r.form_fields(), "approve"),
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
}

#[tokio::test]
async fn invariant_12_errors_before_consent_are_pages_never_redirects() {
    let p = TestProxy::start().await;
    let (status, body) = p
        .register(json!({
            "client_name": "Phish",
            "redirect_uris": ["https://evil.example/phish"],
            "token_endpoint_auth_method": "none",
        }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["client_id"].as_str().unwrap();
    let client = Client {
        client_id: id.to_string(),
        client_secret: None,
        redirect_uri: "https://evil.example/phish".into(),
    };
    let pkce = Pkce::new();
    let valid = p.authorize_url(&client, &pkce, "s", &[]);
    let cases = [
        // The report's example: no redirect_uri, an implicit-flow request.
        format!("{}/authorize?client_id={id}&response_type=token", p.url),
        format!("{}/authorize?client_id={id}", p.url),
        valid.replace("response_type=code", "response_type=token"),
        valid.replace("code_challenge_method=S256", "code_challenge_method=plain"),
        valid.replace("&code_challenge=", "&ignored="),
        valid.replace("&code_challenge=", "&code_challenge=short&x="),
        p.authorize_url(
            &client,
            &pkce,
            "s",
            &[("resource", "https://other.example/mcp")],
        ),
        format!("{valid}&scope=a&scope=b"),
    ];
    let mut browser = Browser::new();
    for url in cases {
        let r = browser.get(&url).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{url}: {}", r.body);
        assert!(r.headers.get("location").is_none(), "{url}");
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(!r.body.contains("evil.example/phish?"), "{url}");
    }
}

#[tokio::test]
async fn errors_after_the_client_is_approved_go_back_to_it() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let pkce = Pkce::new();
    let mut browser = Browser::new();
    approve(&p, &mut browser, &client).await;
    let r = browser
        .get(&p.authorize_url(
            &client,
            &pkce,
            "s",
            &[("resource", "https://other.example/mcp")],
        ))
        .await;
    let q = query_of(&r.location());
    assert_eq!(q["error"], "invalid_target");
    let url = p
        .authorize_url(&client, &pkce, "s", &[])
        .replace("response_type=code", "response_type=token");
    let q = query_of(&browser.get(&url).await.location());
    assert_eq!(q["error"], "unsupported_response_type");
    let url = format!(
        "{}&scope=a&scope=b",
        p.authorize_url(&client, &pkce, "s", &[])
    );
    let q = query_of(&browser.get(&url).await.location());
    assert_eq!(q["error"], "invalid_request");
    // Another browser has approved nothing: a page.
    let r = Browser::new().get(&url).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.headers.get("location").is_none());
}

#[tokio::test]
async fn callback_state_is_single_use_and_bound_to_the_browser() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let mut browser = Browser::new();
    let r = browser
        .get(&p.authorize_url(&client, &Pkce::new(), "s", &[]))
        .await;
    let r = browser
        .post_form(
            &format!("{}/consent", p.url),
            &with_decision(r.form_fields(), "approve"),
        )
        .await;
    let r = browser.get(&r.location()).await;
    let callback = r.location();
    // Another browser cannot finish this login.
    let r = Browser::new().get(&callback).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.headers.get("location").is_none());
    // The state was consumed by that attempt: single use.
    let r = browser.get(&callback).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("Invalid or expired state"), "{}", r.body);
    let r = browser
        .get(&format!("{}/callback?code=x&state=never-issued", p.url))
        .await;
    assert!(r.body.contains("Invalid or expired state"));
}

#[tokio::test]
async fn provider_errors_reach_the_client() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let mut browser = Browser::new();
    let r = browser
        .get(&p.authorize_url(&client, &Pkce::new(), "s9", &[]))
        .await;
    let r = browser
        .post_form(
            &format!("{}/consent", p.url),
            &with_decision(r.form_fields(), "approve"),
        )
        .await;
    let to_provider = query_of(&r.location());
    let r = browser
        .get(&format!(
            "{}/callback?error=access_denied&state={}",
            p.url,
            urlencode(&to_provider["state"])
        ))
        .await;
    let q = query_of(&r.location());
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "s9");
}

async fn login_with_tamper(tamper: Tamper) -> Page {
    let p = TestProxy::start().await;
    p.provider.tamper(tamper);
    let client = p.public_client().await;
    let mut browser = Browser::new();
    let r = browser
        .get(&p.authorize_url(&client, &Pkce::new(), "s", &[]))
        .await;
    let r = browser
        .post_form(
            &format!("{}/consent", p.url),
            &with_decision(r.form_fields(), "approve"),
        )
        .await;
    let r = browser.get(&r.location()).await;
    browser.get(&r.location()).await
}

#[tokio::test]
async fn id_token_checks_refuse_wrong_nonce_audience_issuer_expiry_and_signature() {
    for tamper in [
        Tamper::WrongNonce,
        Tamper::WrongAudience,
        Tamper::WrongIssuer,
        Tamper::Expired,
        Tamper::BadSignature,
        Tamper::NoIdToken,
    ] {
        let page = login_with_tamper(tamper).await;
        assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{tamper:?}");
        assert!(
            page.body.contains("Login could not be verified"),
            "{tamper:?}: {}",
            page.body
        );
        assert!(page.headers.get("location").is_none());
    }
}

#[tokio::test]
async fn failed_token_exchange_says_so() {
    let page = login_with_tamper(Tamper::TokenEndpointError).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY);
    assert!(page.body.contains("Token exchange failed"));
}

#[tokio::test]
async fn discovery_naming_a_plain_http_endpoint_is_refused_on_the_login_page() {
    init_logs();
    let provider = Provider::start().await;
    provider.tamper(Tamper::PlainHttpTokenEndpoint);
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let p = TestProxy::start_on(provider, dir, &Options::default()).await;
    let client = p.public_client().await;
    let mut browser = Browser::new();
    let r = browser
        .get(&p.authorize_url(&client, &Pkce::new(), "s", &[]))
        .await;
    let r = browser
        .post_form(
            &format!("{}/consent", p.url),
            &with_decision(r.form_fields(), "approve"),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert!(r.headers.get("location").is_none());
    assert!(r.body.contains("token_endpoint"), "{}", r.body);
    assert!(
        captured_logs().contains("http://idp.example.com/token"),
        "the log names the endpoint's URL"
    );
}

#[tokio::test]
async fn userinfo_claims_are_merged_when_configured() {
    let provider = Provider::start().await;
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let opts = common::Options {
        upstream_extra: "userinfo = true".into(),
        ..Default::default()
    };
    let p = TestProxy::start_on(provider, dir, &opts).await;
    let client = p.public_client().await;
    let t = p.tokens_for(&client, &[]).await;
    let s = p
        .app()
        .grants
        .validate_access_token(t["access_token"].as_str().unwrap())
        .await
        .unwrap();
    // Userinfo adds claims; the id_token's own claims stay as they were.
    assert_eq!(s.claims["department"], "R&D");
    assert_eq!(s.claims["groups"], json!(["engineering", "admins"]));
}

// ------------------------------------------------------------ token endpoint

#[tokio::test]
async fn invariant_4_codes_are_single_use_and_replay_revokes_the_grant() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let pkce = Pkce::new();
    let q = p.login(&mut Browser::new(), &client, &pkce, &[]).await;
    let exchange = [
        ("grant_type", "authorization_code"),
        ("code", q["code"].as_str()),
        ("redirect_uri", client.redirect_uri.as_str()),
        ("code_verifier", pkce.verifier.as_str()),
    ];
    let (status, first, _) = p.token(&client, &exchange).await;
    assert_eq!(status, StatusCode::OK);
    let access = first["access_token"].as_str().unwrap();
    assert!(p.access_token_valid(access).await);
    let (status, body, _) = p.token(&client, &exchange).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    // The replay revoked everything issued with the code.
    assert!(!p.access_token_valid(access).await);
    let (status, body) = p
        .refresh(&client, first["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}

fn as_pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test]
async fn invariant_4_a_code_replay_without_the_clients_verifier_revokes_nothing() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let other = p.public_client().await;
    let pkce = Pkce::new();
    let q = p.login(&mut Browser::new(), &client, &pkce, &[]).await;
    let exchange = |verifier: &str| {
        vec![
            ("grant_type".to_string(), "authorization_code".to_string()),
            ("code".into(), q["code"].clone()),
            ("redirect_uri".into(), client.redirect_uri.clone()),
            ("code_verifier".into(), verifier.to_string()),
        ]
    };
    let (status, first, _) = p.token(&client, &as_pairs(&exchange(&pkce.verifier))).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let access = first["access_token"].as_str().unwrap();

    // Someone who saw the code (a log, a referrer) but has not the
    // client's verifier, or is another client: refused, nothing revoked.
    let wrong_verifier = Pkce::new().verifier;
    let (status, body, _) = p
        .token(&client, &as_pairs(&exchange(&wrong_verifier)))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (status, body, _) = p.token(&other, &as_pairs(&exchange(&pkce.verifier))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert!(p.access_token_valid(access).await);
    let (status, body) = p
        .refresh(&client, first["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn invariant_4_a_rotated_refresh_token_from_another_client_revokes_nothing() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let other = p.public_client().await;
    let t0 = p.tokens_for(&client, &[]).await;
    let r0 = t0["refresh_token"].as_str().unwrap().to_string();
    let (_, t1) = p.refresh(&client, &r0).await;
    let (status, t2) = p
        .refresh(&client, t1["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(status, StatusCode::OK, "{t2}");
    // r0 is rotated out; presented by another client it proves nothing
    // about the grant's client, so the grant lives on.
    let (status, body) = p.refresh(&other, &r0).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert!(
        p.access_token_valid(t2["access_token"].as_str().unwrap())
            .await
    );
}

#[tokio::test]
async fn invariant_4_racing_redemptions_of_one_code_have_one_winner() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let pkce = Pkce::new();
    let q = p.login(&mut Browser::new(), &client, &pkce, &[]).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let http = p.http.clone();
        let url = format!("{}/token", p.url);
        let form = vec![
            ("grant_type".to_string(), "authorization_code".to_string()),
            ("code".into(), q["code"].clone()),
            ("redirect_uri".into(), client.redirect_uri.clone()),
            ("code_verifier".into(), pkce.verifier.clone()),
            ("client_id".into(), client.client_id.clone()),
        ];
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .form(&form)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn invariant_4_refresh_rotates_and_reuse_of_a_rotated_token_revokes() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let t0 = p.tokens_for(&client, &[]).await;
    let r0 = t0["refresh_token"].as_str().unwrap().to_string();
    let (status, t1) = p.refresh(&client, &r0).await;
    assert_eq!(status, StatusCode::OK, "{t1}");
    let r1 = t1["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(r0, r1);
    assert!(
        p.access_token_valid(t1["access_token"].as_str().unwrap())
            .await
    );
    // The response carrying r1 may have been lost: r0 still works while r1
    // is unused.
    // An immediate duplicate is refused without harm (parallel retries)...
    let (status, body) = p.refresh(&client, &r0).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("temporarily_unavailable")
        )
    );
    assert!(
        p.access_token_valid(t1["access_token"].as_str().unwrap())
            .await
    );
    // ...and after the cool-down it is a lost-response retry, which works.
    tokio::time::sleep(
        mcp_oauth_proxy::grants::REFRESH_COOLDOWN + std::time::Duration::from_millis(100),
    )
    .await;
    let (status, t2) = p.refresh(&client, &r0).await;
    assert_eq!(status, StatusCode::OK, "{t2}");
    let r2 = t2["refresh_token"].as_str().unwrap().to_string();
    // Using the newest retires everything before it.
    let (status, t3) = p.refresh(&client, &r2).await;
    assert_eq!(status, StatusCode::OK);
    let r3 = t3["refresh_token"].as_str().unwrap().to_string();
    let a3 = t3["access_token"].as_str().unwrap().to_string();
    // r0 is now rotated out: presenting it revokes the grant.
    let (status, body) = p.refresh(&client, &r0).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert!(!p.access_token_valid(&a3).await);
    let (status, _) = p.refresh(&client, &r3).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn invariant_4_racing_refreshes_leave_one_winner_and_the_grant_intact() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let t0 = p.tokens_for(&client, &[]).await;
    let r0 = t0["refresh_token"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let http = p.http.clone();
        let url = format!("{}/token", p.url);
        let form = vec![
            ("grant_type".to_string(), "refresh_token".to_string()),
            ("refresh_token".into(), r0.clone()),
            ("client_id".into(), client.client_id.clone()),
        ];
        tasks.push(tokio::spawn(async move {
            let r = http.post(url).form(&form).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        if status == 200 {
            winners.push(body);
        }
    }
    assert!(!winners.is_empty());
    // Whichever refresh won last, the grant still works.
    let newest = winners.last().unwrap();
    assert!(
        p.access_token_valid(newest["access_token"].as_str().unwrap())
            .await
    );
    assert!(
        p.access_token_valid(t0["access_token"].as_str().unwrap())
            .await
    );
}

#[tokio::test]
async fn refresh_scope_must_be_a_subset() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let t = p.tokens_for(&client, &[("scope", "mcp read")]).await;
    let r = t["refresh_token"].as_str().unwrap();
    let (status, body, _) = p
        .token(
            &client,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", r),
                ("scope", "mcp admin"),
            ],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
    let (status, body, _) = p
        .token(
            &client,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", r),
                ("scope", "read"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "read");
}

#[tokio::test]
async fn resource_is_bound_to_the_code_and_its_tokens() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let pkce = Pkce::new();
    let mcp = format!("{}/mcp", p.url);
    let sse = format!("{}/sse", p.url);
    let q = p
        .login(&mut Browser::new(), &client, &pkce, &[("resource", &mcp)])
        .await;
    let mut exchange = vec![
        ("grant_type", "authorization_code"),
        ("code", q["code"].as_str()),
        ("redirect_uri", client.redirect_uri.as_str()),
        ("code_verifier", pkce.verifier.as_str()),
        ("resource", sse.as_str()),
    ];
    let (status, body, _) = p.token(&client, &exchange).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_target"))
    );
    exchange.pop();
    let (status, body, _) = p.token(&client, &exchange).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let s = p
        .app()
        .grants
        .validate_access_token(body["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(s.resource.as_deref(), Some(mcp.as_str()));
    let (status, body, _) = p
        .token(
            &client,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", body["refresh_token"].as_str().unwrap()),
                ("resource", &sse),
            ],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_target"))
    );
}

#[tokio::test]
async fn confidential_clients_authenticate_with_basic_or_post() {
    let p = TestProxy::start().await;
    for method in ["client_secret_basic", "client_secret_post"] {
        let client = p.confidential_client(method).await;
        let tokens = p.tokens_for(&client, &[]).await;
        assert!(tokens["access_token"].is_string());
        // client_secret_post
        let r = p
            .http
            .post(format!("{}/token", p.url))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
                ("client_id", &client.client_id),
                ("client_secret", client.client_secret.as_deref().unwrap()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // A wrong secret: 401 invalid_client, with a Basic challenge.
        let wrong = Client {
            client_secret: Some("wrong".into()),
            ..client.clone()
        };
        let (status, body, headers) = p
            .token(
                &wrong,
                &[("grant_type", "refresh_token"), ("refresh_token", "x")],
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "invalid_client");
        assert!(headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic"));
        // No secret at all.
        let none = Client {
            client_secret: None,
            ..client.clone()
        };
        let (status, _, _) = p
            .token(
                &none,
                &[("grant_type", "refresh_token"), ("refresh_token", "x")],
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn token_endpoint_errors_are_rfc6749_json_and_never_cached() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let verifier = "a".repeat(43);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![], "invalid_request"),
        (vec![("grant_type", "password")], "unsupported_grant_type"),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", "nope"),
                ("code_verifier", &verifier),
            ],
            "invalid_grant",
        ),
        (
            vec![("grant_type", "refresh_token"), ("refresh_token", "nope")],
            "invalid_grant",
        ),
        (vec![("grant_type", "refresh_token")], "invalid_request"),
    ];
    for (form, code) in cases {
        let (status, body, headers) = p.token(&client, &form).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{form:?}");
        assert_eq!(body["error"], code, "{form:?}");
        assert!(body["error_description"].is_string());
        assert_eq!(headers["cache-control"], "no-store");
    }
    let unknown = Client {
        client_id: "ghost".into(),
        ..client.clone()
    };
    let (status, body, _) = p
        .token(
            &unknown,
            &[("grant_type", "refresh_token"), ("refresh_token", "x")],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let r = p
        .http
        .post(format!("{}/token", p.url))
        .json(&json!({"grant_type": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn revocation_of_refresh_token_revokes_the_grant() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let t = p.tokens_for(&client, &[]).await;
    let r = p
        .http
        .post(format!("{}/revoke", p.url))
        .form(&[
            ("token", t["refresh_token"].as_str().unwrap()),
            ("client_id", &client.client_id),
            ("token_type_hint", "refresh_token"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        !p.access_token_valid(t["access_token"].as_str().unwrap())
            .await
    );
    let (status, _) = p
        .refresh(&client, t["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Unknown tokens are a 200 too (RFC 7009 §2.2).
    let r = p
        .http
        .post(format!("{}/revoke", p.url))
        .form(&[("token", "never-issued"), ("client_id", &client.client_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn revocation_of_access_token_and_other_clients_tokens() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let other = p.public_client().await;
    let t = p.tokens_for(&client, &[]).await;
    let access = t["access_token"].as_str().unwrap();
    // Another client cannot revoke it.
    let r = p
        .http
        .post(format!("{}/revoke", p.url))
        .form(&[("token", access), ("client_id", &other.client_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(p.access_token_valid(access).await);
    let r = p
        .http
        .post(format!("{}/revoke", p.url))
        .form(&[("token", access), ("client_id", &client.client_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!p.access_token_valid(access).await);
    // The refresh token lives on.
    let (status, _) = p
        .refresh(&client, t["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn invariant_7_only_tokens_issued_here_are_accepted() {
    let p = TestProxy::start().await;
    let client = p.public_client().await;
    let t = p.tokens_for(&client, &[]).await;
    assert!(
        p.access_token_valid(t["access_token"].as_str().unwrap())
            .await
    );
    // The provider's own tokens, and our refresh token, are not access tokens.
    for upstream in p.provider.issued_tokens() {
        assert!(!p.access_token_valid(&upstream).await, "{upstream}");
    }
    assert!(
        !p.access_token_valid(t["refresh_token"].as_str().unwrap())
            .await
    );
}

#[tokio::test]
async fn invariant_8_secrets_are_never_logged() {
    let p = TestProxy::start().await;
    let client = p.confidential_client("client_secret_basic").await;
    let pkce = Pkce::new();
    let mut browser = Browser::new();
    let q = p.login(&mut browser, &client, &pkce, &[]).await;
    let (_, t, _) = p
        .token(
            &client,
            &[
                ("grant_type", "authorization_code"),
                ("code", &q["code"]),
                ("redirect_uri", &client.redirect_uri),
                ("code_verifier", &pkce.verifier),
            ],
        )
        .await;
    let (_, t2) = p
        .refresh(&client, t["refresh_token"].as_str().unwrap())
        .await;
    let logs = captured_logs();
    assert!(logs.contains("tokens issued"), "logging is not captured");
    let mut secrets: HashSet<String> = HashSet::new();
    secrets.extend(p.provider.issued_tokens());
    secrets.insert(q["code"].clone());
    secrets.insert(pkce.verifier.clone());
    secrets.insert(client.client_secret.clone().unwrap());
    secrets.insert(UPSTREAM_CLIENT_SECRET.into());
    secrets.insert(ENCRYPTION_KEY.into());
    for t in [&t, &t2] {
        secrets.insert(t["access_token"].as_str().unwrap().into());
        secrets.insert(t["refresh_token"].as_str().unwrap().into());
    }
    for cookie in browser.cookies.values() {
        secrets.insert(cookie.clone());
    }
    for secret in secrets {
        assert!(
            !logs.contains(&secret),
            "a secret reached the log: {secret}"
        );
    }
}
