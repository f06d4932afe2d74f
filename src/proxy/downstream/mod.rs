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
//! Measured against hyper-util's client (tests/bench/README.md, "Earlier
//! measurement (2026-12-04)"): one event stream 0.15× → 0.87× nginx's
//! events/s, 5.3 → 0.5 µs CPU per event; small POSTs about the same. The
//! HTTP/1.1 itself is `http1` (why not hyper's client connection: there;
//! 0.91× → 1.15× nginx's events/s again, memory per idle stream 2.32× →
//! 1.41×, "Last measured"), the answer's body `body`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::http::uri::{Authority, Scheme};
use axum::http::{Method, Request, Response, Uri};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::clock;

mod body;
mod http1;

pub(crate) use body::{Decoder, DrivenBody, Gathered};
use http1::{Conn, Prepared};
pub(crate) use http1::{ExchangeError, Framing};

use super::headers::{lines_of, HeaderLines};

/// How long a connection may wait in the pool for its next request, unless
/// the route says otherwise (`downstream.pool_idle_timeout`, whose default
/// this is): less than the keep-alive timeouts MCP servers run with
/// (Node's http server and uvicorn 5 s, Apache 5 s, nginx 75 s). A server
/// closes an idle connection when its own timeout passes; a request sent
/// on it at that moment fails with a 502 (the close arrives after the
/// request left, and a POST is never sent twice). With 90 s, as before,
/// the benchmark's nginx stub (75 s) closed connections under the proxy's
/// next round: one request in 214,000 failed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// The most connections one thread keeps idle for one downstream.
const POOL_MAX_IDLE: usize = 1024;

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
    /// The exchange failed before the answer's head arrived.
    #[error("the request failed")]
    Request(#[source] ExchangeError),
    /// The answer's head had not arrived by the request's deadline.
    #[error("no answer before the deadline")]
    TimedOut,
}

