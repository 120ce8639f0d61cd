//! activity-worker
