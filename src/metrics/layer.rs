//! RecordHttp: counts every request by route template (never the raw path),
//! method and status class, and times it to its response headers.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use axum::extract::MatchedPath;
use axum::http::{Method, Request, Response};
use prometheus::{Histogram, IntCounter};

use super::labels::{status_class_index, STATUS_CLASSES};
use super::Metrics;
use crate::checkpoint::{Around, AroundLayer, Leave};
use crate::clock;

/// Adds `RecordHttp` to a service.
pub(crate) type RecordHttpLayer = AroundLayer<RecordHttp>;

/// Counts and times each request that gets an answer.
#[derive(Clone)]
pub(crate) struct RecordHttp {
    metrics: Arc<Metrics>,
    /// The route of every request this layer sees, when it is in front of
    /// one endpoint; else each request's `MatchedPath` (axum's routes).
    route: Option<RouteTemplate>,
}

impl RecordHttp {
    /// The layer in front of axum's router, counting into `metrics` by
    /// the route axum matched.
    pub(crate) fn layer(metrics: Arc<Metrics>) -> RecordHttpLayer {
        AroundLayer::new(RecordHttp {
            metrics,
            route: None,
        })
    }

    /// The layer in front of the one endpoint at `route` (an MCP endpoint,
    /// matched by `server::stack::Routes`): the label is known without
    /// anything filed in each request.
    pub(crate) fn for_route(metrics: Arc<Metrics>, route: RouteTemplate) -> RecordHttpLayer {
        AroundLayer::new(RecordHttp {
            metrics,
            route: Some(route),
        })
    }
}

/// The template of the route a request was matched to when the proxy
/// matched it itself (`server::stack::Routes`, the MCP endpoints), as
/// axum's `MatchedPath` is for the routes axum matches; with its series,
/// each resolved the first time it is counted. Every MCP request is
/// counted and timed: looking its two series up by label values hashed
/// the labels and took the vector's lock each time (350 instructions a
/// request in callgrind).
#[derive(Clone)]
pub(crate) struct RouteTemplate(Arc<TemplateSeries>);

struct TemplateSeries {
    template: Box<str>,
    requests: [[OnceLock<IntCounter>; STATUS_CLASSES.len()]; METHODS.len()],
    durations: [OnceLock<Histogram>; METHODS.len()],
}

impl RouteTemplate {
    pub(crate) fn new(template: &str) -> Self {
        RouteTemplate(Arc::new(TemplateSeries {
            template: template.into(),
            requests: Default::default(),
            durations: Default::default(),
        }))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0.template
    }

    fn record(&self, metrics: &Metrics, method: usize, status: u16, elapsed: Duration) {
        if !metrics.enabled {
            return;
        }
        let series = &*self.0;
        let class = status_class_index(status);
        series.requests[method][class]
            .get_or_init(|| metrics.http_requests_series(&series.template, METHODS[method], class))
            .inc();
        series.durations[method]
            .get_or_init(|| metrics.http_duration_series(&series.template, METHODS[method]))
            .observe(elapsed.as_secs_f64());
    }
}

impl std::fmt::Debug for RouteTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RouteTemplate")
            .field(&self.as_str())
            .finish()
    }
}

/// A request's route label: its template, never the raw path.
enum RouteLabel {
    Ours(RouteTemplate),
    Axums(MatchedPath),
}

impl RouteLabel {
    /// The label of a request to one of axum's routes. It shares its text
    /// with the route: no allocation per request.
    fn of<B>(request: &Request<B>) -> Option<Self> {
        request
            .extensions()
            .get::<MatchedPath>()
            .cloned()
            .map(RouteLabel::Axums)
    }
}

/// The method label's values, in `method_index`'s order.
const METHODS: [&str; 8] = [
    "GET", "POST", "DELETE", "OPTIONS", "HEAD", "PUT", "PATCH", "other",
];

/// A method's place in `METHODS`.
fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::DELETE => 2,
        Method::OPTIONS => 3,
        Method::HEAD => 4,
        Method::PUT => 5,
        Method::PATCH => 6,
        _ => 7,
    }
}

impl<B, R, E> Around<Request<B>, Response<R>, E> for RecordHttp {
    type Visit = HttpVisit;

    /// Timed from the call, as the request arrives.
    fn enter(&self, request: &mut Request<B>) -> Result<HttpVisit, Result<Response<R>, E>> {
        Ok(HttpVisit {
            metrics: self.metrics.clone(),
            route: match &self.route {
                Some(template) => Some(RouteLabel::Ours(template.clone())),
                None => RouteLabel::of(request),
            },
            method: method_index(request.method()),
            started: clock::now(),
        })
    }
}

/// A request being timed.
pub(crate) struct HttpVisit {
    metrics: Arc<Metrics>,
    route: Option<RouteLabel>,
    /// Its place in `METHODS`.
    method: usize,
    started: Instant,
}

impl<R, E> Leave<Response<R>, E> for HttpVisit {
    fn leave(self, outcome: &mut Result<Response<R>, E>) {
        if let Ok(response) = outcome {
            let status = response.status().as_u16();
            let elapsed = clock::now().saturating_duration_since(self.started);
            let method = self.method;
            match &self.route {
                Some(RouteLabel::Ours(template)) => {
                    template.record(&self.metrics, method, status, elapsed);
                }
                Some(RouteLabel::Axums(matched)) => {
                    let route = matched.as_str();
                    self.metrics
                        .http_request(route, METHODS[method], status, elapsed);
                }
                None => {
                    self.metrics
                        .http_request("unmatched", METHODS[method], status, elapsed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
