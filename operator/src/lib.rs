//! activity-operator
