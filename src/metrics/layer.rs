//! RecordHttp: counts every request by route template (never the raw path),
//! method and status class, and times it to its response headers.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::{Method, Request, Response};
use tower::Service;

use super::Metrics;
use crate::checkpoint::{Checkpoint, CheckpointLayer};

/// Adds `RecordHttp` to a service.
pub(crate) type RecordHttpLayer = CheckpointLayer<RecordHttp>;

/// Counts and times each request that gets an answer.
#[derive(Clone)]
pub(crate) struct RecordHttp {
    metrics: Arc<Metrics>,
}

impl RecordHttp {
    /// The layer, counting into `metrics`.
    pub(crate) fn layer(metrics: Arc<Metrics>) -> RecordHttpLayer {
        CheckpointLayer::new(RecordHttp { metrics })
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

impl<S, B, R> Checkpoint<S, Request<B>> for RecordHttp
where
    S: Service<Request<B>, Response = Response<R>, Future: Send + 'static> + Send + 'static,
{
    /// Timed from the call, as the request arrives.
    fn run(
        self,
        mut inner: S,
        request: Request<B>,
    ) -> impl Future<Output = Result<Response<R>, S::Error>> + Send + 'static {
        let route = RouteLabel::of(&request);
        let method = method_label(request.method());
        let started = Instant::now();
        let answer = inner.call(request);
        async move {
            let result = answer.await;
            if let Ok(response) = &result {
                let route = route.as_ref().map_or("unmatched", RouteLabel::as_str);
                self.metrics.http_request(
                    route,
                    method,
                    response.status().as_u16(),
                    started.elapsed(),
                );
            }
            result
        }
    }
}

#[cfg(test)]
mod tests;
