//! `server.workers = 2`: the public listener is served by two worker
//! threads, each with its own runtime and listener on the one port. Which
//! thread served a request is read by an embedding layer
//! (`Hook::AfterAuthentication`): a layer runs on the thread that serves
//! the connection, so its thread name (`mcp-worker-<i>`) says which worker
//! accepted it.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use common::downstream::Downstream;
use common::*;
use mcp_oauth_proxy::embed::{Hook, Proxy, Running};
use serde_json::{json, Value};
use tower::util::MapRequestLayer;

/// Each request's `x-connection` tag → the thread that served it.
type Served = Arc<Mutex<BTreeMap<String, String>>>;

struct Setup {
    endpoint: Endpoint,
    running: Running,
    served: Served,
    token: String,
    _downstream: Downstream,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    init_logs();
    let provider = Provider::start().await;
    let downstream = Downstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = config_toml(
        free_port(),
        &provider.issuer,
        &dir.path().join("proxy.db"),
        &Options {
            downstream_url: Some(downstream.mcp_url()),
            server_extra: "workers = 2\n".into(),
            ..Default::default()
        },
    );
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, toml).unwrap();
    let served = Served::default();
    let seen = served.clone();
    let running = Proxy::from_config_file(&config)
        .unwrap()
        .layer(
            Hook::AfterAuthentication,
            MapRequestLayer::new(move |request: http::Request<Body>| {
                let tag = request
                    .headers()
                    .get("x-connection")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let thread = std::thread::current().name().unwrap_or("").to_string();
                seen.lock().unwrap().insert(tag, thread);
                request
            }),
        )
        .start()
        .await
        .unwrap();
    let endpoint = Endpoint {
        url: format!("http://{}", running.addr),
        provider,
        http: http_client(),
    };
    let client = endpoint.public_client().await;
    let tokens = endpoint.tokens_for(&client, &[]).await;
    let token = tokens["access_token"].as_str().unwrap().to_string();
    Setup {
        endpoint,
        running,
        served,
        token,
        _downstream: downstream,
        _dir: dir,
    }
}

impl Setup {
    /// A tool call on a connection of its own, tagged `tag`.
    async fn call_on_new_connection(&self, tag: &str, tool: &str) -> reqwest::Response {
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        fresh
            .post(format!("{}/mcp", self.endpoint.url))
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("x-connection", tag)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}}))
            .send()
            .await
            .unwrap()
    }

    /// How many tagged requests each thread served.
    fn threads(&self) -> BTreeMap<String, usize> {
        let mut threads = BTreeMap::new();
        for thread in self.served.lock().unwrap().values() {
            *threads.entry(thread.clone()).or_default() += 1;
        }
        threads
    }
}

#[tokio::test]
async fn two_workers_each_accept_and_serve_connections() {
    let s = setup().await;
    // New connections are spread by the kernel over the two listeners: of
    // 32, each worker gets some (the chance that one gets none is 2^-31).
    for i in 0..32 {
        let r = s.call_on_new_connection(&i.to_string(), "whoami").await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert!(body["result"].is_object(), "{body}");
    }
    let threads = s.threads();
    assert_eq!(
        threads.keys().collect::<Vec<_>>(),
        ["mcp-worker-0", "mcp-worker-1"],
        "{threads:?}"
    );
    assert_eq!(threads.values().sum::<usize>(), 32);
    s.running.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_with_streams_open_on_both_workers_ends_within_the_grace_period() {
    // The test configuration sets server.shutdown_grace = "1s".
    let s = setup().await;
    let mut streams = Vec::new();
    for i in 0..16 {
        let mut r = s.call_on_new_connection(&i.to_string(), "stream").await;
        assert_eq!(r.status(), 200);
        // The first event: the stream is open, held by the downstream.
        let first = r.chunk().await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&first).contains("notifications/progress"));
        streams.push(r);
    }
    let threads = s.threads();
    assert_eq!(threads.len(), 2, "streams on both workers: {threads:?}");
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), s.running.shutdown())
        .await
        .expect("shutdown ends")
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "the open streams had the grace period: {took:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "the grace period bounds the shutdown: {took:?}"
    );
    // Every stream was closed by the end of it.
    for mut stream in streams {
        let rest = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(Some(_)) = stream.chunk().await {}
        })
        .await;
        assert!(rest.is_ok(), "a stream outlived the shutdown");
    }
}
