//! Listeners and downstream connections: accept, TLS handshake, the HTTP/1.1 + HTTP/2 server,
//! idle detection, and draining on shutdown.
//!
//! Each connection task holds a clone of a drain sender; shutdown tells every connection to
//! finish what it is doing (HTTP/1.1: the current exchange; HTTP/2: GOAWAY) and waits until all
//! senders are gone or the drain deadline passes.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{Request, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use metrics::{counter, gauge};
use rafael_config::{Config, ListenerConfig};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tracing::{debug, info, warn};

use crate::{
    SnapshotHandle,
    failure::cause,
    guard::Activity,
    headers::Forwarded,
    metrics::{
        CONNECTION_ERRORS_TOTAL, CONNECTION_LIMIT_REACHED_TOTAL, CONNECTIONS_ACTIVE,
        CONNECTIONS_TOTAL,
    },
    send_timeout::{SendTimedOut, SendTimeout},
    service::{self, Connection},
};

/// A bound listener socket, ready to serve.
#[derive(Debug)]
pub struct BoundListener {
    /// Index of the listener in the config.
    pub index: usize,
    /// Listener name.
    pub name: Arc<str>,
    /// The socket.
    pub socket: TcpListener,
}

/// Running listeners and their connections.
#[derive(Debug)]
pub struct Server {
    shutdown: watch::Sender<bool>,
    drained: mpsc::Receiver<()>,
    accept_loops: Vec<JoinHandle<()>>,
    addresses: Vec<(Arc<str>, SocketAddr)>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every connection finished.
    Complete,
    /// The deadline passed with connections still open.
    DeadlineReached,
}

// === impl Server ===

/// Binds every listener in `config`. Binding before serving lets tests use port 0 and lets the
/// binary report readiness only once sockets exist.
pub async fn bind_listeners(config: &Config) -> io::Result<Vec<BoundListener>> {
    let mut bound = Vec::with_capacity(config.listeners.len());
    for (index, listener) in config.listeners.iter().enumerate() {
        let socket = bind(listener.bind, listener.backlog).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "listeners[{index}] ({}): cannot bind {}: {e}",
                    listener.name, listener.bind
                ),
            )
        })?;
        bound.push(BoundListener {
            index,
            name: Arc::from(listener.name.as_str()),
            socket,
        });
    }
    Ok(bound)
}

/// Binds `address` with `SO_REUSEADDR` and listens with `backlog`, which
/// `TcpListener::bind` fixes at 128.
fn bind(address: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(backlog)
}

impl Server {
    /// Starts accepting on `listeners`, routing through `handle`.
    pub fn start(handle: SnapshotHandle, listeners: Vec<BoundListener>) -> io::Result<Self> {
        let caps = connection_caps(&handle, &listeners);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (drain_tx, drained) = mpsc::channel(1);
        let mut addresses = Vec::with_capacity(listeners.len());
        let mut accept_loops = Vec::with_capacity(listeners.len());
        for (listener, max_connections) in listeners.into_iter().zip(caps) {
            let address = listener.socket.local_addr()?;
            info!(listener = %listener.name, %address, max_connections, "listening");
            addresses.push((listener.name.clone(), address));
            accept_loops.push(tokio::spawn(accept_loop(
                handle.clone(),
                listener,
                max_connections,
                shutdown_rx.clone(),
                drain_tx.clone(),
            )));
        }
        Ok(Self {
            shutdown,
            drained,
            accept_loops,
            addresses,
        })
    }

    /// The bound address of each listener, by name.
    pub fn addresses(&self) -> &[(Arc<str>, SocketAddr)] {
        &self.addresses
    }

    /// Address of the listener named `name`.
    pub fn address(&self, name: &str) -> Option<SocketAddr> {
        self.addresses
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, a)| *a)
    }

    /// Stops accepting, asks every connection to finish, and waits up to `deadline` for them.
    pub async fn drain(mut self, deadline: Duration) -> DrainOutcome {
        for accept in &self.accept_loops {
            accept.abort();
        }
        for accept in self.accept_loops.drain(..) {
            // An aborted task reports cancellation; nothing else can come out of it.
            let _ = accept.await;
        }
        let _ = self.shutdown.send(true);
        // Every sender lives in a connection or tunnel task; `recv` returns `None` once the last
        // of them has finished.
        match tokio::time::timeout(deadline, self.drained.recv()).await {
            Ok(_) => DrainOutcome::Complete,
            Err(_) => DrainOutcome::DeadlineReached,
        }
    }
}