/// A route's downstream client. Clones share the pool (it is per thread and
/// per client, so each route's connect settings hold for its connections).
#[derive(Clone)]
pub(crate) struct DownstreamClient {
    connector: HttpsConnector<HttpConnector>,
    connect_timeout: Duration,
    id: u64,
    idle_timeout: Duration,
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
            connect_timeout,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            idle_timeout: POOL_IDLE_TIMEOUT,
        }
    }

    /// Keeps idle connections for `idle_timeout` instead of the default.
    pub(crate) fn with_pool_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Sends `request` (an absolute URI), as [`DownstreamClient::send`]
    /// does, with its headers as they are, waiting `timeout` at most for
    /// the answer to start.
    pub(crate) async fn request(
        &self,
        request: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<DrivenBody>, DownstreamError> {
        self.send(request.into(), clock::now() + timeout).await
    }

    /// Sends `outgoing` on an idle connection of this thread's pool, or a
    /// new one, and returns the answer once its head arrived, unless
    /// `deadline` passes first. A request an idle connection handed back
    /// unsent (it closed meanwhile) goes on the next idle one, or a new
    /// one; a request that left is never sent again.
    pub(crate) fn send(
        &self,
        outgoing: Outgoing,
        deadline: Instant,
    ) -> impl Future<Output = Result<Response<DrivenBody>, DownstreamError>> + Send + '_ {
        async move {
            let key = self.key(&outgoing.target)?;
            let mut prepared =
                Prepared::new(outgoing, key.host_header()).map_err(DownstreamError::Request)?;
            let mut reused = checkout(&key, self.idle_timeout);
            // On an idle connection, let the other requests that are ready be
            // read first, as hyper-util's connection tasks did: their
            // downstream writes then go out in one turn of the scheduler, and
            // a downstream on the same CPU wakes (and preempts the proxy) once
            // for them, not once a request. Measured (tests/bench/README.md):
            // at 32 connections 2 µs less kernel time a request, 0.43× →
            // 0.47× nginx; at 256, 9,000 → 11,800 requests/s and 85 → 68 µs
            // CPU a request. A request that opens a connection does not
            // yield: its connect waits for the handshake, which lets the
            // others run anyway, and the yield only added a turn of the
            // scheduler (an `epoll_wait`, the whole stack polled again) to
            // every new event stream's first event.
            if reused.is_some() {
                tokio::task::yield_now().await;
            }
            loop {
                let fresh = reused.is_none();
                let mut pooled = match reused.take() {
                    Some(idle) => idle,
                    // Boxed: connecting (TCP, TLS) takes a larger future than
                    // the rest of a request; kept inline it would make every
                    // request's future that large.
                    None => Box::pin(self.connect(&key, deadline)).await?,
                };
                pooled.deadline.as_mut().reset(deadline);
                let Pooled {
                    conn,
                    deadline: timer,
                    ..
                } = &mut pooled;
                let method = match Within::new(conn.send(prepared), timer.as_mut()).await? {
                    Ok(method) => method,
                    // The request never left: a closed idle connection.
                    Err(Ok(unsent)) if !fresh => {
                        prepared = unsent;
                        reused = checkout(&key, self.idle_timeout);
                        continue;
                    }
                    Err(Ok(_)) => {
                        return Err(DownstreamError::Request(ExchangeError::ClosedBeforeAnswer))
                    }
                    Err(Err(failed)) => return Err(DownstreamError::Request(failed)),
                };
                let answer = Within::new(conn.read_answer(&method), timer.as_mut())
                    .await?
                    .map_err(DownstreamError::Request)?;
                let body = DrivenBody::new(answer.framing, answer.keep_alive, pooled, key);
                let mut response = Response::new(body);
                *response.status_mut() = answer.status;
                *response.version_mut() = answer.version;
                *response.headers_mut() = answer.headers;
                return Ok(response);
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

    /// Opens a connection by the request's `deadline` at the latest
    /// (`TimedOut` when it passes first), and within `connect_timeout`.
    async fn connect(&self, key: &PoolKey, deadline: Instant) -> Result<Pooled, DownstreamError> {
        let failed = |source: BoxError| DownstreamError::Connect {
            authority: key.authority.clone(),
            source,
        };
        if let Some(address) = key.plain_ip_address() {
            // One timer, at the earlier of the deadline and the connect
            // timeout, where a timeout inside a timeout registered two for
            // every new connection (and each new event stream opens one).
            let connect_by = clock::now() + self.connect_timeout;
            return match tokio::time::timeout_at(connect_by.min(deadline), connect_plain(address))
                .await
            {
                Ok(connected) => connected.map_err(|e| failed(e.into())),
                Err(_) if deadline <= connect_by => Err(DownstreamError::TimedOut),
                Err(_) => Err(failed(
                    TcpConnectError(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timeout",
                    ))
                    .into(),
                )),
            };
        }
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
        let io = tokio::time::timeout_at(deadline, self.connector.clone().call(uri))
            .await
            .map_err(|_| DownstreamError::TimedOut)?
            .map_err(failed)?;
        Ok(Pooled::opened(io))
    }
}

/// Opens a plain connection to an IP address: what the connector does for
/// one, without its URI parsing and resolver step, and with the socket
/// non-blocking from its creation (socket2 sets it afterwards, two `fcntl`
/// calls a connection). Errors read as the connector's; the caller times it.
async fn connect_plain(address: SocketAddr) -> Result<Pooled, TcpConnectError> {
    let tcp = TcpStream::connect(address).await.map_err(TcpConnectError)?;
    tcp.set_nodelay(true).map_err(TcpConnectError)?;
    Ok(Pooled::opened(MaybeHttpsStream::Http(TokioIo::new(tcp))))
}

/// A plain connection that could not be opened (worded as hyper-util's
/// connector words it).
#[derive(Debug, thiserror::Error)]
#[error("tcp connect error")]
struct TcpConnectError(#[source] std::io::Error);

/// A request to the downstream: what `Prepared` writes. The target is
/// absolute (it says which pool); the request line carries only its path
/// and query, and `Host` the downstream's host (`PoolKey::host_header`).
pub(crate) struct Outgoing {
    pub(crate) method: Method,
    pub(crate) target: Uri,
    pub(crate) headers: HeaderLines,
    pub(crate) body: Body,
}

impl From<Request<Body>> for Outgoing {
    /// A request as it is, its headers included.
    fn from(request: Request<Body>) -> Self {
        let (parts, body) = request.into_parts();
        Outgoing {
            method: parts.method,
            target: parts.uri,
            headers: lines_of(parts.headers),
            body,
        }
    }
}

/// One connection to the downstream, in the pool or in use.
pub(super) struct Pooled {
    /// Boxed: the connection (TLS session included) is large, and a pooled
    /// connection moves several times a request (out of the pool, into the
    /// answer's body, back); boxed, each move is a pointer.
    conn: Box<Conn>,
    idle_since: Instant,
    /// The deadline of the request using the connection: one timer entry
    /// for the connection's life, moved to each request's deadline. A
    /// later deadline is one atomic update of the entry (tokio moves it in
    /// its wheel only when the old one comes); a timer made per request
    /// was inserted in the runtime's wheel and removed from it again, under
    /// its lock, every time (~600 instructions a request against ~230,
    /// tests/bench/README.md). The entry holds the waker of the last
    /// request that waited on it: when the connection waits in the pool or
    /// streams a body, that deadline may still come and wake its task once,
    /// for nothing, and until then (`downstream.response_timeout` at most)
    /// or the connection's next request, a task that ended stays allocated.
    /// (A connection of a runtime that ended, on a thread that runs another
    /// now, is found closed before its timer is asked.)
    deadline: Pin<Box<Sleep>>,
}

impl Pooled {
    /// A connection just opened, by either way of connecting.
    fn opened(io: MaybeHttpsStream<TokioIo<TcpStream>>) -> Self {
        let now = clock::now();
        Pooled {
            conn: Box::new(Conn::new(TokioIo::new(io))),
            idle_since: now,
            deadline: Box::pin(tokio::time::sleep_until(now)),
        }
    }
}

pin_project_lite::pin_project! {
    /// `work`, unless the deadline passes first.
    struct Within<'a, F> {
        #[pin]
        work: F,
        deadline: Pin<&'a mut Sleep>,
    }
}

impl<'a, F> Within<'a, F> {
    fn new(work: F, deadline: Pin<&'a mut Sleep>) -> Self {
        Within { work, deadline }
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, DownstreamError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(done) = this.work.poll(cx) {
            return Poll::Ready(Ok(done));
        }
        this.deadline
            .as_mut()
            .poll(cx)
            .map(|()| Err(DownstreamError::TimedOut))
    }
}

/// Which pool a connection belongs to: the client (its connect settings),
/// the scheme, and the host and port as the URL spelled them.
#[derive(Clone)]
pub(super) struct PoolKey {
    client: u64,
    https: bool,
    authority: Authority,
}

/// By the authority's bytes, hashed in one write: `Authority`'s own `Hash`
/// feeds the hasher one case-folded byte at a time (1,100 instructions per
/// lookup, two lookups a request, in callgrind). Hosts from the config are
/// lowercase already (the URL parser folds them); a differently spelled one
/// only gets a pool of its own.
impl PartialEq for PoolKey {
    fn eq(&self, other: &Self) -> bool {
        self.client == other.client
            && self.https == other.https
            && self.authority.as_str() == other.authority.as_str()
    }
}

impl Eq for PoolKey {}

impl PoolKey {
    /// The downstream's `Host`: its host, and its port unless the scheme's
    /// own — never user information an announced endpoint URL might carry,
    /// and never the client's own `Host`.
    fn host_header(&self) -> &str {
        let default_port = if self.https { 443 } else { 80 };
        match self.authority.port_u16() {
            Some(port) if port == default_port => self.authority.host(),
            // host:port as the URL spelled it, without any user information.
            // Searched byte by byte: `rsplit_once('@')` sets up a
            // character search (~190 instructions a request, callgrind)
            // for an authority of a dozen bytes that rarely has a `@`.
            _ => {
                let authority = self.authority.as_str();
                authority
                    .bytes()
                    .rposition(|b| b == b'@')
                    .map_or(authority, |at| &authority[at + 1..])
            }
        }
    }

    /// Where a plain `http` downstream named by its IP address listens.
    fn plain_ip_address(&self) -> Option<SocketAddr> {
        if self.https {
            return None;
        }
        let host = self.authority.host();
        // An IPv6 address is bracketed in a URL.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let ip: IpAddr = host.parse().ok()?;
        Some(SocketAddr::new(ip, self.authority.port_u16().unwrap_or(80)))
    }
}

impl std::hash::Hash for PoolKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.client.hash(state);
        self.https.hash(state);
        self.authority.as_str().hash(state);
    }
}

