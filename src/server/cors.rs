//! CORS, for browser-based MCP clients and the OAuth endpoints they call,
//! with every header value made once, when the route is built.
//!
//! The answers are tower-http's `CorsLayer`'s for the same rules (a test
//! puts both in front of the same service and compares); what differs is
//! the cost: tower-http builds a header map, joins its `Vary` value and
//! merges the map into the response on every request, ~4,000 instructions
//! a request in callgrind (`tests/bench/README.md`). Here a request that is
//! not a preflight costs an origin lookup and three header inserts.
//!
//! A preflight (every `OPTIONS` request, as tower-http has it) is answered
//! here, 200 with the allowed methods, headers and max age; any other
//! request goes on, and its response gets `Vary` (appended to the
//! service's own), `Access-Control-Expose-Headers` and, for an allowed
//! origin, `Access-Control-Allow-Origin`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response};

use crate::checkpoint::{Around, AroundLayer, Leave};

/// The request headers a CORS answer depends on, as tower-http lists them.
static VARY: HeaderValue = HeaderValue::from_static(
    "origin, access-control-request-method, access-control-request-headers",
);

/// Which origins may read the answers.
#[derive(Debug)]
enum Origins {
    /// Any: `Access-Control-Allow-Origin: *`, with or without an `Origin`.
    Any,
    /// These only, compared byte for byte, and echoed.
    Only(Vec<HeaderValue>),
}

/// A route's CORS rules, each header value ready to be sent.
#[derive(Debug)]
pub(crate) struct CorsRules {
    origins: Origins,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
}

/// One comma-separated value of header names or methods; `None` for none.
fn comma_separated<'a>(items: impl IntoIterator<Item = &'a str>) -> Option<HeaderValue> {
    let joined = items.into_iter().collect::<Vec<_>>().join(",");
    if joined.is_empty() {
        return None;
    }
    // Names and methods are tokens: always a valid value.
    HeaderValue::from_str(&joined).ok()
}

impl CorsRules {
    /// Rules for any origin, allowing `methods` and `headers` in
    /// preflights, which browsers may cache for `max_age`.
    pub(crate) fn any_origin(
        methods: &[Method],
        headers: &[HeaderName],
        max_age: Duration,
    ) -> Self {
        CorsRules {
            origins: Origins::Any,
            allow_methods: comma_separated(methods.iter().map(Method::as_str)),
            allow_headers: comma_separated(headers.iter().map(HeaderName::as_str)),
            expose_headers: None,
            max_age: HeaderValue::from(max_age.as_secs()),
        }
    }

    /// Only these origins may read the answers.
    pub(crate) fn only_origins(mut self, origins: Vec<HeaderValue>) -> Self {
        self.origins = Origins::Only(origins);
        self
    }

    /// Answers that are not preflights expose these headers to scripts.
    pub(crate) fn exposing(mut self, headers: &[HeaderName]) -> Self {
        self.expose_headers = comma_separated(headers.iter().map(HeaderName::as_str));
        self
    }

    /// The layer that applies these rules.
    pub(crate) fn layer(self) -> AroundLayer<Cors> {
        AroundLayer::new(Cors(Arc::new(self)))
    }

    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match &self.origins {
            Origins::Any => Some(HeaderValue::from_static("*")),
            Origins::Only(allowed) => origin.filter(|o| allowed.contains(o)).cloned(),
        }
    }

    fn preflight<B: Default>(&self, allow_origin: Option<HeaderValue>) -> Response<B> {
        let mut response = Response::new(B::default());
        let headers = response.headers_mut();
        headers.insert(header::VARY, VARY.clone());
        if let Some(methods) = &self.allow_methods {
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods.clone());
        }
        if let Some(allowed) = &self.allow_headers {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed.clone());
        }
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        if let Some(origin) = allow_origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        response
    }

    fn decorate<B>(&self, response: &mut Response<B>, allow_origin: Option<HeaderValue>) {
        let headers = response.headers_mut();
        // The service's own Vary stays; this one is added to it.
        headers.append(header::VARY, VARY.clone());
        if let Some(exposed) = &self.expose_headers {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, exposed.clone());
        }
        if let Some(origin) = allow_origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
    }
}

/// The layer logic of [`CorsRules::layer`].
#[derive(Clone, Debug)]
pub(crate) struct Cors(Arc<CorsRules>);

impl<B, ResBody: Default, E> Around<Request<B>, Response<ResBody>, E> for Cors {
    type Visit = CorsVisit;

    fn enter(&self, request: &mut Request<B>) -> Result<CorsVisit, Result<Response<ResBody>, E>> {
        let allow_origin = self.0.allow_origin(request.headers().get(header::ORIGIN));
        // A preflight is answered here; the service below never sees it.
        if request.method() == Method::OPTIONS {
            return Err(Ok(self.0.preflight(allow_origin)));
        }
        Ok(CorsVisit {
            rules: self.0.clone(),
            allow_origin,
        })
    }
}

/// A request from a browser (or not) on its way through the service.
pub(crate) struct CorsVisit {
    rules: Arc<CorsRules>,
    allow_origin: Option<HeaderValue>,
}

impl<ResBody, E> Leave<Response<ResBody>, E> for CorsVisit {
    fn leave(self, outcome: &mut Result<Response<ResBody>, E>) {
        if let Ok(response) = outcome {
            self.rules.decorate(response, self.allow_origin);
        }
    }
}

#[cfg(test)]
mod tests;
