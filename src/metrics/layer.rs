//! RecordHttp: counts every request by route template (never the raw path),
//! method and status class, and times it to its response headers.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::{Method, Request, Response};

use super::Metrics;
use crate::checkpoint::{Around, AroundLayer, Leave};

/// Adds `RecordHttp` to a service.
pub(crate) type RecordHttpLayer = AroundLayer<RecordHttp>;

/// Counts and times each request that gets an answer.
#[derive(Clone)]
pub(crate) struct RecordHttp {
    metrics: Arc<Metrics>,
}

impl RecordHttp {
    /// The layer, counting into `metrics`.
    pub(crate) fn layer(metrics: Arc<Metrics>) -> RecordHttpLayer {
        AroundLayer::new(RecordHttp { metrics })
    }
}

/// The template of the route a request was matched to when the proxy
/// matched it itself (`server::stack::Routes`, the MCP endpoints), as
/// axum's `MatchedPath` is for the routes axum matches.
#[derive(Clone, Debug)]
pub(crate) struct RouteTemplate(pub(crate) Arc<str>);

/// A request's route label: its template, never the raw path.
enum RouteLabel {
    Ours(Arc<str>),
    Axums(MatchedPath),
}

impl RouteLabel {
    fn of<B>(request: &Request<B>) -> Option<Self> {
        let extensions = request.extensions();
        // Both share their text; no allocation per request.
        extensions
            .get::<RouteTemplate>()
            .map(|t| RouteLabel::Ours(t.0.clone()))
            .or_else(|| {
                extensions
                    .get::<MatchedPath>()
                    .cloned()
                    .map(RouteLabel::Axums)
            })
    }

    fn as_str(&self) -> &str {
        match self {
            RouteLabel::Ours(template) => template,
            RouteLabel::Axums(matched) => matched.as_str(),
        }
    }
}

/// A method as a label value.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

impl<B, R, E> Around<Request<B>, Response<R>, E> for RecordHttp {
    type Visit = HttpVisit;

    /// Timed from the call, as the request arrives.
    fn enter(&self, request: &mut Request<B>) -> Result<HttpVisit, Result<Response<R>, E>> {
        Ok(HttpVisit {
            metrics: self.metrics.clone(),
            route: RouteLabel::of(request),
            method: method_label(request.method()),
            started: Instant::now(),
        })
    }
}

/// A request being timed.
pub(crate) struct HttpVisit {
    metrics: Arc<Metrics>,
    route: Option<RouteLabel>,
    method: &'static str,
    started: Instant,
}

impl<R, E> Leave<Response<R>, E> for HttpVisit {
    fn leave(self, outcome: &mut Result<Response<R>, E>) {
        if let Ok(response) = outcome {
            let route = self.route.as_ref().map_or("unmatched", RouteLabel::as_str);
            self.metrics.http_request(
                route,
                self.method,
                response.status().as_u16(),
                self.started.elapsed(),
            );
        }
    }
}

#[cfg(test)]
mod tests;
