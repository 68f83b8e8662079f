//! RAFAEL's data plane: listeners (TCP and rustls), the HTTP/1.1 + HTTP/2 server, the router,
//! the per-route request path, the pooled upstream client and the metrics it records.
//!
//! All live routing state is one immutable [`Snapshot`] behind one `ArcSwap` (the
//! [`SnapshotHandle`]). A request loads it once and uses that version throughout, so reloads and,
//! later, policy swaps never block or tear a request.

pub mod body;
pub mod error;
pub mod headers;
pub mod histogram;
pub mod layer;
pub mod metrics;

pub mod route_policy;
pub mod router;
pub mod send_timeout;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use body::Body;
pub use error::ProxyError;
pub use rafael_policy as policy;
pub use server::{BoundListener, Server, bind_listeners};
pub use snapshot::{CanarySpec, PolicyHandle, Snapshot, SnapshotHandle, canary_takes};
pub use telemetry::TelemetryHandle;
