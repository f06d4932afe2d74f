//! The JSON-RPC reader on the MCP path: DESIGN.md invariant 10 (the policy
//! decides on exactly what the downstream will execute) and the batch limits
//! of invariant 9.

mod common;

use std::time::{Duration, Instant};

use common::downstream::Downstream;
use common::*;
use serde_json::{json, Value};

struct Setup {
    proxy: TestProxy,
    downstream: Downstream,
    token: String,
}

async fn setup_with(opts: Options) -> Setup {
    let downstream = Downstream::start().await;
    let opts = Options {
        downstream_url: Some(downstream.mcp_url()),
        ..opts
    };
    let proxy = TestProxy::start_with_options(&opts).await;
    let client = proxy.public_client().await;
    let tokens = proxy.tokens_for(&client, &[]).await;
    let token = tokens["access_token"].as_str().unwrap().to_string();
    Setup {
        proxy,
        downstream,
        token,
    }
}

impl Setup {
    async fn post_raw(&self, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .proxy
            .http
            .post(format!("{}/mcp", self.proxy.url))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// A policy that lets `whoami` through and nothing else: each body below
/// reads as `whoami` (or as harmless) to a lenient reader, and as something
/// else to another.
const WHOAMI_ONLY: &str = r#"fn authorize(user, request) {
    let m = request.mcp.method;
    if m == "tools/call" && request.mcp.tool != "whoami" { return deny(403, "only whoami"); }
    if m != () && m != "tools/call" && m != "ping" && m != "initialize" { return deny(403, "not that"); }
    allow(#{ "X-User-Email": user.email })
}"#;

fn policy_options(source: &str, downstream_extra: &str) -> (Options, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.rhai");
    std::fs::write(&path, source).unwrap();
    (
        Options {
            extra: format!("[policy]\npath = \"{}\"\n", path.display()),
            downstream_extra: downstream_extra.to_string(),
            ..Default::default()
        },
        dir,
    )
}

#[tokio::test]
async fn invariant_10_messages_another_parser_reads_differently_never_reach_the_downstream() {
    let (opts, _dir) = policy_options(WHOAMI_ONLY, "");
    let s = setup_with(opts).await;
    let cases: Vec<(&[u8], i64)> = vec![
        // Go's encoding/json matches keys ignoring case: it runs `deploy`.
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","NAME":"deploy"}}"#, -32600),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"NAME":"deploy","name":"whoami"}}"#, -32600),
        // A first-wins reader runs `deploy`.
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"deploy","name":"whoami"}}"#, -32600),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"deploy","n\u0061me":"whoami"}}"#, -32600),
        // The policy would see `ping`; a case-insensitive reader a tool call.
        (br#"{"jsonrpc":"2.0","id":1,"METHOD":"tools/call","method":"ping","params":{"name":"deploy"}}"#, -32600),
        ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"whoami\"},\"param\u{17f}\":{\"name\":\"deploy\"}}".as_bytes(), -32600),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["whoami"]}}"#, -32600),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{"a":1,"a":2}}}"#, -32600),
        // Text that readers repair, truncate or continue differently.
        (b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}", -32700),
        (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"deploy\"}}", -32700),
        (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"who\xc0ami\"}}", -32700),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami\ud800"}}"#, -32700),
        (br#"{"jsonrpc":"2.0","id":1e400,"method":"ping"}"#, -32700),
    ];
    for (body, code) in cases {
        let (status, answer) = s.post_raw(body.to_vec()).await;
        let shown = String::from_utf8_lossy(body);
        assert_eq!(status, 400, "{shown}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{shown}: {answer}");
        assert_eq!(answer["jsonrpc"], "2.0");
    }
    assert!(s.downstream.requests().is_empty());
    // What the policy allows, spelt plainly, still goes through.
    let (status, _) = s
        .post_raw(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}}"#
                .to_vec(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.downstream.requests().len(), 1);
}

fn batch(n: usize, method: &str) -> Vec<u8> {
    let messages: Vec<Value> = (0..n)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": method}))
        .collect();
    serde_json::to_vec(&messages).unwrap()
}

#[tokio::test]
async fn invariant_9_batches_larger_than_max_batch_size_are_refused_and_forward_nothing() {
    let s = setup_with(Options::default()).await;
    for n in [17, 50_000] {
        let (status, answer) = s.post_raw(batch(n, "ping")).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], -32600);
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("downstream.max_batch_size (16)") || message.contains("limited to 16"),
            "{message}"
        );
    }
    assert!(s.downstream.requests().is_empty());
    let (status, _) = s.post_raw(batch(16, "ping")).await;
    assert!((200..300).contains(&status), "{status}");
    assert_eq!(s.downstream.requests().len(), 1);
}

