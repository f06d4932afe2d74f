//! The connections to a route's downstream: HTTP/1.1, kept alive in a pool
//! per thread, each driven by the request that uses it.
//!
//! hyper-util's pooled client runs every connection as a task of its own:
//! a request crosses a channel to that task, the answer crosses back, and
//! the response body arrives one chunk per task switch — on an event stream
//! one write to the client per event the downstream wrote. Here the
//! request's own task polls the connection: while it waits for the answer,
//! and from the answer's body (`DrivenBody`), which hands on everything
//! already read in one frame. A connection whose answer was read to its end
//! goes back to the pool of the thread it was used on (so each of
//! `server.workers` keeps its own); one whose answer was not (the client
//! left) is closed.
//!
//! Measured against hyper-util's client (tests/bench/README.md, "Last
//! measured"): one event stream 0.15× → 0.87× nginx's events/s, 5.3 → 0.5
//! µs CPU per event; small POSTs about the same.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{header, HeaderValue, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

/// How long a connection may wait in the pool for its next request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The most connections one thread keeps idle for one downstream.
const POOL_MAX_IDLE: usize = 1024;
/// The most bytes one frame to the client gathers from what the downstream
/// has already sent.
const GATHER_LIMIT: usize = 64 * 1024;

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a downstream request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DownstreamError {
    /// The target has no scheme or host.
    #[error("{0} is not an absolute http(s) URL")]
    NotAbsolute(Uri),
    /// No connection could be opened.
    #[error("cannot connect to {authority}")]
    Connect {
        authority: Authority,
        #[source]
        source: BoxError,
    },
    /// The connection failed before the answer's head arrived.
    #[error("the request failed")]
    Request(#[source] hyper::Error),
}

/// A route's downstream client. Clones share the pool (it is per thread and
/// per client, so each route's connect settings hold for its connections).
#[derive(Clone)]
pub(crate) struct DownstreamClient {
    connector: HttpsConnector<HttpConnector>,
    http1: http1::Builder,
    id: u64,
}

impl DownstreamClient {
    /// A client for http and https downstreams, `connect_timeout` to open a
    /// connection.
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        // Only HTTP/1.1 is offered in TLS too: the forwarder speaks
        // HTTP/1.1, one request per connection at a time.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        DownstreamClient {
            connector,
            http1: http1::Builder::new(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Sends `request` (an absolute URI) on an idle connection of this
    /// thread's pool, or a new one, and returns the answer once its head
    /// arrived. A request an idle connection handed back unsent (it closed
    /// meanwhile) goes on the next idle one, or a new one; a request that
    /// left is never sent again.
    pub(crate) async fn request(
        &self,
        mut request: Request<Body>,
    ) -> Result<Response<DrivenBody>, DownstreamError> {
        let key = self.key(request.uri())?;
        to_origin_form(&mut request, &key);
        // Let the other requests that are ready be read first, as
        // hyper-util's connection tasks did: their downstream writes then go
        // out in one turn of the scheduler, and a downstream on the same CPU
        // wakes (and preempts the proxy) once for them, not once a request.
        // Measured (tests/bench/README.md): at 32 connections 2 µs less
        // kernel time a request, 0.43× → 0.47× nginx; at 256, 9,000 →
        // 11,800 requests/s and 85 → 68 µs CPU a request.
        tokio::task::yield_now().await;
        let mut reused = checkout(&key);
        loop {
            let fresh = reused.is_none();
            let mut connection = match reused.take() {
                Some(idle) => idle,
                // Boxed: connecting (TCP, TLS, the handshake) takes a
                // larger future than the rest of a request; kept inline it
                // would make every request's future that large.
                None => Box::pin(self.connect(&key)).await?,
            };
            match exchange(&mut connection, request).await {
                Ok(response) => {
                    return Ok(response.map(|body| DrivenBody::new(body, connection, key)))
                }
                Err(mut failed) => match failed.take_message() {
                    // The request never left: a closed idle connection.
                    Some(unsent) if !fresh => {
                        request = unsent;
                        reused = checkout(&key);
                    }
                    _ => return Err(DownstreamError::Request(failed.into_error())),
                },
            }
        }
    }

    fn key(&self, uri: &Uri) -> Result<PoolKey, DownstreamError> {
        let not_absolute = || DownstreamError::NotAbsolute(uri.clone());
        let authority = uri.authority().ok_or_else(not_absolute)?.clone();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(not_absolute()),
        };
        Ok(PoolKey {
            client: self.id,
            https,
            authority,
        })
    }

    async fn connect(&self, key: &PoolKey) -> Result<Pooled, DownstreamError> {
        let failed = |source: BoxError| DownstreamError::Connect {
            authority: key.authority.clone(),
            source,
        };
        let scheme = if key.https {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(key.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| failed(e.into()))?;
        let io = self.connector.clone().call(uri).await.map_err(failed)?;
        let (sender, connection) = self
            .http1
            .handshake(io)
            .await
            .map_err(|e| failed(e.into()))?;
        Ok(Pooled {
            sender,
            connection: Some(Box::pin(connection)),
            idle_since: Instant::now(),
        })
    }
}

/// The request line's target is the path and query; the downstream's host
/// (and port, unless the scheme's own) goes in `Host` — never user
/// information an announced endpoint URL might carry, and never the
/// client's own `Host`.
fn to_origin_form(request: &mut Request<Body>, key: &PoolKey) {
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(path);
    let default_port = if key.https { 443 } else { 80 };
    let authority = key.authority.as_str();
    let host = match key.authority.port_u16() {
        Some(port) if port == default_port => key.authority.host(),
        // host:port as the URL spelled it, without any user information.
        _ => authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host),
    };
    if let Ok(host) = HeaderValue::from_str(host) {
        request.headers_mut().insert(header::HOST, host);
    }
}

/// Sends the request and drives the connection until the answer's head
/// arrives (or the connection ends, which fails the request).
async fn exchange(
    pooled: &mut Pooled,
    request: Request<Body>,
) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>> {
    let answer = pooled.sender.try_send_request(request);
    let mut answer = std::pin::pin!(answer);
    poll_fn(|cx| {
        pooled.drive(cx);
        answer.as_mut().poll(cx)
    })
    .await
}

/// One connection: the handle requests are sent with, and the connection
/// itself, which whoever uses it polls.
struct Pooled {
    sender: SendRequest<Body>,
    /// `None` once the connection future has completed (closed or failed):
    /// dropping it at once hands back a request still queued on it (hyper
    /// closes an idle connection at the downstream's EOF without failing
    /// what is queued; kept, the request would wait for the timeout).
    ///
    /// Boxed: hyper's connection (buffers, parser state, TLS session) is
    /// 1.7 KiB, and a pooled connection moves several times a request
    /// (out of the pool, into the exchange, into the answer's body, back);
    /// boxed, each move is a pointer, not a 1.7 KiB copy.
    connection: Option<Pin<Box<Connection<Io, Body>>>>,
    idle_since: Instant,
}

impl Pooled {
    /// Polls the connection (reads, writes, moves the answer's body on);
    /// whether it is still open.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(connection) = self.connection.as_mut() {
            if connection.as_mut().poll(cx).is_ready() {
                self.connection = None;
            }
        }
        self.connection.is_some()
    }

    /// Polls the connection once; whether it can take another request.
    fn still_usable(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && self.sender.is_ready()
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    client: u64,
    https: bool,
    authority: Authority,
}

