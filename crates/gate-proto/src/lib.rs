//! Gate's gRPC contracts, generated at build time from `proto/gate/v1` (see `build.rs`).
//!
//! - [`v1::control_plane_service_server`] / [`v1::control_plane_service_client`]: the admin
//!   API (`gate.v1.ControlPlaneService`), served by `gate-control`.
//! - [`v1::connector_service_server`] / [`v1::connector_service_client`]: what connectors
//!   call (`gate.v1.ConnectorService`): register, heartbeat, config sync, audit shipping.
//!
//! Conventions shared by every message (RFC 3339 time strings, JSON strings for free-form
//! data, string-valued enums) are described at the top of `tenant.proto`.

/// `gate.v1`: every message and service of the current API version.
pub mod v1 {
    #![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]
    tonic::include_proto!("gate.v1");
}
