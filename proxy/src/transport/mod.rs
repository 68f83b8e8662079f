//! Connections to upstream endpoints, below everything that decides where a request goes:
//! connecting (TCP, TLS), rafael's HTTP/1.1 client codec, and the idle pool.

mod connector;
mod h1;
mod pool;

pub use connector::{ConnectError, Connector, UpstreamIo};
pub use h1::{ExchangeError, H1Body, H1Connection, PoolReturn, ResponseHead, UploadBody};
pub use pool::{IdlePool, Reusable};