/// A policy that costs some work per call (under the 512 operations after
/// which the deadline is checked, so a loaded machine cannot make it deny)
/// and reads more of the request than its call (so it runs for every call,
/// not once per session and call).
const BUSY_POLICY: &str = r#"fn authorize(user, request) {
    let n = 0;
    for i in 0..100 { n += i; }
    if request.mcp.method == "never" || request.path == "/never" { return deny(403, "never"); }
    allow(#{ "X-User-Email": user.email })
}"#;

/// The proxy runs on this test's single-threaded runtime, as one busy worker
/// would. While a 1024-message batch is being evaluated, an unauthenticated
/// metadata GET is answered: the policy decisions counter shows evaluation
/// still going on after the GET's answer arrived.
#[tokio::test]
async fn a_large_allowed_batch_does_not_hold_up_an_unauthenticated_metadata_get() {
    let (opts, _dir) = policy_options(BUSY_POLICY, "max_batch_size = 1024");
    let s = setup_with(opts).await;
    let url = s.proxy.url.clone();
    let token = s.token.clone();
    let body = batch(1024, "ping");
    let metrics = s.proxy.app().metrics.clone();
    let decisions = move || {
        metrics
            .policy_decisions
            .with_label_values(&["default", "allow"])
            .get()
    };
    let before = decisions();
    // The client lives on its own thread, so it keeps going even if the
    // proxy's thread is busy.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let measured = runtime.block_on(async move {
            let http = http_client();
            let batch = tokio::spawn({
                let http = http.clone();
                let url = url.clone();
                async move {
                    let r = http
                        .post(format!("{url}/mcp"))
                        .bearer_auth(token)
                        .header("content-type", "application/json")
                        .header("accept", "application/json, text/event-stream")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    r.status().as_u16()
                }
            });
            // Wait until the batch is being evaluated.
            let waiting = Instant::now();
            while decisions() < before + 20 {
                assert!(
                    waiting.elapsed() < Duration::from_secs(60),
                    "the batch never ran"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let asked = Instant::now();
            let r = http
                .get(format!("{url}/.well-known/oauth-authorization-server"))
                .send()
                .await
                .unwrap();
            let metadata_wait = asked.elapsed();
            let at_answer = decisions() - before;
            let batch_status = batch.await.unwrap();
            (
                r.status().as_u16(),
                metadata_wait,
                at_answer,
                decisions() - before,
                batch_status,
            )
        });
        let _ = done_tx.send(measured);
    });
    let (metadata_status, metadata_wait, at_answer, total, batch_status) = done_rx.await.unwrap();
    eprintln!(
        "metadata GET waited {metadata_wait:?}, answered after {at_answer} of {total} policy runs"
    );
    assert_eq!(metadata_status, 200);
    assert!((200..300).contains(&batch_status), "{batch_status}");
    assert_eq!(total, 1024);
    assert!(
        at_answer < total,
        "the GET was answered only after the whole batch was evaluated"
    );
}

/// Hides every tool but `whoami` from lists.
const LIST_ONLY_WHOAMI: &str = r#"fn authorize(user, request) {
    if request.mcp.method == "tools/call" && request.mcp.tool != "whoami" { return deny(403, "only whoami"); }
    allow()
}"#;

async fn list_tools(s: &Setup, extra_headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = s
        .proxy
        .http
        .post(format!("{}/mcp", s.proxy.url))
        .bearer_auth(&s.token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}));
    for (name, value) in extra_headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// A client reads an event stream's lines ending in CR as lines; the list
/// filter must read them the same way, or a hidden tool slips through.
#[tokio::test]
async fn a_list_answer_with_cr_line_ends_is_still_filtered() {
    let (opts, _dir) = policy_options(LIST_ONLY_WHOAMI, "");
    let s = setup_with(opts).await;
    let r = list_tools(&s, &[("x-answer-sse", "1"), ("x-answer-cr", "1")]).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("whoami"), "{text:?}");
    assert!(
        !text.contains("deploy") && !text.contains("run_sql"),
        "{text:?}"
    );
}

/// Each listed item costs a policy run: a list longer than the proxy filters
/// is refused (502 as JSON; the stream ends as an event stream), never
/// passed unfiltered.
#[tokio::test]
async fn invariant_9_list_answers_longer_than_the_filter_bound_are_refused() {
    let (opts, _dir) = policy_options(LIST_ONLY_WHOAMI, "");
    let s = setup_with(opts).await;
    let too_many = (mcp_oauth_proxy::policy::filter::MAX_LIST_ITEMS + 1).to_string();
    let r = list_tools(&s, &[("x-answer-items", &too_many)]).await;
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nextCursor"),
        "{body}"
    );
    let r = list_tools(&s, &[("x-answer-items", &too_many), ("x-answer-sse", "1")]).await;
    let text = r.text().await.unwrap_or_default();
    assert!(!text.contains("tool_1"), "an unfiltered list passed");
    // A long list within the bound is filtered as usual.
    let r = list_tools(&s, &[("x-answer-items", "2000")]).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["result"]["tools"], json!([]));
}