/// Accepts connections while fewer than `max_connections` are open. At the cap it asks idle
/// keep-alive connections to close and stops accepting until one has gone, so further clients
/// wait in the kernel's backlog instead of taking file descriptors that every other listener,
/// the upstream connections and the admin API need too. The cap is read when the listener
/// starts (a reload that changes it applies at the next restart).
async fn accept_loop(
    handle: SnapshotHandle,
    listener: BoundListener,
    max_connections: u32,
    shutdown: watch::Receiver<bool>,
    drain: mpsc::Sender<()>,
) {
    let active = gauge!(CONNECTIONS_ACTIVE, "listener" => listener.name.to_string());
    let accepted = counter!(CONNECTIONS_TOTAL, "listener" => listener.name.to_string());
    let at_cap = counter!(CONNECTION_LIMIT_REACHED_TOTAL, "listener" => listener.name.to_string());
    let slots = Arc::new(Semaphore::new(max_connections as usize));
    let (reclaim, reclaim_rx) = watch::channel(0u64);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                at_cap.increment(1);
                debug!(listener = %listener.name, max_connections, "at max_connections: closing idle connections");
                reclaim.send_modify(|round| *round += 1);
                match slots.clone().acquire_owned().await {
                    Ok(slot) => slot,
                    // The semaphore is never closed.
                    Err(_) => return,
                }
            }
        };
        let (stream, peer) = match listener.socket.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(listener = %listener.name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        accepted.increment(1);
        let _ = stream.set_nodelay(true);
        let connection = ConnectionTask {
            handle: handle.clone(),
            listener: listener.index,
            listener_name: listener.name.clone(),
            peer,
            shutdown: shutdown.clone(),
            reclaim: reclaim_rx.clone(),
            drain: drain.clone(),
            active: active.clone(),
            accepted_at: Instant::now(),
            _slot: slot,
        };
        tokio::spawn(connection.run(stream));
    }
}

/// File descriptors kept out of the listeners' reach: the admin API, the store, the log, the
/// config watcher.
const RESERVED_DESCRIPTORS: u64 = 256;

/// Each listener's `max_connections`, lowered where needed so that all of them together, at
/// two descriptors a connection (the client's and an upstream one), fit the process's open-file
/// limit with [`RESERVED_DESCRIPTORS`] to spare: a flood on the data listeners then cannot take
/// the descriptors the admin API needs. The soft limit is raised to the hard one first, as
/// nginx's `worker_rlimit_nofile` and Go's runtime do.
fn connection_caps(handle: &SnapshotHandle, listeners: &[BoundListener]) -> Vec<u32> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let snapshot = handle.load();
    let configured: Vec<u32> = listeners
        .iter()
        .map(|l| {
            snapshot
                .listener(l.index)
                .map_or(10_000, |state| state.config.max_connections)
        })
        .collect();
    let limit = getrlimit(Resource::Nofile);
    let mut soft = limit.current;
    if limit.current < limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => soft = limit.maximum,
            Err(error) => debug!(%error, "could not raise the open-file limit"),
        }
    }
    let Some(soft) = soft else {
        return configured;
    };
    let total: u64 = configured.iter().map(|&c| u64::from(c)).sum();
    let budget = soft.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    if total <= budget {
        return configured;
    }
    warn!(
        open_file_limit = soft,
        max_connections = total,
        "max_connections of all listeners exceeds what the open-file limit allows; lowering each in proportion"
    );
    configured
        .iter()
        .map(|&c| {
            u32::try_from(u64::from(c) * budget / total)
                .unwrap_or(c)
                .max(1)
        })
        .collect()
}

struct ConnectionTask {
    handle: SnapshotHandle,
    listener: usize,
    listener_name: Arc<str>,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    /// Bumped when the listener is at `max_connections`: idle connections close.
    reclaim: watch::Receiver<u64>,
    drain: mpsc::Sender<()>,
    active: metrics::Gauge,
    /// The header read timeout runs from here, through the TLS handshake and the first head.
    accepted_at: Instant,
    /// This connection's place under the listener's `max_connections`.
    _slot: OwnedSemaphorePermit,
}

