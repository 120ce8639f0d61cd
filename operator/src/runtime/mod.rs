//! The I/O side: watches and caches, the reconcile pass, the writes, Events, metrics and the
//! HTTP endpoints. It asks `model` what to do and does it.

pub mod api;
pub mod client;
pub mod context;
pub mod controller;
pub mod error;
pub mod events;
pub mod execute;
pub mod memory;
pub mod metrics;
pub mod reconcile;
pub mod server;
pub mod stalled;
pub mod worker_pod;
pub mod writes;

#[cfg(test)]
mod tests;
