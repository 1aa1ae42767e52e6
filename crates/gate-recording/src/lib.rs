//! gate-recording
