//! The admin listener (`server.admin_listen`): metrics and health, never on
//! the public listener.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

/// `/metrics` (Prometheus text), `/healthz` and `/readyz`.
pub(crate) fn router(app: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(app)
}

async fn metrics(State(app): State<AppState>) -> Response {
    app.token_cache.report_size().await;
    let mut response = app.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Alive: the process answers.
async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Ready: the store answers, the provider was discovered, a policy is
/// compiled (a failed reload keeps the previous one, so it stays ready).
async fn readyz(State(app): State<AppState>) -> Response {
    let store = app.records.store.ping().await;
    let provider = app.upstream.is_discovered().await || app.upstream.client().await.is_ok();
    let routes: Vec<serde_json::Value> = app
        .routes
        .iter()
        .map(|route| {
            let policy_error = route
                .policy
                .reloads
                .last_error
                .lock()
                .ok()
                .and_then(|e| e.clone());
            json!({
                "name": route.settings.name,
                "policy": route.policy.current().name,
                "policy_last_reload_error": policy_error,
            })
        })
        .collect();
    let ready = store.is_ok() && provider;
    // `policy` and `policy_last_reload_error` are the first route's, as
    // before routes existed; `routes` has every route's.
    let first = routes.first().cloned().unwrap_or_default();
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "store": match &store { Ok(()) => "ok".to_string(), Err(e) => e.to_string() },
        "provider": if provider { "discovered" } else { "not reachable" },
        "policy": first.get("policy"),
        "policy_last_reload_error": first.get("policy_last_reload_error"),
        "routes": routes,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
