//! FilterLists: a user sees only what the policy lets them use. When a
//! `tools/list`, `resources/list` or `prompts/list` answer comes back (JSON
//! or an event stream), every tool, resource or prompt the policy would deny
//! this user is removed from it. Other answers pass untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, Response};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tower::{Layer, Service};

use super::layer::{decide, script_request, script_user, McpCall, PolicyOutcome};
use super::{Decision, PolicyEngine};
use crate::error::ProxyError;
use crate::oauth::grants::Session;
use crate::proxy::sse::{parse_event, render_event, EventSplitter};

/// The largest list answer filtered in one piece (JSON answers are read
/// whole to filter them).
const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListKind {
    Tools,
    Resources,
    Prompts,
}

impl ListKind {
    fn of(method: &str) -> Option<ListKind> {
        match method {
            "tools/list" => Some(ListKind::Tools),
            "resources/list" => Some(ListKind::Resources),
            "prompts/list" => Some(ListKind::Prompts),
            _ => None,
        }
    }
    fn field(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Resources => "resources",
            ListKind::Prompts => "prompts",
        }
    }
    /// The item's identifier and the call that would use it.
    fn item_key(self) -> (&'static str, &'static str) {
        match self {
            ListKind::Tools => ("name", "tools/call"),
            ListKind::Resources => ("uri", "resources/read"),
            ListKind::Prompts => ("name", "prompts/get"),
        }
    }
}

/// Decides, item by item, what this user may see.
struct Visibility {
    engine: Arc<PolicyEngine>,
    outcome: PolicyOutcome,
    session: Arc<Session>,
    user: rhai::Dynamic,
    method: Method,
    path: String,
    headers: HeaderMap,
    kind: ListKind,
}

impl Visibility {
    fn allows(&self, target: &str) -> bool {
        let (_, call_method) = self.kind.item_key();
        let call = McpCall {
            method: Some(call_method.to_string()),
            id: None,
            target: Some(target.to_string()),
        };
        matches!(
            decide(
                &self.engine,
                &self.outcome.policy,
                &self.session,
                &self.user,
                || { script_request(&self.method, &self.path, &self.headers, Some(&call)) }
            ),
            Decision::Allow { .. }
        )
    }

    /// Filters one JSON-RPC message (or a batch); true if anything changed.
    fn filter(&self, message: &mut Value) -> bool {
        match message {
            Value::Array(items) => {
                // Every message of a batch is filtered: no short circuit.
                let mut changed = false;
                for message in items {
                    changed |= self.filter(message);
                }
                changed
            }
            Value::Object(object) => {
                let Some(list) = object
                    .get_mut("result")
                    .and_then(|r| r.get_mut(self.kind.field()))
                    .and_then(Value::as_array_mut)
                else {
                    return false;
                };
                let (key, _) = self.kind.item_key();
                let before = list.len();
                list.retain(|item| match item.get(key).and_then(Value::as_str) {
                    Some(target) => self.allows(target),
                    None => true,
                });
                list.len() != before
            }
            _ => false,
        }
    }
}

#[derive(Clone)]
pub struct FilterListsLayer {
    engine: Arc<PolicyEngine>,
    issuer: Arc<str>,
}

impl FilterListsLayer {
    pub fn new(engine: Arc<PolicyEngine>, issuer: &str) -> Self {
        FilterListsLayer {
            engine,
            issuer: issuer.into(),
        }
    }
}

impl<S> Layer<S> for FilterListsLayer {
    type Service = FilterLists<S>;
    fn layer(&self, inner: S) -> FilterLists<S> {
        FilterLists {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct FilterLists<S> {
    inner: S,
    layer: FilterListsLayer,
}

impl<S> Service<Request<Body>> for FilterLists<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let kind = request
            .extensions()
            .get::<McpCall>()
            .and_then(|c| c.method.as_deref())
            .and_then(ListKind::of);
        let visibility = kind.and_then(|kind| {
            let session = request.extensions().get::<Arc<Session>>()?.clone();
            let outcome = request.extensions().get::<PolicyOutcome>()?.clone();
            Some(Visibility {
                engine: self.layer.engine.clone(),
                user: script_user(&session, &self.layer.issuer),
                session,
                outcome,
                method: request.method().clone(),
                path: request.uri().path().to_string(),
                headers: request.headers().clone(),
                kind,
            })
        });
        Box::pin(async move {
            let response = inner.call(request).await?;
            match visibility {
                Some(visibility) if response.status().is_success() => {
                    filter_response(response, Arc::new(visibility)).await
                }
                _ => Ok(response),
            }
        })
    }
}

async fn filter_response(
    response: Response<Body>,
    visibility: Arc<Visibility>,
) -> Result<Response<Body>, ProxyError> {
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (mut parts, body) = response.into_parts();
    if content_type.starts_with("application/json") {
        let bytes = Limited::new(body, MAX_LIST_BYTES)
            .collect()
            .await
            .map_err(|e| {
                ProxyError::DownstreamUnreachable(format!("reading the list answer failed: {e}"))
            })?
            .to_bytes();
        let filtered = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|mut message| visibility.filter(&mut message).then_some(message));
        let body = match filtered {
            Some(message) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                Body::from(serde_json::to_vec(&message).unwrap_or_else(|_| bytes.to_vec()))
            }
            None => Body::from(bytes),
        };
        Ok(Response::from_parts(parts, body))
    } else if content_type.starts_with("text/event-stream") {
        // Event by event: an event is held only until its end arrives.
        let mut splitter = EventSplitter::default();
        let stream = body.into_data_stream().map(move |chunk| {
            let chunk = chunk?;
            let mut out = Vec::with_capacity(chunk.len());
            for raw in splitter.feed(&chunk) {
                let mut event = parse_event(&raw);
                let filtered = event
                    .data
                    .as_deref()
                    .and_then(|d| serde_json::from_str::<Value>(d).ok())
                    .and_then(|mut message| visibility.filter(&mut message).then_some(message));
                match filtered {
                    Some(message) => {
                        event.data = Some(message.to_string());
                        out.extend(render_event(&event));
                    }
                    None => out.extend(raw),
                }
            }
            Ok::<Bytes, axum::Error>(Bytes::from(out))
        });
        parts.headers.remove(header::CONTENT_LENGTH);
        Ok(Response::from_parts(parts, Body::from_stream(stream)))
    } else {
        Ok(Response::from_parts(parts, body))
    }
}
