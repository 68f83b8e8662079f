//! A real upstream whose truth the test knows: a pool of N workers with a FIFO queue.
//!
//! Every request waits for a worker (tokio's semaphore is fair, so the queue is FIFO), holds
//! it for the service time, and answers 200, or 500 with probability `errors`. The work runs
//! in its own task, so it goes on after the client gave up (rafael timed the attempt out):
//! that is abandoned work, as an HTTP/1.1 server does it. The counters say what it really did.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::Semaphore};

/// A worker pool to start.
#[derive(Debug, Clone)]
pub struct WorkerPool {
    workers: usize,
    service: Duration,
    jitter: Duration,
    errors: f64,
    seed: u64,
}

/// What the pool really did.
#[derive(Debug, Default)]
pub struct PoolCounters {
    /// Requests a worker finished.
    pub served: AtomicU64,
    /// Of those, answered 500.
    pub failed: AtomicU64,
    /// Finished after the client had gone.
    pub abandoned: AtomicU64,
    /// Time workers were busy, nanoseconds.
    pub busy_nanos: AtomicU64,
    /// Attempts by `x-request-id` (requests without one are not kept).
    pub by_id: Mutex<std::collections::HashMap<String, u32>>,
}

/// A started pool.
#[derive(Debug, Clone)]
pub struct RunningPool {
    pub address: SocketAddr,
    pub counters: Arc<PoolCounters>,
    pub workers: usize,
    /// The error share now, as `f64` bits: a test schedules a bad day by changing it.
    errors: Arc<AtomicU64>,
    /// Service times are multiplied by this (`f64` bits): a capacity drop when above 1.
    slowdown: Arc<AtomicU64>,
}

impl WorkerPool {
    /// `workers` workers, each request taking `service`.
    pub fn new(workers: usize, service: Duration) -> Self {
        Self {
            workers,
            service,
            jitter: Duration::ZERO,
            errors: 0.0,
            seed: 1,
        }
    }

    /// Service times uniform in `service ± jitter`.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Answers 500 with probability `share`.
    pub fn errors(mut self, share: f64) -> Self {
        self.errors = share;
        self
    }

    /// Seeds the service times and the errors.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Binds 127.0.0.1:0 and serves until the runtime stops.
    pub async fn start(self) -> RunningPool {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let counters = Arc::new(PoolCounters::default());
        let workers = self.workers;
        let errors = Arc::new(AtomicU64::new(self.errors.to_bits()));
        let slowdown = Arc::new(AtomicU64::new(1f64.to_bits()));
        let shared = Arc::new(Shared {
            errors: errors.clone(),
            slowdown: slowdown.clone(),
            permits: Semaphore::new(self.workers),
            rng: Mutex::new(fastrand::Rng::with_seed(self.seed)),
            pool: self,
            counters: counters.clone(),
        });
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| shared.clone().serve(request));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RunningPool {
            address,
            counters,
            workers,
            errors,
            slowdown,
        }
    }
}

struct Shared {
    pool: WorkerPool,
    errors: Arc<AtomicU64>,
    slowdown: Arc<AtomicU64>,
    permits: Semaphore,
    rng: Mutex<fastrand::Rng>,
    counters: Arc<PoolCounters>,
}

impl Shared {
    async fn serve(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        if let Some(id) = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
        {
            *self
                .counters
                .by_id
                .lock()
                .unwrap()
                .entry(id.to_owned())
                .or_default() += 1;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The work is its own task: dropping this future (the client left) does not stop it.
        tokio::spawn(async move {
            let permit = self.permits.acquire().await.unwrap();
            let (service, failed) = {
                let mut rng = self.rng.lock().unwrap();
                let spread = self.pool.jitter.as_secs_f64() * (2.0 * rng.f64() - 1.0);
                let slowdown = f64::from_bits(self.slowdown.load(Ordering::Relaxed));
                let service = (self.pool.service.as_secs_f64() + spread).max(0.0) * slowdown;
                (
                    Duration::from_secs_f64(service),
                    rng.f64() < f64::from_bits(self.errors.load(Ordering::Relaxed)),
                )
            };
            let started = Instant::now();
            tokio::time::sleep(service).await;
            let busy = started.elapsed();
            drop(permit);
            let c = &self.counters;
            c.busy_nanos
                .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
            c.served.fetch_add(1, Ordering::Relaxed);
            c.failed.fetch_add(u64::from(failed), Ordering::Relaxed);
            if tx.send(failed).is_err() {
                c.abandoned.fetch_add(1, Ordering::Relaxed);
            }
        });
        let failed = rx.await.unwrap_or(true);
        let status = if failed { 500 } else { 200 };
        Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap())
    }
}

impl RunningPool {
    /// Every request takes `factor` times its service time from now on (the pool's capacity
    /// divided by `factor`).
    pub fn set_slowdown(&self, factor: f64) {
        self.slowdown.store(factor.to_bits(), Ordering::Relaxed);
    }

    /// Answers 500 with probability `share` from now on.
    pub fn set_errors(&self, share: f64) {
        self.errors.store(share.to_bits(), Ordering::Relaxed);
    }

    /// Mean time a worker held a request, as it really was (sleeps overshoot a little).
    pub fn mean_service(&self) -> Duration {
        let served = self.counters.served.load(Ordering::Relaxed).max(1);
        Duration::from_nanos(self.counters.busy_nanos.load(Ordering::Relaxed) / served)
    }

    /// Attempts it saw for each `x-request-id`.
    pub fn attempts_by_id(&self) -> std::collections::HashMap<String, u32> {
        self.counters.by_id.lock().unwrap().clone()
    }

    /// Requests it finished, and the share it failed.
    pub fn served(&self) -> (u64, f64) {
        let served = self.counters.served.load(Ordering::Relaxed);
        let failed = self.counters.failed.load(Ordering::Relaxed);
        (served, failed as f64 / served.max(1) as f64)
    }
}
