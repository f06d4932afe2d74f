//! Audit: one log event per MCP request saying who did what, on which
//! route and with what result, and the MCP request counters. The layers below fill a shared
//! slot (who: Authenticate; what and the verdict: EnforcePolicy); this layer
//! writes it out when the answer is known.

use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use axum::http::{Request, Response, StatusCode};

use super::labels::McpDecision;
use super::route::McpLabels;
use super::RouteMetrics;
use crate::checkpoint::{Around, AroundLayer, Leave};
use crate::client_address::ClientAddress;
use crate::clock;

/// What the MCP stack learned about one request.
#[derive(Debug, Default, Clone)]
pub(crate) struct AuditFacts {
    /// Who: the user's `sub` (Authenticate).
    pub sub: Option<Arc<str>>,
    /// The user's email, when the provider gave one (Authenticate).
    pub email: Option<String>,
    /// The OAuth client the token was issued to (Authenticate).
    pub client_id: Option<Arc<str>>,
    /// What, as the counters label it: the (first) call's method and tool
    /// (EnforcePolicy).
    pub mcp_labels: McpLabels,
    /// What, for the audit line: the JSON-RPC method of the (first) call
    /// (EnforcePolicy; only when the line is written).
    pub mcp_method: Option<String>,
    /// The tool it calls, if any (as `mcp_method`).
    pub tool: Option<String>,
    /// The verdict: `allow`, `deny`, `rate_limited`; when none is set the
    /// response status decides.
    pub decision: Option<&'static str>,
}

/// The request extension the MCP layers fill in.
#[derive(Clone, Default)]
pub(crate) struct AuditSlot {
    facts: Arc<Mutex<AuditFacts>>,
    /// Whether the audit line is written for this request; when only the
    /// counters are kept, who called is not copied into the slot.
    logged: bool,
}

impl AuditSlot {
    /// Adds to what is known of the request.
    pub(crate) fn update(&self, f: impl FnOnce(&mut AuditFacts)) {
        if let Ok(mut facts) = self.facts.lock() {
            f(&mut facts);
        }
    }

    /// Whether this request's audit line is written (the caller's identity
    /// is needed only then).
    pub(crate) fn logged(&self) -> bool {
        self.logged
    }

    /// A slot whose audit line is written, for layers' tests.
    #[cfg(test)]
    pub(crate) fn written() -> Self {
        AuditSlot {
            facts: Arc::default(),
            logged: true,
        }
    }

    /// What was learned; the request is over, so the facts move out.
    fn take(&self) -> AuditFacts {
        self.facts
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }
}

/// Adds `Audit` to a service.
pub(crate) type AuditLayer = AroundLayer<Audit>;

/// Gives each request an `AuditSlot` and, once its answer is known, writes
/// the audit event and counts it, both under the route's name. With neither
/// metrics nor the audit log, requests pass untouched.
#[derive(Clone)]
pub(crate) struct Audit {
    metrics: RouteMetrics,
    log: bool,
}

impl Audit {
    /// The layer of one route: counts into its series, logs (with its name)
    /// when `log`.
    pub(crate) fn layer(route: RouteMetrics, log: bool) -> AuditLayer {
        AroundLayer::new(Audit {
            metrics: route,
            log,
        })
    }

    /// Starts auditing a request: its slot goes into the extensions.
    fn begin<B>(&self, request: &mut Request<B>) -> Option<Audited> {
        // The line is written only when the log level lets it through
        // (`log.level = "warn"` keeps the counters and skips the line).
        let logged = self.log && tracing::enabled!(target: "audit", tracing::Level::INFO);
        if !logged && !self.metrics.records() {
            return None;
        }
        let slot = AuditSlot {
            facts: Arc::default(),
            logged,
        };
        request.extensions_mut().insert(slot.clone());
        let (request_id, client_address) = if logged {
            let request_id = crate::session::request_id(request)
                .and_then(|id| id.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let client_address = ClientAddress::of(request)
                .map(|ip| ip.to_string())
                .unwrap_or_default();
            (request_id, client_address)
        } else {
            Default::default()
        };
        Some(Audited {
            slot,
            request_id,
            client_address,
            started: clock::now(),
        })
    }

    /// Counts and logs a request that got an answer (a failure below the
    /// rescue layer has none to report).
    fn end(&self, audited: Audited, status: StatusCode) {
        let status = status.as_u16();
        let facts = audited.slot.take();
        let decision = facts.decision.unwrap_or(match status {
            401 => McpDecision::Unauthenticated.as_str(),
            200..=399 => McpDecision::Allow.as_str(),
            _ => McpDecision::Error.as_str(),
        });
        self.metrics.mcp_request(facts.mcp_labels, decision);
        if audited.slot.logged {
            tracing::info!(
                target: "audit",
                audit = true,
                route = &**self.metrics.name(),
                request_id = %audited.request_id,
                client_address = %audited.client_address,
                sub = facts.sub.as_deref().unwrap_or_default(),
                email = facts.email.as_deref().unwrap_or_default(),
                client_id = facts.client_id.as_deref().unwrap_or_default(),
                mcp_method = facts.mcp_method.as_deref().unwrap_or_default(),
                tool = facts.tool.as_deref().unwrap_or_default(),
                decision,
                status,
                duration_ms = clock::now()
                    .saturating_duration_since(audited.started)
                    .as_secs_f64()
                    * 1000.0,
                "audit"
            );
        }
    }
}

/// What is known of a request when it arrives.
struct Audited {
    slot: AuditSlot,
    request_id: String,
    client_address: String,
    started: Instant,
}

impl<B, R, E> Around<Request<B>, Response<R>, E> for Audit {
    type Visit = Option<AuditVisit>;

    fn enter(
        &self,
        request: &mut Request<B>,
    ) -> Result<Option<AuditVisit>, Result<Response<R>, E>> {
        Ok(self.begin(request).map(|audited| AuditVisit {
            audit: self.clone(),
            audited,
        }))
    }
}

/// An audited request on its way through the layers below.
pub(crate) struct AuditVisit {
    audit: Audit,
    audited: Audited,
}

impl<R, E> Leave<Response<R>, E> for Option<AuditVisit> {
    fn leave(self, outcome: &mut Result<Response<R>, E>) {
        if let (Some(visit), Ok(response)) = (self, outcome) {
            visit.audit.end(visit.audited, response.status());
        }
    }
}

#[cfg(test)]
mod tests;