thread_local! {
    /// The idle connections of this thread, newest last.
    static IDLE: RefCell<HashMap<PoolKey, Vec<Pooled>>> = RefCell::new(HashMap::new());
}

/// The newest idle connection to `key` that is still open. Connections
/// idle too long, or closed by the downstream meanwhile, are dropped.
fn checkout(key: &PoolKey) -> Option<Pooled> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut closed = Vec::new();
    let found = IDLE.try_with(|idle| {
        let mut idle = idle.try_borrow_mut().ok()?;
        let connections = idle.get_mut(key)?;
        let now = Instant::now();
        let mut found = None;
        while let Some(mut candidate) = connections.pop() {
            if now.duration_since(candidate.idle_since) < POOL_IDLE_TIMEOUT
                && candidate.still_usable(&mut cx)
            {
                found = Some(candidate);
                break;
            }
            closed.push(candidate);
        }
        // Older ones are at the front: the rest of the stale ones go too.
        let stale = connections
            .iter()
            .take_while(|c| now.duration_since(c.idle_since) >= POOL_IDLE_TIMEOUT)
            .count();
        closed.extend(connections.drain(..stale));
        found
    });
    let found = found.ok().flatten();
    // Closing happens outside the pool's borrow.
    drop(closed);
    found
}

/// Puts a connection whose last answer was read to its end back in the
/// pool, if it can take another request.
fn recycle(key: PoolKey, mut pooled: Pooled) {
    let mut cx = Context::from_waker(Waker::noop());
    if !pooled.still_usable(&mut cx) {
        return;
    }
    pooled.idle_since = Instant::now();
    // During the thread's teardown the pool is gone: the connection closes.
    let _ = IDLE.try_with(|idle| {
        let Ok(mut idle) = idle.try_borrow_mut() else {
            return;
        };
        let connections = idle.entry(key).or_default();
        if connections.len() < POOL_MAX_IDLE {
            connections.push(pooled);
        }
    });
}

