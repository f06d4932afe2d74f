//! RecordHttp: counts every request by route template (never the raw path),
//! method and status class, and times it to its response headers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::http::{Method, Request, Response};
use tower::{Layer, Service};

use super::{status_class, Metrics};

#[derive(Clone)]
pub struct RecordHttpLayer {
    metrics: Arc<Metrics>,
}

impl RecordHttpLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        RecordHttpLayer { metrics }
    }
}

impl<S> Layer<S> for RecordHttpLayer {
    type Service = RecordHttp<S>;
    fn layer(&self, inner: S) -> RecordHttp<S> {
        RecordHttp {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RecordHttp<S> {
    inner: S,
    metrics: Arc<Metrics>,
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

impl<S> Service<Request<Body>> for RecordHttp<S>
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

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // MatchedPath shares its text; no allocation per request.
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = method_label(request.method());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            if let Ok(response) = &result {
                let status = status_class(response.status().as_u16());
                let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
                metrics
                    .http_requests
                    .with_label_values(&[route, method, status])
                    .inc();
                metrics
                    .http_duration
                    .with_label_values(&[route, method])
                    .observe(started.elapsed().as_secs_f64());
            }
            result
        })
    }
}
