//! FilterLists: a user sees only what the policy lets them use. When a
//! `tools/list`, `resources/list` or `prompts/list` answer comes back (JSON
//! or an event stream), every tool, resource or prompt the policy would deny
//! this user is removed from it. Other answers pass untouched.

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, Request, Response};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tower::Service;

use super::layer::{decide, script_user, McpCall, RequestView};
use super::{CompiledPolicy, Decision, PolicyEngine};
use crate::checkpoint::{Checkpoint, CheckpointLayer};
use crate::error::ProxyError;
use crate::event_stream::{parse_event, render_event, EventSplitter};
use crate::session::{authenticated, Session};

/// The largest list answer filtered in one piece (JSON answers are read
/// whole to filter them; an event stream's events are bounded alike).
const MAX_LIST_BYTES: usize = crate::event_stream::MAX_EVENT_BYTES;
/// The most items one list answer may carry: each costs a policy run. A
/// longer list (MCP pages lists with `nextCursor`) is refused, never passed
/// unfiltered.
pub const MAX_LIST_ITEMS: usize = 10_000;

/// A list answer the proxy will not filter, so will not pass.
#[derive(Debug, thiserror::Error)]
#[error("the downstream's list answer has more than {MAX_LIST_ITEMS} items; it should page them with nextCursor")]
pub struct ListTooLong;

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
    policy: Arc<CompiledPolicy>,
    session: Arc<Session>,
    user: rhai::Dynamic,
    view: RequestView,
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
                &self.policy,
                &self.session,
                Some(&call),
                || self.user.clone(),
                || self.view.for_call(Some(&call))
            ),
            Decision::Allow { .. }
        )
    }

    /// Filters one JSON-RPC message (or a batch); true if anything changed.
    fn filter(&self, message: &mut Value) -> Result<bool, ListTooLong> {
        match message {
            Value::Array(items) => {
                // Every message of a batch is filtered: no short circuit.
                let mut changed = false;
                for message in items {
                    changed |= self.filter(message)?;
                }
                Ok(changed)
            }
            Value::Object(object) => {
                let Some(list) = object
                    .get_mut("result")
                    .and_then(|r| r.get_mut(self.kind.field()))
                    .and_then(Value::as_array_mut)
                else {
                    return Ok(false);
                };
                if list.len() > MAX_LIST_ITEMS {
                    return Err(ListTooLong);
                }
                let (key, _) = self.kind.item_key();
                let before = list.len();
                list.retain(|item| match item.get(key).and_then(Value::as_str) {
                    Some(target) => self.allows(target),
                    None => true,
                });
                Ok(list.len() != before)
            }
            _ => Ok(false),
        }
    }

    /// One JSON text filtered: `None` when it passes unchanged (not JSON,
    /// or nothing to remove).
    fn filter_text(&self, text: &[u8]) -> Result<Option<Vec<u8>>, ListTooLong> {
        let Ok(mut message) = serde_json::from_slice::<Value>(text) else {
            return Ok(None);
        };
        if !self.filter(&mut message)? {
            return Ok(None);
        }
        Ok(serde_json::to_vec(&message).ok())
    }

    /// Filters the events of a stream chunk; events without data pass as
    /// they came.
    fn filter_events(&self, raws: Vec<Vec<u8>>) -> Result<Vec<u8>, ListTooLong> {
        let mut out = Vec::with_capacity(raws.iter().map(Vec::len).sum());
        for raw in raws {
            let mut event = parse_event(&raw);
            let filtered = match event.data.as_deref() {
                Some(data) => self.filter_text(data.as_bytes())?,
                None => None,
            };
            match filtered.map(String::from_utf8) {
                Some(Ok(data)) => {
                    event.data = Some(data);
                    out.extend(render_event(&event));
                }
                _ => out.extend(raw),
            }
        }
        Ok(out)
    }
}

/// Adds `FilterLists` to a service.
pub type FilterListsLayer = CheckpointLayer<FilterLists>;

/// Removes from a successful list answer what the policy would deny this
/// user; every other answer passes untouched.
#[derive(Clone)]
pub struct FilterLists {
    engine: Arc<PolicyEngine>,
    issuer: Arc<str>,
}

