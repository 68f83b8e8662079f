//! RAFAEL's control plane and the composition root of the `rafael` binary.
//!
//! Issue by issue this crate grows the simulator, evolution, guardian, store and chaos forge;
//! today it wires the data plane to its config file, reloads, signals and the admin listener.

pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod chaos;
pub mod cli;
pub mod client;
pub mod config_file;
pub mod demo;
pub mod evolution;
pub mod guardian;
pub mod openapi;
pub mod reload;
pub mod store;
pub mod surge;
#[cfg(test)]
mod testing;
pub mod vault;

pub use app::{App, AppOptions};
