//! process-node
