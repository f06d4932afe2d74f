//! Connections: accepted under a budget and served with time limits, so no
//! client can hold a socket, a connection or a request longer than the
//! configuration allows (DESIGN.md invariant 9). Both listeners, public and
//! admin, are served here, each with its own budget; the public listener's
//! workers (`workers.rs`) share one.
//!
//! What bounds what:
//! - `server.max_connections`: connections beyond it are answered 503 and
//!   closed at once; the ones already open carry on.
//! - `server.header_timeout`: a new connection must bring its first request
//!   (or the HTTP/2 preface) within it, which the connection's watch
//!   enforces (`Activity::idle_expired`); every HTTP/1.1 head must end within
//!   it from its first byte (or the end of the request before it), which the
//!   HTTP/1.1 server enforces as it reads the head (`http1.rs`: 408, and the
//!   connection closes). A head that arrives whole, as nearly all do,
//!   costs no timer.
//! - `server.idle_timeout`: a connection with no request in progress is
//!   closed after it. A request is in progress until its response body has
//!   been sent, so open event streams never count as idle.
//! - `server.body_timeout`: the request body must arrive within it
//!   (`body_deadline`).
//! - `server.send_timeout`: an HTTP/1.1 client that takes no part of an
//!   answer for this long is disconnected (`http1.rs`); a write that does
//!   not wait costs no timer.
//! - An answer to an HTTP/1.1 request whose body was not read to its end
//!   (refused before anything read it) says `Connection: close`, and the
//!   connection closes after it: what follows is not the next head.
//! - HTTP/1.1 head size and header count (`http1.rs`: 431), HTTP/2 header
//!   list size, streams
//!   per connection, pending and locally reset streams, and pings that
//!   close connections whose peer is gone.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, Version};
use http_body::Frame;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::util::MapResponse;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use crate::clock::{self, ClockedExecutor};

use super::body_deadline::{BodyDeadlineLayer, UnreadBody};
use super::framing::CheckFramingLayer;
use super::http1::{self, HeadLimits, Wire};
use super::rescue::RescueLayer;
use super::sniff::{self, Prefixed};
use super::stack::Routes;
use super::woken::PolledWhenWoken;
use crate::checkpoint::{Around, AroundLayer, AroundService, Leave};
use crate::config::ServerConfig;

/// HTTP/2 pings on every connection this often; a peer that does not answer
/// within `H2_PING_TIMEOUT` is gone, and its connection (with any stream it
/// held open) is closed.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams a client may open and reset before the server accepts them, and
/// streams the server may reset for protocol errors, per connection, before
/// the connection is closed (HTTP/2 "rapid reset" and "made you reset").
const H2_MAX_PENDING_RESETS: usize = 20;
const H2_MAX_LOCAL_ERROR_RESETS: usize = 100;
/// After a connection is asked to close (idle, shutdown), how long it may
/// take to finish what it is writing.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// A refusal is logged at most this often, so a flood does not become a
/// flood of log lines.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The answer to a connection over the budget (HTTP/1.1 clients read it;
/// others see the connection close).
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 46\r\nretry-after: 1\r\nconnection: close\r\n\r\nThe server is at its connection limit; retry.\n";

/// The limits of one listener, from `server.*`.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_concurrent_streams: u32,
    /// After a shutdown signal, how long open requests and streams may run.
    pub shutdown_grace: Duration,
}

impl Limits {
    pub(crate) fn from_config(server: &ServerConfig) -> Self {
        Limits {
            header_timeout: server.header_timeout.0,
            idle_timeout: server.idle_timeout.0,
            body_timeout: server.body_timeout.0,
            send_timeout: server.send_timeout.0,
            max_connections: server.max_connections,
            max_header_bytes: server.max_header_bytes,
            max_headers: server.max_headers,
            max_concurrent_streams: server.max_concurrent_streams,
            shutdown_grace: server.shutdown_grace.0,
        }
    }

    /// A listener's connection budget: `server.max_connections` permits,
    /// shared by every accept loop of that listener.
    pub(crate) fn budget(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(self.max_connections))
    }

    /// HTTP/2's settings; HTTP/1.1 is served by `http1.rs`.
    fn http2(&self) -> http2::Builder<ClockedExecutor> {
        let mut builder = http2::Builder::new(ClockedExecutor);
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT);
        builder
    }
}

