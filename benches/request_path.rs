//! The request path's hot pieces, one at a time: `cargo bench --bench request_path`.
//!
//! What `scripts/bench.sh` measures end to end (against nginx), split so
//! that a regression in one piece shows without the load test: a token
//! cache hit (`Authenticate`), the header rewrite for the downstream
//! (a 1 KB provider token forwarded), the policy decision for a session
//! that has made a request before (default policy: remembered per session;
//! per-tool policy: remembered per session and call; a policy that reads
//! a header: run per request), the HTTP/1.1 server's head parse over a
//! pipelined connection, and one round trip to a loopback downstream with the
//! forwarder's client and with hyper-util's pooled client it replaced, and
//! what a layer of the stack costs as a `Checkpoint` and as a `Gate`, and
//! an MCP endpoint's CORS on a call (ours, and tower-http's it replaced),
//! and what an atomic reference count costs against a plain one.
//! Reference numbers: tests/bench/README.md.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use mcp_oauth_proxy::bench_support::{
    answer_at_once, clock_asked_in_one_poll, parse_heads, CachedDecision, CorsCall, CorsLists,
    DownstreamRoundTrip, HeaderRewrite, TokenCacheHit,
};
use mcp_oauth_proxy::checkpoint::{gate_layer, Checkpoint, CheckpointLayer, Gate};
use tower::{Layer, Service, ServiceExt};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let hit = runtime.block_on(TokenCacheHit::new());
    assert!(runtime.block_on(hit.lookup()), "the token is cached");
    c.bench_function("token_cache/hit", |b| {
        b.iter(|| black_box(runtime.block_on(hit.lookup())))
    });

    let rewrite = HeaderRewrite::new();
    assert!(rewrite
        .rewrite()
        .iter()
        .any(|(name, _)| name == "x-user-email"));
    c.bench_function("headers/downstream_rewrite", |b| {
        b.iter(|| black_box(rewrite.rewrite()))
    });

    for (name, path) in [
        ("default", None),
        ("per-tool", Some(Path::new("policies/per-tool.rhai"))),
        (
            "per-request",
            Some(Path::new("tests/bench/policies/per-request.rhai")),
        ),
    ] {
        let decision = CachedDecision::new(path);
        assert!(decision.decide(), "{name} allows the call");
        c.bench_function(&format!("policy/cached_session/{name}"), |b| {
            b.iter(|| black_box(decision.decide()))
        });
    }

    let head = "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:8787\r\nContent-Type: application/json\r\n\
        Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n\
        Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\r\nContent-Length: 200\r\n\r\n";
    let request = format!("{head}{}", "x".repeat(200));
    let pipeline = request.repeat(16);
    assert_eq!(parse_heads(pipeline.as_bytes()), 16);
    c.bench_function("http1/parse_16_heads", |b| {
        b.iter(|| black_box(parse_heads(pipeline.as_bytes())))
    });
}

/// One request to a loopback downstream and its 200-byte answer, on a kept
/// alive connection: the forwarder's client against hyper-util's pooled
/// client it replaced. Both include the downstream's own work (the same for
/// both), so the difference is what the client costs.
fn downstream(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let round_trip = runtime
        .block_on(DownstreamRoundTrip::start())
        .expect("a loopback downstream");
    assert_eq!(runtime.block_on(round_trip.driven()), 200);
    assert_eq!(runtime.block_on(round_trip.tasked()), 200);
    c.bench_function("downstream/round_trip/driven", |b| {
        b.iter(|| black_box(runtime.block_on(round_trip.driven())))
    });
    c.bench_function("downstream/round_trip/hyper_util_pooled", |b| {
        b.iter(|| black_box(runtime.block_on(round_trip.tasked())))
    });
}

/// A layer that checks one header, refusing requests without it.
#[derive(Clone)]
struct HasHeader;

#[derive(Debug)]
struct Refused;

impl<S> Checkpoint<S, Request<()>> for HasHeader
where
    S: Service<Request<()>, Response = u32, Error = Refused> + Send + 'static,
    S::Future: Send,
{
    async fn run(self, mut inner: S, request: Request<()>) -> Result<u32, Refused> {
        if !request.headers().contains_key("x-check") {
            return Err(Refused);
        }
        inner.call(request).await
    }
}

impl Gate<Request<()>> for HasHeader {
    type Refusal = Refused;

    fn admit(&self, request: &mut Request<()>) -> Result<(), Refused> {
        if request.headers().contains_key("x-check") {
            Ok(())
        } else {
            Err(Refused)
        }
    }
}

