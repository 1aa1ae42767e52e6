//! gate-enforcement