/// Accepts connections (HTTP/1.1 and HTTP/2) on `listener` until shutdown,
/// then lets open requests and streams finish for up to the grace period and
/// closes what is left. A connection holds a permit of `budget` while open.
/// `name` says which listener in logs.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Routes,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
    budget: Arc<Semaphore>,
    name: &'static str,
) -> std::io::Result<()> {
    let limits = Arc::new(limits);
    let http2 = Arc::new(limits.http2());
    let mut refusals = Refusals::default();
    let mut connections = tokio::task::JoinSet::new();
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stop);
    let (closing, close_signal) = watch::channel(false);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, go on.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = budget.clone().try_acquire_owned() else {
                    refusals.refuse(stream, name, limits.max_connections);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                // Boxed: a connection's future (the connection and the
                // stack above it, several KiB) would otherwise be copied
                // into the task and moved again as the task runs and ends.
                let served = Box::pin(serve_one(
                    stream,
                    remote,
                    router.clone(),
                    http2.clone(),
                    limits.clone(),
                    close_signal.clone(),
                ));
                // Clocked: the time is read once per poll of the task
                // (`clock`), not by each layer that asks for it.
                connections.spawn(clock::Clocked::new(async move {
                    served.await;
                    drop(permit);
                }));
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = &mut stop => break,
        }
    }
    drop(listener);
    let _ = closing.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!(listener = name, grace = ?limits.shutdown_grace, open = connections.len(), "shutdown grace period over; closing remaining connections");
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves one connection until it ends, is idle too long, or the server
/// shuts down.
async fn serve_one(
    stream: TcpStream,
    remote: SocketAddr,
    router: Routes,
    http2: Arc<http2::Builder<ClockedExecutor>>,
    limits: Arc<Limits>,
    closing: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let idle = activity.idle_expired(limits.header_timeout, limits.idle_timeout);
    tokio::pin!(idle);
    let mut shutdown = closing.clone();
    let close = async {
        tokio::select! {
            _ = &mut idle => {}
            _ = shutdown.wait_for(|c| *c) => {}
        }
    };
    tokio::pin!(close);
    // The connection wakes this task a few times a request; the idle
    // timer and the shutdown signal are asked again only when one of
    // them fired.
    let close = PolledWhenWoken::new(close.as_mut());
    tokio::pin!(close);
    let first = tokio::select! {
        biased;
        first = sniff::first_bytes(&stream) => first,
        () = close.as_mut() => return,
    };
    let Ok(first) = first else { return };
    match first {
        sniff::First::Http2(preface) => {
            let io = Prefixed::new(preface, stream);
            let framing = CheckFramingLayer::default();
            let service = connection_service(&activity, &limits, framing, router, remote);
            serve_http2(&http2, io, service, close, &closing).await;
        }
        sniff::First::Http1(buffered) => {
            let head_limits = HeadLimits {
                max_bytes: limits.max_header_bytes,
                max_fields: limits.max_headers,
                timeout: limits.header_timeout,
            };
            let wire = Arc::new(Wire::new(stream, buffered, limits.send_timeout));
            let framing = CheckFramingLayer::judged_raw();
            let service = connection_service(&activity, &limits, framing, router, remote);
            http1::serve(wire, service, head_limits, close, &closing).await;
        }
    }
}

/// The stack in front of the router for one connection, whichever HTTP
/// it speaks.
fn connection_service<B>(
    activity: &Arc<Activity>,
    limits: &Limits,
    framing: CheckFramingLayer,
    router: Routes,
    remote: SocketAddr,
) -> impl Service<
    Request<B>,
    Response = Response<TrackedBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    ServiceBuilder::new()
        .layer(TrackActivityLayer(activity.clone()))
        // A request the router must not see is answered here, and only here.
        .layer(RescueLayer)
        .layer(framing)
        .layer(BodyDeadlineLayer::new(
            limits.body_timeout,
            activity.unread.clone(),
        ))
        .service(router.map_request(move |mut request: Request<_>| {
            make_room(request.extensions_mut());
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(remote));
            request
        }))
}

/// How many values the stack files in a request's extensions at most: on
/// an MCP endpoint the peer, the client address (behind a trusted proxy),
/// the audit slot, the session, the policy's outcome, version and call,
/// and the session's owner (8), with room to spare.
const FILED_EXTENSIONS: usize = 12;

/// Gives a request's extension map room for [`FILED_EXTENSIONS`] values,
/// keeping what it holds (hyper may have filed something). `http`'s map
/// starts with room for 3 and grew twice on the way, each time moving
/// every value to a new table (callgrind: 1,300 instructions and two
/// allocations a request). It offers no `with_capacity`, so a map is grown
/// once by filing that many values and emptied (which keeps its table),
/// and each request gets a clone of it (a table of that size).
fn make_room(extensions: &mut axum::http::Extensions) {
    static EMPTY_WITH_ROOM: std::sync::LazyLock<axum::http::Extensions> =
        std::sync::LazyLock::new(|| {
            #[derive(Clone)]
            struct Filed<const N: usize>;
            let mut extensions = axum::http::Extensions::new();
            macro_rules! file {
                ($($n:literal)*) => { $(extensions.insert(Filed::<$n>);)* };
            }
            file!(0 1 2 3 4 5 6 7 8 9 10 11);
            debug_assert_eq!(extensions.len(), FILED_EXTENSIONS);
            extensions.clear();
            extensions
        });
    let mut roomy = EMPTY_WITH_ROOM.clone();
    roomy.extend(std::mem::take(extensions));
    *extensions = roomy;
}

