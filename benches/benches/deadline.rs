//! What an attempt's deadline costs: a future that is pending once (as an attempt is while its
//! upstream answers) run bare, under `tokio::time::timeout_at`, and under the worker's deadline
//! queue (`rafael_proxy::deadline::within`), in the same run. The deadline is 30 s away, so it
//! never fires: the cost measured is the one every attempt on a route with `timeout` or
//! `per_try_timeout` pays.
//!
//! `cargo bench -p rafael-benches --bench deadline`. The figure to read is each variant's time
//! over `bare`'s; the queue should add a small fraction of what a tokio timer adds.

use std::{
    future::Future,
    hint::black_box,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use rafael_proxy::{clock, deadline, policy::nanos};

/// Pending on its first poll (waking itself at once), ready on the second.
#[derive(Debug, Default)]
struct PendingOnce {
    polled: bool,
}

impl Future for PendingOnce {
    type Output = u32;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        if self.polled {
            Poll::Ready(7)
        } else {
            self.polled = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Runs `one` `iterations` times inside one task of a fresh runtime; the time it took.
fn timed<F, Fut>(iterations: u64, one: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = u32>,
{
    runtime().block_on(async {
        // The runtime's timer driver and the queue's driver start before the clock does.
        black_box(one().await);
        let started = Instant::now();
        for _ in 0..iterations {
            black_box(one().await);
        }
        started.elapsed()
    })
}

fn deadline(c: &mut Criterion) {
    let mut group = c.benchmark_group("deadline");
    let away = Duration::from_secs(30);
    group.bench_function("bare", |b| {
        b.iter_custom(|iterations| timed(iterations, PendingOnce::default));
    });
    group.bench_function("tokio_timeout_at", |b| {
        b.iter_custom(|iterations| {
            timed(iterations, || async {
                let at = tokio::time::Instant::now() + away;
                tokio::time::timeout_at(at, PendingOnce::default())
                    .await
                    .unwrap_or(0)
            })
        });
    });
    group.bench_function("deadline_queue", |b| {
        b.iter_custom(|iterations| {
            timed(iterations, || async {
                let at = clock::now() + nanos(away);
                deadline::within(at, PendingOnce::default())
                    .await
                    .unwrap_or(0)
            })
        });
    });
    group.finish();
}

criterion_group!(benches, deadline);
criterion_main!(benches);