impl ConnectionTask {
    async fn run(self, stream: TcpStream) {
        self.active.increment(1.0);
        let snapshot = self.handle.load();
        let Some(state) = snapshot.listener(self.listener) else {
            self.active.decrement(1.0);
            return;
        };
        let builder = state.http.clone();
        let config = state.config.clone();
        let stream = SendTimeout::new(stream, config.send_timeout.get());
        let result = match state.tls.clone() {
            None => {
                self.serve(TokioIo::new(stream), &builder, &config, false)
                    .await
            }
            Some(acceptor) => {
                // A client that never finishes its handshake is a slowloris too.
                match tokio::time::timeout_at(
                    self.accepted_at + config.header_read_timeout.get(),
                    acceptor.accept(stream),
                )
                .await
                {
                    Ok(Ok(tls)) => self.serve(TokioIo::new(tls), &builder, &config, true).await,
                    Ok(Err(error)) => Err(ConnectionError::Tls(error)),
                    Err(_) => Err(ConnectionError::HandshakeTimeout),
                }
            }
        };
        if let Err(error) = result {
            debug!(listener = %self.listener_name, peer = %self.peer, %error, "connection ended with an error");
            counter!(CONNECTION_ERRORS_TOTAL, "listener" => self.listener_name.to_string(), "reason" => error.reason())
                .increment(1);
        }
        self.active.decrement(1.0);
    }

    async fn serve<I>(
        &self,
        io: TokioIo<I>,
        builder: &auto::Builder<TokioExecutor>,
        config: &ListenerConfig,
        tls: bool,
    ) -> Result<(), ConnectionError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::default());
        let connection = Arc::new(Connection {
            handle: self.handle.clone(),
            listener: self.listener,
            listener_name: self.listener_name.clone(),
            forwarded: Forwarded::new(self.peer.ip(), tls),
            activity: activity.clone(),
            drain: self.drain.clone(),
        });
        let service = service_fn(move |request: Request<Incoming>| {
            service::proxy(connection.clone(), request)
        });
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);

        // The idle and drain decisions are made by a watchdog task that wakes on its own timer;
        // this task only polls a channel from it, which is cheap on every wake-up (a timer and
        // a watch receiver polled here cost about 600 instructions per request).
        let (orders, mut closing) = mpsc::channel(2);
        let watchdog = tokio::spawn(watchdog(
            activity,
            Watch {
                first_head_by: self.accepted_at + config.header_read_timeout.get(),
                idle_by: self.accepted_at + config.idle_timeout.get(),
                idle_timeout: config.idle_timeout.get(),
                shutdown: self.shutdown.clone(),
                reclaim: self.reclaim.clone(),
            },
            orders,
        ));
        let _stop_watchdog = AbortOnDrop(watchdog);
        let mut graceful = false;
        let mut watched = true;
        loop {
            tokio::select! {
                // The connection first: it is what almost every wake-up is for.
                biased;
                result = conn.as_mut() => return result.map_err(ConnectionError::Http),
                order = closing.recv(), if watched => match order {
                    Some(Close::Graceful) if !graceful => {
                        graceful = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    Some(Close::Graceful) => {}
                    Some(Close::Now) => {
                        debug!(peer = %self.peer, "dropping idle connection that ignored a graceful close");
                        return Ok(());
                    }
                    Some(Close::NoRequest) => return Err(ConnectionError::NoRequest),
                    // The watchdog has said all it will: serve out the connection.
                    None => watched = false,
                },
            }
        }
    }
}

