//! gate-policy
