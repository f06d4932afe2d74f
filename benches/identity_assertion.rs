//! The cost of one identity assertion: `cargo bench --bench identity_assertion`.
//!
//! `sign` is what the forwarder pays per request whose policy asks for
//! `identity_assertion()`: the key set from memory (no store call while it
//! is fresh), claims serialised, one Ed25519 signature with the key parsed
//! once. `jsonwebtoken::encode` with the same key and claims is measured
//! beside it: it parses its PKCS#8 key on every call, which is why the
//! proxy keeps an expanded `ed25519_dalek::SigningKey` instead.
//!
//! Measured on the 2-core development machine (shared, so noisy): `sign`
//! 27 µs median, of which the Ed25519 signature alone is 23 µs;
//! `jsonwebtoken::encode` 50 µs. A request whose policy does not ask pays
//! one comparison per policy header and no signature.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use mcp_oauth_proxy::assertion::{Identity, IdentityAssertions};
use mcp_oauth_proxy::config::IdentityAssertionConfig;
use mcp_oauth_proxy::store::sqlite::SqliteStore;
use mcp_oauth_proxy::store::SharedStore;
use serde_json::json;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("keys.db")).unwrap());
    let signer = IdentityAssertions::with_secret(
        store,
        [7; 32],
        "https://proxy.example.com",
        &IdentityAssertionConfig::default(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let groups = json!(["engineering", "admins"]);
    let who = Identity {
        sub: "00u1alice",
        email: Some("alice@example.com"),
        name: Some("Alice Example"),
        groups: Some(&groups),
        client_id: "https://client.example.com/metadata.json",
    };
    let audience = "http://mcp.internal:8080/mcp";
    // The first call creates the keys; every later one finds them in memory.
    runtime
        .block_on(signer.sign(&who, audience, Some("r-0")))
        .unwrap();
    c.bench_function("identity assertion: sign (key in memory)", |b| {
        b.iter(|| {
            runtime
                .block_on(signer.sign(black_box(&who), audience, Some("AbCdEf-12345")))
                .unwrap()
        })
    });

    // The signature alone, over a message of the same length: the floor.
    let jwt = runtime
        .block_on(signer.sign(&who, audience, Some("AbCdEf-12345")))
        .unwrap();
    let message = jwt.rsplit_once('.').unwrap().0.to_string();
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    c.bench_function("identity assertion: the Ed25519 signature alone", |b| {
        use ed25519_dalek::Signer;
        b.iter(|| key.sign(black_box(message.as_bytes())))
    });

    // The same claims through jsonwebtoken::encode, which parses the key
    // (PKCS#8) and expands it on every call.
    let seed = [9u8; 32];
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    let key = jsonwebtoken::EncodingKey::from_ed_der(&der);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("kid".into());
    let claims = json!({
        "iss": "https://proxy.example.com", "sub": who.sub, "aud": audience,
        "iat": 1, "exp": 61, "jti": "abc-1", "email": who.email, "name": who.name,
        "groups": groups, "client_id": who.client_id, "request_id": "AbCdEf-12345",
    });
    c.bench_function(
        "identity assertion: jsonwebtoken::encode (key parsed per call)",
        |b| b.iter(|| jsonwebtoken::encode(&header, black_box(&claims), &key).unwrap()),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