impl FilterLists {
    /// The layer, deciding with `engine` (the version EnforcePolicy used).
    pub fn layer(engine: Arc<PolicyEngine>, issuer: &str) -> FilterListsLayer {
        CheckpointLayer::new(FilterLists {
            engine,
            issuer: issuer.into(),
        })
    }

    /// What this user may see, for a single list call the policy let
    /// through: with the session Authenticate found and the version of
    /// the policy EnforcePolicy decided with. Without either, the stack
    /// lacks a layer above this one, and the list is refused rather than
    /// passed unfiltered.
    fn visibility<B>(
        &self,
        request: &Request<B>,
        kind: ListKind,
    ) -> Result<Visibility, ProxyError> {
        let session = authenticated(request).ok_or_else(ProxyError::no_session)?;
        let policy = request
            .extensions()
            .get::<Arc<CompiledPolicy>>()
            .cloned()
            .ok_or_else(|| ProxyError::Forbidden("no policy decision".into()))?;
        Ok(Visibility {
            engine: self.engine.clone(),
            user: script_user(&session, &self.issuer),
            session,
            policy,
            view: RequestView::new(
                self.engine.route(),
                request.method(),
                request.uri().path(),
                request.headers(),
            ),
            kind,
        })
    }
}

/// The list a request asks for: only a single call is a list call (a
/// batch travels as `Arc<[McpCall]>`, not as one `McpCall`).
fn list_kind<B>(request: &Request<B>) -> Option<ListKind> {
    request
        .extensions()
        .get::<McpCall>()
        .and_then(|c| c.method.as_deref())
        .and_then(ListKind::of)
}

impl<S, B> Checkpoint<S, Request<B>> for FilterLists
where
    S: Service<Request<B>, Response = Response<Body>, Error: From<ProxyError>, Future: Send>,
    S: Send + 'static,
    B: Send + 'static,
{
    /// Anything but a list call passes untouched, without the boxed
    /// future a checkpoint costs (most calls are not lists).
    fn passes(&self, request: &Request<B>) -> bool {
        list_kind(request).is_none()
    }

    fn run(
        self,
        mut inner: S,
        request: Request<B>,
    ) -> impl Future<Output = Result<Response<Body>, S::Error>> + Send + 'static {
        async move {
            let Some(kind) = list_kind(&request) else {
                return inner.call(request).await;
            };
            let visibility = self.visibility(&request, kind)?;
            let response = inner.call(request).await?;
            if !response.status().is_success() {
                return Ok(response);
            }
            Ok(filter_response(response, Arc::new(visibility)).await?)
        }
    }
}

/// Filtering runs the policy once per listed item and parses up to
/// MAX_LIST_BYTES: it happens on a blocking thread, never on a runtime
/// worker other connections need.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ListTooLong> + Send + 'static,
) -> Result<T, ProxyError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| {
            ProxyError::BadDownstreamAnswer(format!("filtering the list answer failed: {e}"))
        })?
        .map_err(|e| ProxyError::BadDownstreamAnswer(e.to_string()))
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
                ProxyError::BadDownstreamAnswer(format!("reading the list answer failed: {e}"))
            })?
            .to_bytes();
        let filtered = off_the_runtime({
            let bytes = bytes.clone();
            move || visibility.filter_text(&bytes)
        })
        .await?;
        let body = match filtered {
            Some(filtered) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                Body::from(filtered)
            }
            None => Body::from(bytes),
        };
        Ok(Response::from_parts(parts, body))
    } else if content_type.starts_with("text/event-stream") {
        // Event by event: an event is held only until its end arrives (and
        // at most MAX_EVENT_BYTES). An unfinished last event is dropped, as
        // a client would drop it, rather than passed unfiltered.
        let mut splitter = EventSplitter::default();
        let stream = body
            .into_data_stream()
            .map(move |chunk| {
                let chunk = chunk?;
                splitter.feed(&chunk).map_err(axum::Error::new)
            })
            .then(move |raws| {
                let visibility = visibility.clone();
                async move {
                    let raws = raws?;
                    if raws.is_empty() {
                        return Ok(Bytes::new());
                    }
                    off_the_runtime(move || visibility.filter_events(raws))
                        .await
                        .map(Bytes::from)
                        .map_err(axum::Error::new)
                }
            });
        parts.headers.remove(header::CONTENT_LENGTH);
        Ok(Response::from_parts(parts, Body::from_stream(stream)))
    } else {
        Ok(Response::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests;
