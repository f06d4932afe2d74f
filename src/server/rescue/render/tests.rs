use std::time::Duration;

use axum::body::to_bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use url::Url;

use crate::error::{
    AppError, FramingError, OAuthError, PageError, ProxyError, RateLimited, RedirectError,
};

async fn body_text(response: Response) -> String {
    let bytes = to_bytes(response.into_body(), 100_000).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn body_json(response: Response) -> Value {
    serde_json::from_str(&body_text(response).await).unwrap()
}

fn header_of(response: &Response, name: header::HeaderName) -> Option<&str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

fn limited(retry_after: Duration) -> RateLimited {
    RateLimited {
        limit: "browser",
        retry_after,
    }
}

/// Everything logged while `f` runs, on this thread.
fn logged_while<T>(f: impl FnOnce() -> T) -> (T, String) {
    crate::server::test_logs::logged_while(tracing::Level::DEBUG, f)
}

// ------------------------------------------------------------ OAuth JSON

#[tokio::test]
async fn oauth_errors_are_json_that_is_never_cached() {
    let response = OAuthError::invalid_request("client_id is missing").into_response();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        header_of(&response, header::CONTENT_TYPE),
        Some("application/json")
    );
    assert_eq!(
        header_of(&response, header::CACHE_CONTROL),
        Some("no-store")
    );
    assert_eq!(header_of(&response, header::PRAGMA), Some("no-cache"));
    assert_eq!(header_of(&response, header::WWW_AUTHENTICATE), None);
    assert_eq!(header_of(&response, header::RETRY_AFTER), None);
    assert_eq!(
        body_json(response).await,
        json!({ "error": "invalid_request", "error_description": "client_id is missing" })
    );
}

#[tokio::test]
async fn invalid_client_after_basic_carries_the_basic_challenge() {
    let response = OAuthError::invalid_client("unknown client; register again")
        .with_basic_challenge()
        .into_response();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header_of(&response, header::WWW_AUTHENTICATE),
        Some("Basic realm=\"mcp-oauth-proxy\"")
    );
    assert_eq!(body_json(response).await["error"], "invalid_client");
}

#[tokio::test]
async fn a_rate_limited_oauth_error_says_when_to_retry() {
    let response = OAuthError::from(limited(Duration::from_millis(1500))).into_response();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header_of(&response, header::RETRY_AFTER), Some("2"));
    let body = body_json(response).await;
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(
        body["error_description"],
        "too many requests (limits.browser); retry after 2 s"
    );
}

#[tokio::test]
async fn a_server_error_keeps_its_cause_for_the_log_alone() {
    let (error, at_construction) =
        logged_while(|| OAuthError::server_error("grant data could not be opened", &"bad seal"));
    assert_eq!(
        at_construction, "",
        "an error is logged where it is rendered"
    );
    let (response, at_rendering) = logged_while(|| error.into_response());
    assert_eq!(at_rendering.lines().count(), 1, "{at_rendering}");
    assert!(at_rendering.contains("ERROR"), "{at_rendering}");
    assert!(at_rendering.contains("grant data could not be opened"));
    assert!(at_rendering.contains("error=bad seal"), "{at_rendering}");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = body_text(response).await;
    assert!(
        !body.contains("bad seal"),
        "the cause reached the client: {body}"
    );
    assert!(body.contains("\"error\":\"server_error\""));
}

#[tokio::test]
async fn a_client_error_logs_nothing_when_rendered() {
    let (_, logged) =
        logged_while(|| OAuthError::invalid_grant("the code was used already").into_response());
    assert_eq!(logged, "");
}

// ------------------------------------------------------------ HTML pages

#[tokio::test]
async fn error_pages_are_html_with_their_text_escaped() {
    let response = AppError::from(PageError::bad_request(
        "<b>Unknown</b> application",
        "client \"x\" & <script>alert(1)</script>",
    ))
    .into_response();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        header_of(&response, header::CONTENT_TYPE),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(header_of(&response, header::X_FRAME_OPTIONS), Some("DENY"));
    assert_eq!(
        header_of(&response, header::CACHE_CONTROL),
        Some("no-store")
    );
    assert_eq!(header_of(&response, header::RETRY_AFTER), None);
    let html = body_text(response).await;
    assert!(html.contains("<h1>&lt;b&gt;Unknown&lt;/b&gt; application</h1>"));
    assert!(html.contains("client &quot;x&quot; &amp; &lt;script&gt;"));
    assert!(!html.contains("<script>"));
}

#[tokio::test]
async fn a_rate_limited_page_says_when_to_retry() {
    let response = PageError::from(limited(Duration::from_secs(1))).into_response();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header_of(&response, header::RETRY_AFTER), Some("1"));
    let html = body_text(response).await;
    assert!(html.contains("Wait 1 second and try again."), "{html}");
}

