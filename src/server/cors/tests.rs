use std::convert::Infallible;

use axum::body::Body;
use axum::http::StatusCode;
use tower::{Layer, ServiceExt};

use super::*;
use crate::server::stack::CorsLists;

const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::DELETE, Method::OPTIONS];

fn allowed_headers() -> Vec<HeaderName> {
    vec![
        header::CONTENT_TYPE,
        header::AUTHORIZATION,
        HeaderName::from_static("mcp-protocol-version"),
    ]
}

fn exposed_headers() -> Vec<HeaderName> {
    vec![
        HeaderName::from_static("mcp-session-id"),
        header::WWW_AUTHENTICATE,
    ]
}

const ALLOWED: &str = "https://app.example";

/// The two rule sets the proxy uses: its OAuth endpoints' (any origin) and
/// an MCP route's (listed origins, exposed headers) — ours and tower-http's.
fn rule_sets() -> Vec<(CorsRules, tower_http::cors::CorsLayer)> {
    // The OAuth endpoints', with the lists the proxy serves.
    let oauth = CorsLists::oauth();
    let any = (
        oauth.any_origin(),
        tower_http::cors::CorsLayer::new()
            .allow_origin(tower_http::cors::Any)
            .allow_methods(oauth.methods.clone())
            .allow_headers(oauth.allowed_headers.clone())
            .max_age(oauth.max_age),
    );
    let origins = vec![
        HeaderValue::from_static(ALLOWED),
        HeaderValue::from_static("http://localhost:6274"),
    ];
    // An MCP route's, with the lists the proxy serves.
    let mcp = CorsLists::mcp();
    let listed = (
        mcp.only(origins.clone()),
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods(mcp.methods.clone())
            .allow_headers(mcp.allowed_headers.clone())
            .expose_headers(mcp.exposed_headers.clone())
            .max_age(mcp.max_age),
    );
    vec![any, listed]
}

/// Answers with headers a downstream might send, CORS ones among them.
async fn downstream(request: Request<Body>) -> Result<Response<Body>, Infallible> {
    let mut response = Response::new(Body::from("answer"));
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    if request.uri().path() == "/with-headers" {
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-secret"),
        );
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn requests() -> Vec<Request<Body>> {
    let mut all = Vec::new();
    for method in [
        Method::GET,
        Method::POST,
        Method::DELETE,
        Method::OPTIONS,
        Method::PUT,
    ] {
        for path in ["/mcp", "/with-headers"] {
            for origins in [
                vec![],
                vec![ALLOWED],
                vec!["https://other.example"],
                vec!["null"],
                vec!["https://APP.example"],
                vec![ALLOWED, "https://other.example"],
                vec!["https://other.example", ALLOWED],
            ] {
                for preflight in [false, true] {
                    let mut request = Request::builder().method(method.clone()).uri(path);
                    for origin in &origins {
                        request = request.header(header::ORIGIN, *origin);
                    }
                    if preflight {
                        request = request
                            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
                            .header(
                                header::ACCESS_CONTROL_REQUEST_HEADERS,
                                "content-type,authorization",
                            );
                    }
                    all.push(request.body(Body::empty()).unwrap());
                }
            }
        }
    }
    all
}

fn describe(request: &Request<Body>) -> String {
    format!(
        "{} {} {:?}",
        request.method(),
        request.uri(),
        request.headers()
    )
}

/// Status, then every header's values in order, by name.
async fn seen(response: Response<Body>) -> (StatusCode, Vec<(String, Vec<HeaderValue>)>, Vec<u8>) {
    let status = response.status();
    let mut names: Vec<&HeaderName> = response.headers().keys().collect();
    names.sort_by_key(|n| n.as_str());
    let headers = names
        .into_iter()
        .map(|n| {
            (
                n.to_string(),
                response.headers().get_all(n).iter().cloned().collect(),
            )
        })
        .collect();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

#[tokio::test]
async fn every_answer_is_the_one_tower_http_gives_for_the_same_rules() {
    let mut compared = 0;
    for (ours, theirs) in rule_sets() {
        let ours = ours.layer().layer(tower::service_fn(downstream));
        let theirs = theirs.layer(tower::service_fn(downstream));
        for (request, twin) in requests().into_iter().zip(requests()) {
            let what = describe(&request);
            let mine = seen(ours.clone().oneshot(request).await.unwrap()).await;
            let expected = seen(theirs.clone().oneshot(twin).await.unwrap()).await;
            assert_eq!(mine, expected, "{what}");
            compared += 1;
        }
    }
    assert_eq!(compared, 2 * 5 * 2 * 7 * 2);
}

#[tokio::test]
async fn a_preflight_is_answered_without_the_service_and_others_reach_it() {
    let rules = CorsRules::any_origin(&METHODS, &allowed_headers(), Duration::from_secs(60))
        .only_origins(vec![HeaderValue::from_static(ALLOWED)])
        .exposing(&exposed_headers());
    let refuse_all = tower::service_fn(|_request: Request<Body>| async {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        Ok::<_, Infallible>(response)
    });
    let service = rules.layer().layer(refuse_all);
    let preflight = Request::options("/mcp")
        .header(header::ORIGIN, ALLOWED)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .body(Body::empty())
        .unwrap();
    let answer = service.clone().oneshot(preflight).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        answer.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        ALLOWED
    );
    assert_eq!(
        answer.headers()[header::ACCESS_CONTROL_ALLOW_METHODS],
        "GET,POST,DELETE,OPTIONS"
    );
    assert_eq!(answer.headers()[header::ACCESS_CONTROL_MAX_AGE], "60");
    let call = Request::post("/mcp")
        .header(header::ORIGIN, "https://other.example")
        .body(Body::empty())
        .unwrap();
    let answer = service.oneshot(call).await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    assert!(answer
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
    assert_eq!(
        answer.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS],
        "mcp-session-id,www-authenticate"
    );
    assert_eq!(answer.headers()[header::VARY], VARY);
}
