//! gate-test-support
