//! RAFAEL's data plane: listeners (TCP and rustls), the HTTP/1.1 + HTTP/2 server, the router,
//! the per-route request path, the pooled upstream client and the metrics it records.
//!
//! All live routing state is one immutable [`Snapshot`] behind one `ArcSwap` (the
//! [`SnapshotHandle`]). A request loads it once and uses that version throughout, so reloads and,
//! later, policy swaps never block or tear a request.
//!
//! The modules form layers, each using only the ones above it in this list (checked by
//! `tests/layering.rs`), so a reader can start at the top and test each with what it uses:
//!
//! 1. leaves: [`clock`], [`deadline`] (attempt deadlines on one timer per worker), [`failure`],
//!    [`headers`], [`router`], [`send_timeout`], [`tls`], [`listener`], [`histogram`], and the
//!    policy engines ([`policy`], a crate of their own);
//! 2. [`metrics`], then [`telemetry`], then [`route_policy`] (a route's compiled genome and its
//!    engine state) and [`faults`] (its compiled fault rules);
//! 3. [`guard`] (what a request holds until its response ends), [`transport`] (connecting, the
//!    HTTP/1.1 codec, the idle pool), [`body`], [`error`], then [`upstream`] (endpoints,
//!    balancing, sending);
//! 4. [`snapshot`] (the live routing state), then [`layer`] (the per-route tower stack, DESIGN
//!    §2), then [`service`] (one request: DESIGN §2's steps 1 to 3 around the stack), then
//!    [`server`] (listeners and connections).

pub mod body;
pub mod clock;
pub mod deadline;
pub mod error;
pub mod failure;
pub mod faults;
pub mod guard;
pub mod headers;
pub mod histogram;
pub mod layer;
pub mod listener;
pub mod metrics;
pub mod route_policy;
pub mod router;
pub mod send_timeout;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod upstream;

pub use body::Body;
pub use error::ProxyError;
pub use rafael_policy as policy;
pub use server::{BoundListener, Server, bind_listeners};
pub use snapshot::{
    CanarySpec, PolicyHandle, Snapshot, SnapshotHandle, TelemetryHandle, canary_takes,
};