#[tokio::test]
async fn an_internal_page_keeps_its_cause_for_the_log_alone() {
    let (error, at_construction) =
        logged_while(|| PageError::internal("creating the grant failed", &"disk full"));
    assert_eq!(at_construction, "");
    let (response, at_rendering) = logged_while(|| AppError::from(error).into_response());
    assert_eq!(at_rendering.lines().count(), 1, "{at_rendering}");
    assert!(at_rendering.contains("ERROR") && at_rendering.contains("creating the grant failed"));
    assert!(at_rendering.contains("error=disk full"), "{at_rendering}");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let html = body_text(response).await;
    assert!(html.contains("Something went wrong"));
    assert!(!html.contains("disk full"));
}

// ------------------------------------------------------------ redirects

fn redirect_error(redirect_uri: &str, state: Option<&str>) -> RedirectError {
    RedirectError {
        redirect_uri: redirect_uri.into(),
        code: "access_denied",
        description: "the user denied the request".into(),
        state: state.map(str::to_string),
        issuer: "https://proxy.example".into(),
    }
}

#[tokio::test]
async fn redirect_errors_carry_error_description_state_and_iss() {
    let response = AppError::from(redirect_error("https://app.example/cb?keep=1", Some("s&1")))
        .into_response();
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(
        header_of(&response, header::CACHE_CONTROL),
        Some("no-store")
    );
    let location = Url::parse(header_of(&response, header::LOCATION).unwrap()).unwrap();
    assert_eq!(location.path(), "/cb");
    let query: Vec<(String, String)> = location.query_pairs().into_owned().collect();
    let expected = [
        ("keep", "1"),
        ("error", "access_denied"),
        ("error_description", "the user denied the request"),
        ("state", "s&1"),
        ("iss", "https://proxy.example"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(query, expected);
}

#[tokio::test]
async fn a_redirect_without_state_sends_none() {
    let response = redirect_error("https://app.example/cb", None).into_response();
    let location = Url::parse(header_of(&response, header::LOCATION).unwrap()).unwrap();
    assert!(location.query_pairs().all(|(k, _)| k != "state"));
    assert!(location.query_pairs().any(|(k, _)| k == "iss"));
}

#[tokio::test]
async fn a_redirect_uri_that_is_no_url_becomes_a_page() {
    let response = redirect_error("not a url", Some("s")).into_response();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(header_of(&response, header::LOCATION), None);
    assert_eq!(
        header_of(&response, header::CONTENT_TYPE),
        Some("text/html; charset=utf-8")
    );
    assert!(body_text(response).await.contains("Invalid redirect URI"));
}

// ------------------------------------------------------------ JSON-RPC

#[tokio::test]
async fn json_rpc_errors_have_a_null_id_and_the_failure_status() {
    let response = ProxyError::BadRequest("no body".into()).into_response();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        body_json(response).await,
        json!({
            "jsonrpc": "2.0",
            "error": { "code": -32600, "message": "bad request: no body" },
            "id": null,
        })
    );
}

#[tokio::test]
async fn a_policy_denial_answers_with_the_denied_calls_id() {
    let response = ProxyError::PolicyDenied {
        status: StatusCode::FORBIDDEN,
        reason: "tool not allowed".into(),
        id: Some(json!(7)),
    }
    .into_response();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = body_json(response).await;
    assert_eq!(body["id"], 7);
    assert_eq!(body["error"]["code"], -32003);
    assert_eq!(body["error"]["message"], "tool not allowed");
}

#[tokio::test]
async fn unauthorized_without_a_token_challenges_without_invalid_token() {
    let response = ProxyError::Unauthorized {
        resource_metadata: "https://p.example/.well-known/oauth-protected-resource/mcp".into(),
        token_sent: false,
        reason: "no token",
    }
    .into_response();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header_of(&response, header::WWW_AUTHENTICATE),
        Some("Bearer resource_metadata=\"https://p.example/.well-known/oauth-protected-resource/mcp\"")
    );
    let body = body_json(response).await;
    assert_eq!(body["id"], Value::Null);
    assert_eq!(body["error"]["code"], -32001);
}

#[tokio::test]
async fn rate_limited_and_method_not_allowed_carry_their_headers() {
    let response = ProxyError::from(limited(Duration::from_secs(3))).into_response();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header_of(&response, header::RETRY_AFTER), Some("3"));
    let response = ProxyError::MethodNotAllowed.into_response();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        header_of(&response, header::ALLOW),
        Some("GET, POST, DELETE")
    );
}

#[tokio::test]
async fn the_proxys_own_failures_log_at_warn_and_refusals_at_debug() {
    let (_, failed) =
        logged_while(|| ProxyError::DownstreamTimeout(Duration::from_secs(5)).into_response());
    assert!(failed.contains("WARN") && failed.contains("MCP request failed"));
    let (_, refused) = logged_while(|| ProxyError::SessionNotFound.into_response());
    assert!(refused.contains("DEBUG") && refused.contains("MCP request refused"));
}

// ------------------------------------------------------------ framing

#[tokio::test]
async fn ambiguous_framing_is_refused_and_closes_the_connection() {
    let response = FramingError("Content-Length is sent more than once").into_response();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(header_of(&response, header::CONNECTION), Some("close"));
    assert_eq!(
        body_text(response).await,
        "ambiguous request framing: Content-Length is sent more than once\n"
    );
}
