//! An endpoint's idle connections: a LIFO stack behind one uncontended lock, so warm
//! connections are reused and cold ones age out, with a coarse epoch clock for idling.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

/// A connection the pool can keep.
pub trait Reusable {
    /// True when the connection can carry another exchange.
    fn is_open(&mut self) -> bool;
    /// Marks it as taken from the pool.
    fn mark_reused(&mut self);
}

/// Idle connections of one endpoint.
#[derive(Debug)]
pub struct IdlePool<C> {
    idle: Mutex<Vec<Idle<C>>>,
    /// Advanced by the reaper every half idle timeout.
    epoch: AtomicU64,
}

#[derive(Debug)]
struct Idle<C> {
    conn: Box<C>,
    /// When the upstream announced it closes idle connections (`Keep-Alive: timeout`).
    expires: Option<Instant>,
    /// The pool's epoch when it went idle: a coarse clock that costs the request path an
    /// atomic load instead of a clock read.
    since: u64,
}

impl<C> Default for IdlePool<C> {
    fn default() -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
        }
    }
}

// === impl IdlePool ===

impl<C: Reusable> IdlePool<C> {
    /// Idle connections now.
    pub fn len(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when none is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most recently used idle connection that is still open.
    pub fn checkout(&self) -> Option<Box<C>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut entry) = idle.pop() {
            if entry.is_usable() {
                entry.conn.mark_reused();
                return Some(entry.conn);
            }
        }
        None
    }

    /// Keeps a connection whose exchange ended cleanly, unless the pool is full or the
    /// upstream's own idle limit leaves no time to reuse it.
    pub fn release(&self, conn: Box<C>, max_idle: usize, idle_limit: Option<Duration>) {
        if idle_limit.is_some_and(|limit| limit.is_zero()) {
            return;
        }
        // A clock read only for upstreams that announce a limit.
        let expires = idle_limit.map(|limit| Instant::now() + limit);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < max_idle {
            idle.push(Idle {
                conn,
                expires,
                since: self.epoch.load(Ordering::Relaxed),
            });
        }
    }

    /// Advances the epoch and drops connections that closed or idled for two epochs.
    pub fn evict(&self) {
        let now = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain_mut(|entry| now - entry.since < 2 && entry.is_usable());
    }
}

// === impl Idle ===

impl<C: Reusable> Idle<C> {
    fn is_usable(&mut self) -> bool {
        self.expires.is_none_or(|at| Instant::now() < at) && self.conn.is_open()
    }
}
