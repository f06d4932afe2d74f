use super::*;
use crate::store::sqlite::SqliteStore;

fn signer() -> IdentityAssertions {
    let store: SharedStore = {
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        Arc::new(SqliteStore::open(&dir.path().join("keys.db")).unwrap())
    };
    IdentityAssertions::new(
        store,
        Keys::new([9; 32]),
        "https://proxy.example",
        &IdentityAssertionConfig::default(),
    )
}

fn session() -> Session {
    let mut claims = serde_json::Map::new();
    claims.insert("name".into(), "Alice".into());
    claims.insert("groups".into(), serde_json::json!(["eng", "ops"]));
    Session {
        grant_id: "g".into(),
        token_hash: "h".into(),
        client_id: "c".into(),
        sub: "alice".into(),
        email: Some("alice@example.com".into()),
        claims,
        upstream: Default::default(),
        resource: None,
        scope: None,
        expires_at: i64::MAX,
        client_name: None,
        memo: Default::default(),
        confirmed: Default::default(),
    }
}

async fn verify(signer: &IdentityAssertions, jwt: &str, audience: &str) -> Result<Value, String> {
    let (jwks, _) = signer.jwks().await.unwrap();
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks).unwrap();
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| e.to_string())?;
    let jwk = set
        .find(header.kid.as_deref().unwrap_or_default())
        .ok_or("unknown kid")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&[audience]);
    validation.set_issuer(&["https://proxy.example"]);
    jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn an_assertion_verifies_against_the_jwks_with_the_claims_of_the_session() {
    let signer = signer();
    let jwt = signer
        .sign(
            &Identity::of(&session()),
            "http://mcp.internal/mcp",
            Some("r-1"),
        )
        .await
        .unwrap();
    let claims = verify(&signer, &jwt, "http://mcp.internal/mcp")
        .await
        .unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["name"], "Alice");
    assert_eq!(claims["groups"], serde_json::json!(["eng", "ops"]));
    assert_eq!(claims["request_id"], "r-1");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        60
    );
    assert!(verify(&signer, &jwt, "http://other/mcp").await.is_err());
    let other = signer
        .sign(&Identity::of(&session()), "a", None)
        .await
        .unwrap();
    let jti = |jwt: &str| {
        let payload = jwt.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        claims["jti"].as_str().unwrap().to_string()
    };
    assert_ne!(jti(&jwt), jti(&other));
}

#[tokio::test]
async fn only_placeholders_are_replaced_and_an_outcome_without_one_is_left_alone() {
    let signer = Arc::new(signer());
    let route = RouteAssertions {
        signer: signer.clone(),
        audience: "aud".into(),
    };
    let name = axum::http::HeaderName::from_static("x-identity-assertion");
    let mut outcome = PolicyOutcome {
        headers: vec![
            (name.clone(), placeholder()),
            (
                axum::http::HeaderName::from_static("x-user-sub"),
                HeaderValue::from_static("alice"),
            ),
        ]
        .into(),
        strip: Arc::new(|_| false),
    };
    route
        .fill_in(&mut outcome, &session(), || None)
        .await
        .unwrap();
    let jwt = outcome.headers[0].1.to_str().unwrap().to_string();
    assert!(verify(&signer, &jwt, "aud").await.is_ok());
    assert_eq!(outcome.headers[1].1, "alice");
    let before = outcome.headers.clone();
    route
        .fill_in(&mut outcome, &session(), || None)
        .await
        .unwrap();
    assert_eq!(outcome.headers, before);
}

#[test]
fn a_value_a_script_writes_is_never_the_placeholder() {
    let text = PLACEHOLDER.to_str().unwrap();
    assert!(text.len() > 40);
    assert!(!is_placeholder(&HeaderValue::from_static(
        "identity-assertion"
    )));
}
