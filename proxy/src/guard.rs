//! Guards: what a request holds while it is in progress, each given back when dropped.
//!
//! A response streams on after the request path has returned it, so what the request took (a
//! share of its endpoint's load, the route's concurrency slot, its connection's activity) goes
//! into the response body's [`ResponseGuard`] and is given back when the body ends.

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use crate::route_policy::Permit;

/// Request counters of one downstream connection, for idle detection.
#[derive(Debug, Default)]
pub struct Activity {
    /// Requests started on the connection.
    started: AtomicU64,
    /// Requests in progress.
    active: AtomicUsize,
}

/// A request in progress on a connection; the connection is not idle until it drops.
#[derive(Debug)]
pub struct RequestActive(Arc<Activity>);

/// An endpoint's count of requests in flight, shared by the endpoint and its guards.
#[derive(Debug, Default)]
pub struct EndpointLoad(AtomicUsize);

/// An endpoint's share of a request: counts as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointLoad>);

/// What a streamed upstream response holds until its body ends: the endpoint's in-flight
/// count, the route's concurrency slot and the downstream connection's activity. Each layer
/// that took one puts it here.
#[derive(Debug, Default)]
pub struct ResponseGuard {
    /// The endpoint's in-flight count.
    pub in_flight: Option<InFlight>,
    /// The route's concurrency slot.
    pub permit: Option<Permit>,
    /// The downstream connection's activity.
    pub active: Option<RequestActive>,
}

// === impl Activity ===

impl Activity {
    /// Marks a request started; the connection is busy until the guard drops.
    pub fn begin(self: &Arc<Self>) -> RequestActive {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        RequestActive(self.clone())
    }

    /// Requests started so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Requests in progress now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

impl Drop for RequestActive {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl EndpointLoad ===

impl EndpointLoad {
    /// Requests in flight now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one more request in flight until the returned guard drops; also returns the
    /// count with it included.
    pub fn begin(self: &Arc<Self>) -> (InFlight, usize) {
        let count = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        (InFlight(self.clone()), count)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}