/// What the watchdog asks of a connection.
#[derive(Debug, Clone, Copy)]
enum Close {
    /// Finish the current exchange (HTTP/1.1) or send GOAWAY (HTTP/2), then close.
    Graceful,
    /// Close now.
    Now,
    /// Close now: no request began within the header read timeout of accept.
    NoRequest,
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a connection's watchdog watches for.
struct Watch {
    /// A connection that has not started a request by then is closed: the header read timeout
    /// counts from accept, so a client that sends nothing holds no descriptor for long.
    first_head_by: Instant,
    /// A connection that has not started a request by then is idle, and closed gracefully.
    idle_by: Instant,
    idle_timeout: Duration,
    shutdown: watch::Receiver<bool>,
    reclaim: watch::Receiver<u64>,
}

/// Watches one connection: closes it if no request has begun by the header deadline; asks it
/// to close gracefully once it has been idle for `idle_timeout`, when its listener needs room
/// and it is an idle keep-alive connection, or when rafael drains; and closes it at once if,
/// after an idle close, it is still open one more period later (an HTTP/2 client that never
/// answers the GOAWAY ping).
async fn watchdog(activity: Arc<Activity>, mut watch: Watch, orders: mpsc::Sender<Close>) {
    let idle_timeout = watch.idle_timeout;
    let close_idle = |orders: mpsc::Sender<Close>| async move {
        let _ = orders.send(Close::Graceful).await;
        tokio::time::sleep(idle_timeout.min(Duration::from_secs(10))).await;
        let _ = orders.send(Close::Now).await;
    };
    let draining = |shutdown: &watch::Receiver<bool>, changed: Result<(), _>| {
        changed.is_err() || *shutdown.borrow()
    };
    // Until the first request begins.
    let first_head = tokio::time::sleep_until(watch.first_head_by);
    tokio::pin!(first_head);
    while activity.started() == 0 {
        tokio::select! {
            _ = &mut first_head => {
                if activity.started() == 0 {
                    let _ = orders.send(Close::NoRequest).await;
                    return;
                }
            }
            changed = watch.shutdown.changed() => {
                if draining(&watch.shutdown, changed) {
                    let _ = orders.send(Close::Graceful).await;
                    return;
                }
            }
            _ = tokio::time::sleep_until(watch.idle_by) => {
                if activity.started() == 0 {
                    close_idle(orders).await;
                    return;
                }
            }
            // Nothing to give back yet; the round is seen (and ignored) here.
            _ = watch.reclaim.changed() => {}
        }
    }
    // Check four times per idle period, so an idle connection closes within 1.25x of it.
    let tick = (idle_timeout / 4).max(Duration::from_millis(10));
    let mut idle_since = Instant::now();
    let mut last_started = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {
                let now = Instant::now();
                let started = activity.started();
                if started != last_started || activity.active() > 0 {
                    last_started = started;
                    idle_since = now;
                } else if now.duration_since(idle_since) >= idle_timeout {
                    close_idle(orders).await;
                    return;
                }
            }
            changed = watch.reclaim.changed() => {
                if changed.is_ok() && activity.active() == 0 {
                    // The listener is full and this keep-alive connection is doing nothing.
                    close_idle(orders).await;
                    return;
                }
            }
            changed = watch.shutdown.changed() => {
                if draining(&watch.shutdown, changed) {
                    // Draining: the drain deadline, not this watchdog, bounds what follows.
                    let _ = orders.send(Close::Graceful).await;
                    return;
                }
            }
        }
    }
}

/// Why a downstream connection ended badly.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("tls handshake failed: {0}")]
    Tls(io::Error),
    #[error("tls handshake timed out")]
    HandshakeTimeout,
    #[error("no request within the header read timeout")]
    NoRequest,
    #[error("{0}")]
    Http(Box<dyn std::error::Error + Send + Sync>),
}

impl ConnectionError {
    /// The `reason` label of `rafael_connection_errors_total`.
    fn reason(&self) -> &'static str {
        match self {
            Self::Tls(_) => "tls_handshake",
            Self::HandshakeTimeout => "tls_handshake_timeout",
            Self::NoRequest => "header_read_timeout",
            Self::Http(error) if timed_out_sending(&**error) => "send_timeout",
            Self::Http(error) => match error.downcast_ref::<hyper::Error>() {
                Some(e) if e.is_parse_too_large() => "headers_too_large",
                Some(e) if e.is_parse() || e.is_parse_status() => "malformed_request",
                Some(e) if e.is_timeout() => "header_read_timeout",
                Some(e) if e.is_incomplete_message() => "incomplete_request",
                Some(_) => "http",
                // An HTTP/2 connection whose preface was wrong: h2's protocol error.
                None if cause::<h2::Error>(&**error)
                    .is_some_and(|e| e.reason() == Some(h2::Reason::PROTOCOL_ERROR)) =>
                {
                    "malformed_request"
                }
                None => "io",
            },
        }
    }
}

/// True when `error` comes from the send timeout ([`SendTimeout`]).
fn timed_out_sending(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|io| io.get_ref().is_some_and(|inner| inner.is::<SendTimedOut>()))
}
