//! The decisions, with no I/O: `(activity, its pods, now) -> Plan`. The runtime executes plans.

pub mod failure;
pub mod freshness;
pub mod plan;
pub mod planner;
pub mod pod_view;
pub mod reason;
