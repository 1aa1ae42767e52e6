//! gate-pipeline
