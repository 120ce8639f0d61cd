//! The Activity operator: runs each attempt of an Activity as a worker pod, enforces its deadlines,
//! retries with exponential backoff and delivers cancellation. `model` decides (pure, clock
//! injected); `runtime` acts; `leader` elects the one replica that writes.

pub mod leader;
pub mod model;
pub mod runtime;
