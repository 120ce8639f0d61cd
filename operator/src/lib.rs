//! The Activity operator: runs each attempt of an Activity as a worker pod, enforces its deadlines,
//! retries with exponential backoff and delivers cancellation. `planner` decides (pure, clock
//! injected); `controller` acts.

pub mod client;
pub mod controller;
pub mod events;
pub mod metrics;
pub mod planner;
pub mod pods;
pub mod reason;
pub mod server;
