//! Audit: one log event per MCP request saying who did what and with what
//! result, and the MCP request counters. The layers below fill a shared
//! slot (who: Authenticate; what and the verdict: EnforcePolicy); this layer
//! writes it out when the answer is known.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, Response};
use tower::{Layer, Service};

use super::Metrics;
use crate::client_address::ClientAddress;

/// What the MCP stack learned about one request.
#[derive(Debug, Default, Clone)]
pub struct AuditFacts {
    pub sub: Option<String>,
    pub email: Option<String>,
    pub client_id: Option<String>,
    pub mcp_method: Option<String>,
    pub tool: Option<String>,
    pub decision: Option<&'static str>,
}

/// The request extension the MCP layers fill in.
#[derive(Clone, Default)]
pub struct AuditSlot(Arc<Mutex<AuditFacts>>);

impl AuditSlot {
    pub fn update(&self, f: impl FnOnce(&mut AuditFacts)) {
        if let Ok(mut facts) = self.0.lock() {
            f(&mut facts);
        }
    }

    fn snapshot(&self) -> AuditFacts {
        self.0.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

#[derive(Clone)]
pub struct AuditLayer {
    metrics: Option<Arc<Metrics>>,
    log: bool,
}

impl AuditLayer {
    pub fn new(metrics: Option<Arc<Metrics>>, log: bool) -> Self {
        AuditLayer { metrics, log }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;
    fn layer(&self, inner: S) -> Audit<S> {
        Audit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Audit<S> {
    inner: S,
    layer: AuditLayer,
}

impl<S> Service<Request<Body>> for Audit<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        if !self.layer.log && self.layer.metrics.is_none() {
            return Box::pin(self.inner.call(request));
        }
        let slot = AuditSlot::default();
        request.extensions_mut().insert(slot.clone());
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let client_address = ClientAddress::of(&request)
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        let layer = self.layer.clone();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            if let Ok(response) = &result {
                let status = response.status().as_u16();
                let facts = slot.snapshot();
                let decision = facts.decision.unwrap_or(match status {
                    401 => "unauthenticated",
                    200..=399 => "allow",
                    _ => "error",
                });
                if let Some(metrics) = &layer.metrics {
                    metrics
                        .mcp_requests
                        .with_label_values(&[
                            Metrics::mcp_method_label(facts.mcp_method.as_deref()),
                            metrics.tool_label(facts.tool.as_deref()),
                            decision,
                        ])
                        .inc();
                }
                if layer.log {
                    tracing::info!(
                        target: "audit",
                        audit = true,
                        request_id = %request_id,
                        client_address = %client_address,
                        sub = facts.sub.as_deref().unwrap_or_default(),
                        email = facts.email.as_deref().unwrap_or_default(),
                        client_id = facts.client_id.as_deref().unwrap_or_default(),
                        mcp_method = facts.mcp_method.as_deref().unwrap_or_default(),
                        tool = facts.tool.as_deref().unwrap_or_default(),
                        decision,
                        status,
                        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "audit"
                    );
                }
            }
            result
        })
    }
}
