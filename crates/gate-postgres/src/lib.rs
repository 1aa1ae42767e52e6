//! gate-postgres
