//! One rate-limit check as the request path runs it: `cargo bench --bench
//! rate_limit`. The key is built from the request (an address, or the
//! session's `sub`, cloned) and checked against a keyed governor limiter
//! that holds many other keys.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use mcp_oauth_proxy::config::{LimitGroup, Rate};
use mcp_oauth_proxy::rate_limit::{Limiter, RateKey};

fn bench(c: &mut Criterion) {
    let rate = Rate {
        requests: NonZeroU32::MAX,
        period: Duration::from_secs(1),
        burst: NonZeroU32::MAX,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let limiter: std::sync::Arc<Limiter> = Limiter::new(
        LimitGroup::McpUser,
        rate,
        mcp_oauth_proxy::metrics::Metrics::disabled(),
    );
    for n in 0..10_000u32 {
        let _ = limiter.check(&RateKey::Name(format!("user-{n}").into()));
        let _ = limiter.check(&RateKey::address(IpAddr::V4(Ipv4Addr::from(n))));
    }
    let sub: std::sync::Arc<str> = "00u1alice-sub-from-the-provider".into();
    c.bench_function("rate limit check, per user (sub shared)", |b| {
        b.iter(|| limiter.check(black_box(&RateKey::Name(sub.clone()))))
    });
    let address = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    c.bench_function("rate limit check, per address", |b| {
        b.iter(|| limiter.check(black_box(&RateKey::address(address))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
