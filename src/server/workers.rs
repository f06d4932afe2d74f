//! The public listener's workers (`server.workers`), laid out as nginx lays
//! out its own: N threads, each with its own single-threaded runtime and its
//! own listener on the same address (`SO_REUSEPORT`: the kernel spreads new
//! connections over them). A connection lives and dies on the thread that
//! accepted it. On several CPUs tokio's work-stealing scheduler spent more
//! on wake-ups and hand-offs between its threads than stealing gave back
//! (tests/bench/README.md); independent workers have nothing to hand off.
//!
//! With one worker nothing here runs: the accept loop is a task of the
//! runtime that called `server::start`, as before workers existed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch, Semaphore};

use super::connection::{self, Limits};

/// Pending connections each listener's kernel queue holds, as
/// `TcpListener::bind` asks for.
const BACKLOG: u32 = 1024;

/// Binds `count` listeners to `listen`: the first to the first address it
/// resolves to that can be bound, the others to the very address the first
/// got (so `:0` means one port chosen once, shared by all).
pub(super) async fn bind(listen: &str, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(listen).await? {
        match bind_group(addr, count) {
            Ok(listeners) => return Ok(listeners),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        )
    }))
}

fn bind_group(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    // SO_REUSEPORT would let the group join a process already listening
    // here (an old instance, with an old policy) and share its traffic
    // silently: a plain bind first fails as any server's would.
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let first = bind_one(addr)?;
    let addr = first.local_addr()?;
    let mut listeners = Vec::with_capacity(count);
    for _ in 1..count {
        #[cfg(unix)]
        listeners.push(bind_one(addr)?);
        // No SO_REUSEPORT: the workers share one socket instead.
        #[cfg(not(unix))]
        listeners.push(first.try_clone()?);
    }
    listeners.insert(0, first);
    Ok(listeners)
}

/// One listener of the group, handed over as a std listener: a tokio one
/// belongs to the runtime that made it, and each worker has its own.
fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restart binds again at once.
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)?.into_std()
}

/// What one worker thread needs; every worker gets a clone.
#[derive(Clone)]
pub(super) struct Work {
    pub router: super::stack::Routes,
    pub signal: watch::Receiver<bool>,
    pub limits: Limits,
    /// `server.max_connections`, shared: the limit is the listener's, not a
    /// worker's.
    pub budget: Arc<Semaphore>,
}

/// Serving the public listener: on the calling runtime (one worker) or on
/// worker threads.
pub(super) enum Serving {
    /// One worker: the accept loop is a task of the caller's runtime.
    Here(tokio::task::JoinHandle<io::Result<()>>),
    /// Worker threads; each reports once, when it ends (or panics).
    Threads {
        count: usize,
        reports: mpsc::UnboundedReceiver<(String, io::Result<()>)>,
    },
}

/// Starts one thread per listener, named `mcp-worker-<i>`. When a thread
/// cannot be started the ones already running stop with the shutdown
/// signal's sender, which the caller then drops.
pub(super) fn spawn(listeners: Vec<std::net::TcpListener>, work: &Work) -> io::Result<Serving> {
    let count = listeners.len();
    let (report, reports) = mpsc::unbounded_channel();
    // How many workers still serve: a worker keeps its runtime (and with it
    // the connection tasks of the shared clients — the provider's, metadata
    // fetches — which another worker's request may be using) until every
    // worker has drained. Downstream connections are per thread already
    // (`proxy::downstream`).
    let (serving, _) = watch::channel(count);
    let serving = Arc::new(serving);
    for (index, listener) in listeners.into_iter().enumerate() {
        let name = format!("mcp-worker-{index}");
        let reporter = Report {
            name: name.clone(),
            report: report.clone(),
            result: None,
        };
        let drained = Drained(serving.clone());
        let work = work.clone();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || run(listener, work, reporter, drained))?;
    }
    Ok(Serving::Threads { count, reports })
}

/// A worker thread's life: its runtime, its accept loop, the wait for the
/// others to drain.
fn run(listener: std::net::TcpListener, work: Work, mut reporter: Report, drained: Drained) {
    let everyone = drained.0.subscribe();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            reporter.result = Some(Err(e));
            return;
        }
    };
    let served = runtime.block_on(async move {
        // A worker that cannot serve says so at once (its report stops the
        // others), rather than after they have drained.
        let listener = TcpListener::from_std(listener)?;
        let Work {
            router,
            signal,
            limits,
            budget,
        } = work;
        let served = connection::serve(listener, router, signal, limits, budget, "public").await;
        drop(drained);
        let mut everyone = everyone;
        let _ = everyone.wait_for(|serving| *serving == 0).await;
        served
    });
    reporter.result = Some(served);
    // Anything a request left running must not hold the thread.
    runtime.shutdown_background();
}

