//! activity-crds
