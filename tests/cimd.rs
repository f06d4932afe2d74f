//! Client ID Metadata Documents: an https URL as client_id, its document as
//! the registration. (Documents are served over plain http on loopback here,
//! allowed only by `registration.insecure_metadata_documents`.)

mod common;

use axum::routing::get;
use axum::{Json, Router};
use common::*;
use serde_json::{json, Value};

/// Serves `documents` (path → JSON) on a local port; returns its origin.
async fn document_server(documents: Vec<(&'static str, Value)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let mut app = Router::new();
    for (path, doc) in documents {
        app = app.route(path, get(move || async move { Json(doc) }));
    }
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

fn insecure() -> Options {
    Options {
        // Lands inside [registration].
        extra: "insecure_metadata_documents = true\n".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_client_identified_by_its_metadata_document_signs_in_and_refreshes() {
    let redirect = "http://127.0.0.1:33418/callback";
    // The document must name its own URL, so build it once the port is known.
    let holder = std::sync::Arc::new(std::sync::Mutex::new(Value::Null));
    let served = holder.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let app = Router::new().route(
        "/mcp-client.json",
        get(move || {
            let doc = served.lock().unwrap().clone();
            async move { ([("cache-control", "max-age=600")], Json(doc)) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client_id = format!("{origin}/mcp-client.json");
    *holder.lock().unwrap() = json!({
        "client_id": client_id,
        "client_name": "Document Client",
        "redirect_uris": [redirect],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "none",
    });

    let p = TestProxy::start_with_options(&insecure()).await;
    let meta: Value = p
        .http
        .get(format!("{}/.well-known/oauth-authorization-server", p.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["client_id_metadata_document_supported"], true);

    let client = Client {
        client_id: client_id.clone(),
        client_secret: None,
        redirect_uri: redirect.into(),
    };
    // The consent page names the document's client.
    let page = Browser::new()
        .get(&p.authorize_url(&client, &Pkce::new(), "s", &[]))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Document Client"));
    let tokens = p.tokens_for(&client, &[]).await;
    assert!(
        p.access_token_valid(tokens["access_token"].as_str().unwrap())
            .await
    );
    let (status, refreshed) = p
        .refresh(&client, tokens["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(status, 200, "{refreshed}");
    // A redirect the document does not list is refused with a page.
    let other = Client {
        redirect_uri: "http://127.0.0.1:33418/elsewhere".into(),
        ..client.clone()
    };
    let page = Browser::new()
        .get(&p.authorize_url(&other, &Pkce::new(), "s", &[]))
        .await;
    assert_eq!(page.status, 400);
    assert!(page.headers.get("location").is_none());
}

#[tokio::test]
async fn documents_that_do_not_name_themselves_or_want_secrets_are_refused() {
    let origin = document_server(vec![
        ("/impostor.json", json!({"client_id": "https://trusted.example/client.json", "redirect_uris": ["http://127.0.0.1:1/cb"]})),
        ("/secret.json", Value::Null),
    ])
    .await;
    let p = TestProxy::start_with_options(&insecure()).await;
    let impostor = Client {
        client_id: format!("{origin}/impostor.json"),
        client_secret: None,
        redirect_uri: "http://127.0.0.1:1/cb".into(),
    };
    let page = Browser::new()
        .get(&p.authorize_url(&impostor, &Pkce::new(), "s", &[]))
        .await;
    assert_eq!(page.status, 400);
    assert!(
        page.body
            .contains("client_id is not the URL it was fetched from"),
        "{}",
        page.body
    );
    let missing = Client {
        client_id: format!("{origin}/nothing-here.json"),
        ..impostor.clone()
    };
    let page = Browser::new()
        .get(&p.authorize_url(&missing, &Pkce::new(), "s", &[]))
        .await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("could not be fetched"), "{}", page.body);
    // At the token endpoint the same client is invalid_client.
    let (status, body, _) = p
        .token(
            &impostor,
            &[("grant_type", "refresh_token"), ("refresh_token", "x")],
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (401, Some("invalid_client"))
    );
}

#[tokio::test]
async fn without_the_development_switch_only_public_https_documents_are_fetched() {
    let origin = document_server(vec![("/c.json", json!({}))]).await;
    let p = TestProxy::start().await;
    let client = Client {
        client_id: format!("{origin}/c.json"),
        client_secret: None,
        redirect_uri: "http://127.0.0.1:1/cb".into(),
    };
    let page = Browser::new()
        .get(&p.authorize_url(&client, &Pkce::new(), "s", &[]))
        .await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("must use https"), "{}", page.body);
    // https to a loopback address: refused before any request is made.
    let local = Client {
        client_id: "https://127.0.0.1/c.json".into(),
        ..client
    };
    let page = Browser::new()
        .get(&p.authorize_url(&local, &Pkce::new(), "s", &[]))
        .await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("non-public address"), "{}", page.body);
}

#[tokio::test]
async fn fetch_failures_tell_the_caller_nothing_about_the_internal_network() {
    let origin = document_server(vec![("/broken.json", json!({"not": "served as 200"}))]).await;
    let closed_port = free_port();
    let p = TestProxy::start_with_options(&insecure()).await;
    let public = TestProxy::start().await;
    let cases = [
        // A closed port, a port that answers 404: one and the same answer.
        (&p, format!("http://127.0.0.1:{closed_port}/c.json")),
        (&p, format!("{origin}/missing.json")),
        // Without the development switch a name resolving to loopback is
        // refused, without saying what it resolved to.
        (&public, format!("https://localhost:{closed_port}/c.json")),
    ];
    for (proxy, client_id) in cases {
        let client = Client {
            client_id: client_id.clone(),
            client_secret: None,
            redirect_uri: "http://127.0.0.1:1/cb".into(),
        };
        let page = Browser::new()
            .get(&proxy.authorize_url(&client, &Pkce::new(), "s", &[]))
            .await;
        assert_eq!(page.status, 400, "{client_id}");
        let (_, token_error, _) = proxy
            .token(
                &client,
                &[("grant_type", "refresh_token"), ("refresh_token", "x")],
            )
            .await;
        let description = token_error["error_description"]
            .as_str()
            .unwrap()
            .to_string();
        for text in [page.body.as_str(), description.as_str()] {
            assert!(text.contains("could not be fetched"), "{client_id}: {text}");
            for detail in [
                "refused",
                "tcp",
                "connect",
                "404",
                "status",
                "127.0.0.1",
                "::1",
                "error sending",
                &closed_port.to_string(),
            ] {
                // The client_id itself is not echoed on the page either.
                assert!(
                    !text.to_lowercase().contains(detail),
                    "{client_id}: `{detail}` in {text}"
                );
            }
        }
    }
}