/// A worker's share of the count of workers still serving; dropped when it
/// has drained, or when its thread unwinds.
struct Drained(Arc<watch::Sender<usize>>);

impl Drop for Drained {
    fn drop(&mut self) {
        self.0
            .send_modify(|serving| *serving = serving.saturating_sub(1));
    }
}

/// Sends a worker's outcome when its thread ends, however it ends: a
/// panicking worker reports the panic instead of never reporting.
struct Report {
    name: String,
    report: mpsc::UnboundedSender<(String, io::Result<()>)>,
    result: Option<io::Result<()>>,
}

impl Drop for Report {
    fn drop(&mut self) {
        let result = self
            .result
            .take()
            .unwrap_or_else(|| Err(io::Error::other("the worker thread panicked")));
        let _ = self.report.send((std::mem::take(&mut self.name), result));
    }
}

impl Serving {
    /// Until every worker has ended. The first to fail stops the others
    /// (through `shutdown`) and is the answer, named.
    pub(super) async fn wait(self, shutdown: &watch::Sender<bool>) -> io::Result<()> {
        let (count, mut reports) = match self {
            Serving::Here(task) => {
                return task.await.unwrap_or_else(|e| Err(io::Error::other(e)));
            }
            Serving::Threads { count, reports } => (count, reports),
        };
        let mut failure = None;
        for _ in 0..count {
            let Some((name, result)) = reports.recv().await else {
                break;
            };
            if let Err(e) = result {
                tracing::error!(worker = %name, error = %e, "worker failed; stopping the others");
                let _ = shutdown.send(true);
                failure.get_or_insert(io::Error::new(e.kind(), format!("{name}: {e}")));
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_another_group_listens_on_is_refused_not_shared() {
        let running = bind("127.0.0.1:0", 2).await.unwrap();
        let taken = running[0].local_addr().unwrap().to_string();
        let second = bind(&taken, 2).await;
        assert!(
            second.is_err(),
            "a second group joined the first one's port"
        );
        let alone = bind(&taken, 1).await;
        assert!(alone.is_err(), "a single listener joined the group's port");
    }

    #[tokio::test]
    async fn the_group_shares_one_port_even_when_listen_asks_for_any() {
        let listeners = bind("127.0.0.1:0", 3).await.unwrap();
        assert_eq!(listeners.len(), 3);
        let addr = listeners[0].local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        for listener in &listeners {
            assert_eq!(listener.local_addr().unwrap(), addr);
        }
        // The kernel spreads connections over the group: each listener
        // gets some of 32 (the chance that one gets none is 2^-31).
        let mut clients = Vec::new();
        for _ in 0..32 {
            clients.push(std::net::TcpStream::connect(addr).unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let accepted: Vec<usize> = listeners
            .iter()
            .map(|listener| std::iter::from_fn(|| listener.accept().ok()).count())
            .collect();
        assert_eq!(accepted.iter().sum::<usize>(), 32, "{accepted:?}");
        assert!(accepted.iter().all(|n| *n > 0), "{accepted:?}");
    }

    #[tokio::test]
    async fn a_panicking_worker_is_reported_and_stops_the_others() {
        let (report, reports) = mpsc::unbounded_channel();
        let (shutdown, mut signal) = watch::channel(false);
        let reporter = |name: &str| Report {
            name: name.to_string(),
            report: report.clone(),
            result: None,
        };
        // Worker 0 serves until told to stop; worker 1 panics.
        let calm = reporter("mcp-worker-0");
        let calm = std::thread::spawn(move || {
            let mut calm = calm;
            let _ = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(signal.wait_for(|stop| *stop));
            calm.result = Some(Ok(()));
        });
        let doomed = reporter("mcp-worker-1");
        let panicked = std::thread::spawn(move || {
            let _held = doomed;
            panic!("a bug in the accept loop");
        });
        drop(report);
        let serving = Serving::Threads { count: 2, reports };
        let error =
            tokio::time::timeout(std::time::Duration::from_secs(5), serving.wait(&shutdown))
                .await
                .expect("the wait ends")
                .unwrap_err();
        assert_eq!(
            error.to_string(),
            "mcp-worker-1: the worker thread panicked"
        );
        assert!(*shutdown.borrow(), "the others were told to stop");
        assert!(panicked.join().is_err());
        calm.join().unwrap();
    }
}