/// An answer's body: reading it drives its connection, and a frame holds
/// everything the downstream had sent by then (up to `GATHER_LIMIT`), so
/// the client gets one write where the downstream made many small ones.
pub(crate) struct DrivenBody {
    body: Incoming,
    connection: Option<(PoolKey, Pooled)>,
    /// A frame or end read after data was gathered, handed on next.
    held: Option<Option<Result<Frame<Bytes>, hyper::Error>>>,
}

impl DrivenBody {
    fn new(body: Incoming, pooled: Pooled, key: PoolKey) -> Self {
        DrivenBody {
            body,
            connection: Some((key, pooled)),
            held: None,
        }
    }

    /// The next frame of the body, driving the connection when the body
    /// waits on it.
    fn next_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.connection.as_mut() {
            // Once the connection ended, the body ends or fails with what
            // it already has.
            Some((_, pooled)) => {
                pooled.drive(cx);
            }
            None => return Poll::Pending,
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    /// The body is read to its end: its connection goes back to the pool.
    fn finish(&mut self) {
        if let Some((key, pooled)) = self.connection.take() {
            recycle(key, pooled);
        }
    }
}

impl HttpBody for DrivenBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(held) = this.held.take() {
            if held.is_none() {
                this.finish();
            }
            return Poll::Ready(held);
        }
        let mut gathered: Option<Gathered> = None;
        loop {
            let polled = this.next_frame(cx);
            let next = match polled {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let gathered = gathered.get_or_insert_with(Gathered::default);
                        gathered.push(data);
                        if gathered.len() < GATHER_LIMIT {
                            continue;
                        }
                        None
                    }
                    Err(frame) => Some(Some(Ok(frame))),
                },
                Poll::Ready(Some(Err(e))) => {
                    this.connection = None;
                    Some(Some(Err(e)))
                }
                Poll::Ready(None) => Some(None),
                Poll::Pending => None,
            };
            return match (gathered, next) {
                (Some(data), next) => {
                    this.held = next;
                    Poll::Ready(Some(Ok(Frame::data(data.into_bytes()))))
                }
                (None, Some(None)) => {
                    this.finish();
                    Poll::Ready(None)
                }
                (None, Some(frame)) => Poll::Ready(frame),
                (None, None) => Poll::Pending,
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.held {
            Some(held) => held.is_none(),
            None => self.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.held.is_some() {
            SizeHint::default()
        } else {
            self.body.size_hint()
        }
    }
}

impl std::fmt::Debug for DrivenBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrivenBody")
            .field("pooled", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for DrivenBody {
    fn drop(&mut self) {
        // hyper stops reading a body that says it has ended without asking
        // for the end; the connection is still good then.
        if self.is_end_stream() {
            self.finish();
        }
    }
}

/// Data frames read in one go: the first kept as it is, copied only when a
/// second joins it.
#[derive(Default)]
struct Gathered {
    first: Option<Bytes>,
    joined: Option<Vec<u8>>,
}

impl Gathered {
    fn push(&mut self, data: Bytes) {
        match (&mut self.joined, self.first.take()) {
            (Some(joined), _) => joined.extend_from_slice(&data),
            (None, None) => self.first = Some(data),
            (None, Some(first)) => {
                let mut joined = Vec::with_capacity(first.len() + data.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                self.joined = Some(joined);
            }
        }
    }

    fn len(&self) -> usize {
        match (&self.joined, &self.first) {
            (Some(joined), _) => joined.len(),
            (None, Some(first)) => first.len(),
            (None, None) => 0,
        }
    }

    fn into_bytes(self) -> Bytes {
        match (self.joined, self.first) {
            (Some(joined), _) => Bytes::from(joined),
            (None, Some(first)) => first,
            (None, None) => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests;
