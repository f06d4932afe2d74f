//! A downstream MCP server double: records what arrives, answers like an MCP
//! server, and streams events on command.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
pub struct DownstreamState {
    pub requests: Mutex<Vec<Recorded>>,
    sessions: AtomicUsize,
    /// Released by the test to let the stream send its second event.
    pub release: Notify,
    /// Signalled when a streaming response's body is dropped (client gone).
    pub stream_closed: Notify,
    pub closed_count: AtomicUsize,
    pub delay: Mutex<Option<Duration>>,
}

#[derive(Clone)]
pub struct Downstream {
    pub url: String,
    pub state: Arc<DownstreamState>,
}

impl Downstream {
    pub async fn start() -> Downstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let state = Arc::new(DownstreamState::default());
        let app = Router::new()
            .route("/mcp", any(mcp))
            .route("/sse", get(legacy_stream))
            .route("/messages", post(legacy_message))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Downstream { url, state }
    }

    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.url)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests()
            .last()
            .cloned()
            .expect("the downstream received nothing")
    }

    pub fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = Some(d);
    }
}

type S = State<Arc<DownstreamState>>;

fn record(state: &DownstreamState, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) {
    state.requests.lock().unwrap().push(Recorded {
        method,
        uri,
        headers,
        body,
    });
}

/// Drops with the response body: tells the test the client went away.
struct CloseGuard(Arc<DownstreamState>);
impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.0.closed_count.fetch_add(1, Ordering::SeqCst);
        self.0.stream_closed.notify_waiters();
    }
}

fn event_stream(state: Arc<DownstreamState>, first: String, second: Option<String>) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(4);
    let guard = CloseGuard(state.clone());
    tokio::spawn(async move {
        let _ = tx.send(Ok(Bytes::from(first))).await;
        state.release.notified().await;
        if let Some(second) = second {
            let _ = tx.send(Ok(Bytes::from(second))).await;
        }
        // Keep the stream open until the client leaves.
        tx.closed().await;
    });
    let stream = futures_util::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        rx.recv().await.map(|item| (item, (rx, guard)))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// A request header that makes the double add a response header
/// (`x-test-answer-header: name: value`, repeatable): for answers a
/// misbehaving downstream would send.
pub const ANSWER_HEADER: &str = "x-test-answer-header";

async fn mcp(state: S, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let extra: Vec<(String, String)> = headers
        .get_all(ANSWER_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok()?.split_once(": "))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let mut response = mcp_answer(state, method, uri, headers, body).await;
    for (name, value) in extra {
        response.headers_mut().append(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            axum::http::HeaderValue::from_str(&value).unwrap(),
        );
    }
    response
}

async fn mcp_answer(
    State(state): S,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&state, method.clone(), uri, headers.clone(), body.clone());
    let delay = *state.delay.lock().unwrap();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    match method {
        Method::GET => event_stream(
            state.clone(),
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/hello\"}\n\n"
                .into(),
            None,
        ),
        Method::DELETE => StatusCode::OK.into_response(),
        _ => {
            let message: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let id = message.get("id").cloned().unwrap_or(Value::Null);
            match message.get("method").and_then(Value::as_str) {
                Some("initialize") => {
                    let n = state.sessions.fetch_add(1, Ordering::SeqCst);
                    let result = json!({"jsonrpc":"2.0","id":id,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"double","version":"1"}}});
                    ([("mcp-session-id", format!("session-{n}"))], axum::Json(result)).into_response()
                }
                Some(list @ ("tools/list" | "resources/list" | "prompts/list")) => {
                    let result = match list {
                        "tools/list" => json!({"tools": [
                            {"name": "whoami", "inputSchema": {"type": "object"}},
                            {"name": "deploy", "inputSchema": {"type": "object"}},
                            {"name": "run_sql", "inputSchema": {"type": "object"}},
                        ]}),
                        "resources/list" => json!({"resources": [
                            {"uri": "file:///docs/readme.md", "name": "readme"},
                            {"uri": "secret://db-password", "name": "db password"},
                        ]}),
                        _ => json!({"prompts": [
                            {"name": "greeting"},
                            {"name": "incident_report"},
                        ]}),
                    };
                    // A test may ask for a list longer than any real one.
                    let items: Option<usize> = headers
                        .get("x-answer-items")
                        .and_then(|v| v.to_str().ok()?.parse().ok());
                    let result = match items {
                        Some(n) => json!({"tools": (0..n).map(|i| json!({"name": format!("tool_{i}")})).collect::<Vec<_>>()}),
                        None => result,
                    };
                    let answer = json!({"jsonrpc": "2.0", "id": id, "result": result});
                    if headers.contains_key("x-answer-sse") {
                        let mut event = format!("event: message\nid: 7\ndata: {answer}\n\n");
                        // SSE lines may also end with a lone CR.
                        if headers.contains_key("x-answer-cr") {
                            event = event.replace('\n', "\r");
                        }
                        Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(Body::from(format!(": keep-alive\n\n{event}")))
                            .unwrap()
                    } else {
                        axum::Json(answer).into_response()
                    }
                }
                Some("tools/call") if message["params"]["name"] == "stream" => event_stream(
                    state.clone(),
                    "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n".to_string(),
                    Some(format!("event: message\ndata: {{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"content\":[]}}}}\n\n")),
                ),
                Some(_) => {
                    let seen: HashMap<String, String> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
                        .collect();
                    axum::Json(json!({"jsonrpc":"2.0","id":id,"result":{"headers": seen}})).into_response()
                }
                None => StatusCode::ACCEPTED.into_response(),
            }
        }
    }
}

async fn legacy_stream(State(state): S, uri: Uri, headers: HeaderMap) -> Response {
    record(&state, Method::GET, uri, headers, Bytes::new());
    event_stream(
        state.clone(),
        "event: endpoint\ndata: /messages?sessionId=legacy-1\n\n".into(),
        Some("event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n".into()),
    )
}

async fn legacy_message(State(state): S, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    record(&state, Method::POST, uri, headers, body);
    StatusCode::ACCEPTED
}