/// The pool's map: keyed by configured addresses and those a downstream
/// announced (legacy SSE endpoints), never by what a client sends.
type IdleMap = HashMap<PoolKey, Vec<Pooled>, foldhash::fast::RandomState>;

thread_local! {
    /// The idle connections of this thread, newest last.
    static IDLE: RefCell<IdleMap> = RefCell::new(IdleMap::default());
}

/// The newest idle connection to `key`; those idle `idle_timeout` or
/// longer are dropped. Whether it is still open is asked once, when the
/// request is sent on it (`Conn::send` hands back a request whose
/// connection the downstream closed, and the next one is taken).
fn checkout(key: &PoolKey, idle_timeout: Duration) -> Option<Pooled> {
    // Idle since this or earlier is too long; compared as instants, not
    // as a duration computed for each connection the search looks at.
    let too_long = clock::now().checked_sub(idle_timeout);
    let mut stale = Vec::new();
    let found = IDLE.try_with(|idle| {
        let mut idle = idle.try_borrow_mut().ok()?;
        let connections = idle.get_mut(key)?;
        // Older ones are at the front.
        let fresh_from = connections
            .partition_point(|c| too_long.is_some_and(|too_long| c.idle_since <= too_long));
        stale.extend(connections.drain(..fresh_from));
        connections.pop()
    });
    // Closing happens outside the pool's borrow.
    drop(stale);
    found.ok().flatten()
}

/// Puts a connection whose last answer was read to its end back in the
/// pool, if it can take another request.
pub(super) fn recycle(key: PoolKey, mut pooled: Pooled) {
    let mut cx = Context::from_waker(Waker::noop());
    if !pooled.conn.is_reusable(&mut cx) {
        return;
    }
    pooled.idle_since = clock::now();
    pooled.conn.let_buffer_go();
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

#[cfg(test)]
mod tests;