/// Six layers that only read the request over a trivial service, served
/// as the router serves a request (a clone of the stack, polled ready,
/// called once): as checkpoints (a boxed future each, and a copy of the
/// stack below) and as gates (the inner service's future as it is).
fn layers(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let end = tower::service_fn(|_: Request<()>| async { Ok::<u32, Refused>(200) });
    let request = || {
        Request::builder()
            .header("x-check", "1")
            .body(())
            .expect("a request")
    };
    let checkpoints = tower::ServiceBuilder::new()
        .layer(CheckpointLayer::new(HasHeader))
        .layer(CheckpointLayer::new(HasHeader))
        .layer(CheckpointLayer::new(HasHeader))
        .layer(CheckpointLayer::new(HasHeader))
        .layer(CheckpointLayer::new(HasHeader))
        .layer(CheckpointLayer::new(HasHeader))
        .service(end);
    let gates = tower::ServiceBuilder::new()
        .layer(gate_layer(HasHeader))
        .layer(gate_layer(HasHeader))
        .layer(gate_layer(HasHeader))
        .layer(gate_layer(HasHeader))
        .layer(gate_layer(HasHeader))
        .layer(gate_layer(HasHeader))
        .service(end);
    assert_eq!(
        runtime
            .block_on(checkpoints.clone().oneshot(request()))
            .ok(),
        Some(200)
    );
    assert_eq!(
        runtime.block_on(gates.clone().oneshot(request())).ok(),
        Some(200)
    );
    c.bench_function("layers/six_checkpoints", |b| {
        b.iter(|| {
            black_box(
                runtime
                    .block_on(checkpoints.clone().oneshot(request()))
                    .ok(),
            )
        })
    });
    c.bench_function("layers/six_gates", |b| {
        b.iter(|| black_box(runtime.block_on(gates.clone().oneshot(request())).ok()))
    });
}

/// An MCP endpoint's CORS on a call from an allowed origin: the proxy's
/// layer (`server::cors`), and tower-http's `CorsLayer` with the same rules.
fn cors(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let ours = CorsCall::new();
    assert!(
        runtime.block_on(ours.call()).is_some(),
        "the origin is allowed"
    );
    c.bench_function("cors/call/ours", |b| {
        b.iter(|| black_box(runtime.block_on(ours.call())))
    });

    // The same lists, origins and inner service as ours.
    let rules = CorsLists::mcp();
    let theirs = tower_http::cors::CorsLayer::new()
        .allow_origin(CorsCall::origins())
        .allow_methods(rules.methods.clone())
        .allow_headers(rules.allowed_headers.clone())
        .expose_headers(rules.exposed_headers.clone())
        .max_age(rules.max_age)
        .layer(tower::service_fn(answer_at_once));
    assert!(runtime
        .block_on(theirs.clone().oneshot(CorsCall::request()))
        .expect("answered")
        .headers()
        .contains_key(http::header::ACCESS_CONTROL_ALLOW_ORIGIN));
    c.bench_function("cors/call/tower_http", |b| {
        b.iter(|| {
            black_box(
                runtime
                    .block_on(theirs.clone().oneshot(CorsCall::request()))
                    .is_ok(),
            )
        })
    });
}

/// What one of `INSTR_ATOMICS=1`'s locked instructions costs on this
/// machine: a reference count taken and dropped atomically (`Arc`, two
/// locked instructions) against the same without (`Rc`, two plain ones).
/// Each layer's per-request copy and each shared buffer's slice is the
/// former.
fn reference_counts(c: &mut Criterion) {
    let shared = std::sync::Arc::new(0u64);
    c.bench_function("refcount/arc_clone_drop", |b| {
        b.iter(|| drop(black_box(shared.clone())))
    });
    let local = std::rc::Rc::new(0u64);
    c.bench_function("refcount/rc_clone_drop", |b| {
        b.iter(|| drop(black_box(local.clone())))
    });
}

/// What `clock` saves: the 27 times a request asked for the time before
/// it (`clock/read_27`, each `Instant::now()` a `clock_gettime`), against
/// the same asks of the request path's clock in one poll (`clock/poll_27`:
/// one reading, the rest the poll's), and one reading alone
/// (`clock/read_1`).
fn clock_reads(c: &mut Criterion) {
    const ASKS: usize = 27;
    c.bench_function("clock/read_1", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });
    c.bench_function("clock/read_27", |b| {
        b.iter(|| {
            for _ in 0..ASKS {
                black_box(std::time::Instant::now());
            }
        })
    });
    c.bench_function("clock/poll_27", |b| {
        b.iter(|| black_box(clock_asked_in_one_poll(ASKS)))
    });
}

criterion_group!(
    benches,
    bench,
    downstream,
    layers,
    cors,
    reference_counts,
    clock_reads
);
criterion_main!(benches);