/// Serves an HTTP/2 connection until it ends; when `close` fires (idle,
/// shutdown) it sends GOAWAY and lets open streams finish: at shutdown for
/// as long as the server's grace period allows, when idle briefly.
async fn serve_http2<S>(
    http2: &http2::Builder<ClockedExecutor>,
    io: Prefixed,
    service: S,
    close: Pin<&mut impl Future<Output = ()>>,
    closing: &watch::Receiver<bool>,
) where
    S: Service<
            Request<Incoming>,
            Response = Response<TrackedBody>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static,
{
    let connection = http2.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let finished = tokio::select! {
        biased;
        _ = connection.as_mut() => true,
        () = close => false,
    };
    if finished {
        return;
    }
    connection.as_mut().graceful_shutdown();
    if *closing.borrow() {
        let _ = connection.await;
    } else {
        let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
    }
}

/// Logs refusals, at most one line per interval with the count since.
#[derive(Default)]
struct Refusals {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    fn refuse(&mut self, stream: TcpStream, listener: &'static str, limit: usize) {
        // Best effort: the socket is new, its send buffer empty, so this
        // does not block; the client may not even speak HTTP/1.1.
        let _ = stream.try_write(OVER_CAPACITY);
        drop(stream);
        self.unlogged += 1;
        if self
            .last_logged
            .is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL)
        {
            tracing::warn!(
                listener,
                refused = self.unlogged,
                limit,
                "connection refused: server.max_connections reached"
            );
            self.last_logged = Some(Instant::now());
            self.unlogged = 0;
        }
    }
}

/// What one connection is doing: how many requests are in progress, and
/// since when none is.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` when the last request finished.
    idle_since_ms: AtomicU64,
    served_any: AtomicBool,
    /// Whether the request in progress left its body unread.
    unread: UnreadBody,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: clock::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            served_any: AtomicBool::new(false),
            unread: UnreadBody::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        let since = clock::now().saturating_duration_since(self.started);
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves once no request has been in progress for `idle` (or, before
    /// the first request, for `first_request`).
    async fn idle_expired(&self, first_request: Duration, idle: Duration) {
        // The limit in force can shrink when the first request arrives, so
        // never sleep longer than the shorter one before looking again.
        let recheck = first_request.min(idle);
        loop {
            let limit = if self.served_any.load(Ordering::Acquire) {
                idle
            } else {
                first_request
            };
            if self.in_flight.load(Ordering::Acquire) > 0 {
                // Busy: look again later; a request that ends meanwhile
                // starts the idle clock then.
                tokio::time::sleep(recheck).await;
                continue;
            }
            let idle_since = self.idle_since_ms.load(Ordering::Acquire);
            let idle_for = Duration::from_millis(self.now_ms().saturating_sub(idle_since));
            if idle_for >= limit {
                return;
            }
            tokio::time::sleep((limit - idle_for).min(recheck)).await;
        }
    }
}

/// Counts a request in progress from its arrival until its response body is
/// finished or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.served_any.store(true, Ordering::Release);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .idle_since_ms
            .store(activity.now_ms(), Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts each request of a connection as in progress until its response
/// body is finished or dropped.
#[derive(Clone)]
struct TrackActivityLayer(Arc<Activity>);

/// The service's responses, each with a body that can carry its request's
/// `InFlight`.
type Tracked<S> = MapResponse<S, fn(Response<Body>) -> Response<TrackedBody>>;

impl<S> Layer<S> for TrackActivityLayer {
    type Service = AroundService<TrackActivity, Tracked<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        let trackable: fn(Response<Body>) -> Response<TrackedBody> =
            |response| response.map(TrackedBody::new);
        // An `Around`: it waits for nothing of its own, so the stack's
        // future stays inline instead of being boxed (and copied into the
        // box) once more per request.
        AroundLayer::new(TrackActivity(self.0.clone())).layer(MapResponse::new(inner, trackable))
    }
}

struct TrackActivity(Arc<Activity>);

impl<B, E> Around<Request<B>, Response<TrackedBody>, E> for TrackActivity {
    type Visit = ActiveRequest;

    /// In progress from the moment the request is handed over.
    fn enter(
        &self,
        request: &mut Request<B>,
    ) -> Result<ActiveRequest, Result<Response<TrackedBody>, E>> {
        Ok(ActiveRequest {
            one_at_a_time: request.version() <= Version::HTTP_11,
            in_flight: InFlight::begin(self.0.clone()),
        })
    }
}

/// A request in progress; dropped unanswered, it is no longer counted.
struct ActiveRequest {
    one_at_a_time: bool,
    in_flight: InFlight,
}

impl<E> Leave<Response<TrackedBody>, E> for ActiveRequest {
    /// The body carries the count on until it is finished or dropped.
    fn leave(self, outcome: &mut Result<Response<TrackedBody>, E>) {
        if let Ok(response) = outcome {
            if self.one_at_a_time && self.in_flight.0.unread.is_set() {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response.body_mut().in_flight = Some(self.in_flight);
        }
    }
}

/// A response body that keeps its request counted as in progress.
struct TrackedBody {
    inner: Body,
    in_flight: Option<InFlight>,
}

impl TrackedBody {
    fn new(inner: Body) -> Self {
        TrackedBody {
            inner,
            in_flight: None,
        }
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
