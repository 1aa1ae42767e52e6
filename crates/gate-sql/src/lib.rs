//! gate-sql
