//! Prometheus metrics of the control plane, served at `/metrics`.
//!
//! Requests are counted and timed per API *area* (resources, policies, …, connector, audit)
//! and surface (http, grpc), so a slow audit export cannot hide behind fast heartbeats.
//! Latency is measured until the response head is ready; for server-streaming RPCs (Watch,
//! ExportAudit) that is the time to the first message, not the life of the stream.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Audit events received from connectors and not yet committed to the store.
    pub audit_backlog: IntGauge,
    /// Audit events stored by ingestion (duplicates excluded).
    audit_ingested: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "gate_control_requests_total",
                "API requests by area, surface and result code",
            ),
            &["area", "surface", "code"],
        )
        .expect("static metric definition");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "gate_control_request_duration_seconds",
                "API request latency until the response head, by area and surface",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["area", "surface"],
        )
        .expect("static metric definition");
        let audit_backlog = IntGauge::new(
            "gate_control_audit_ingest_backlog",
            "Audit events received from connectors and not yet stored",
        )
        .expect("static metric definition");
        let audit_ingested = IntCounterVec::new(
            Opts::new(
                "gate_control_audit_events_total",
                "Audit events shipped by connectors, by outcome (inserted, duplicate)",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(audit_backlog.clone()),
            Box::new(audit_ingested.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            latency,
            audit_backlog,
            audit_ingested,
        }
    }

    pub fn observe(&self, area: &str, surface: &str, code: &str, seconds: f64) {
        self.requests
            .with_label_values(&[area, surface, code])
            .inc();
        self.latency
            .with_label_values(&[area, surface])
            .observe(seconds);
    }

    pub fn audit_ingested(&self, inserted: u64, duplicates: u64) {
        self.audit_ingested
            .with_label_values(&["inserted"])
            .inc_by(inserted);
        self.audit_ingested
            .with_label_values(&["duplicate"])
            .inc_by(duplicates);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The API area of a request path, for metric labels. HTTP paths are `/api/v1/<area>/…`;
/// gRPC paths are `/gate.v1.<Service>/<Method>`, mapped by the noun in the method name.
pub fn area_of(path: &str) -> &'static str {
    if let Some(rest) = path.strip_prefix("/api/v1/") {
        let first = rest.split('/').next().unwrap_or("");
        return match first {
            "resources" => "resources",
            "policies" => "policies",
            "organizations" | "org" => "organizations",
            "identities" => "identities",
            "groups" => "groups",
            "api-keys" | "api_keys" => "api_keys",
            "connectors" | "registration-tokens" | "registration_tokens" => "connectors",
            "audit" => "audit",
            "access-requests" | "approval-rules" => "access",
            "webhooks" => "webhooks",
            "whoami" => "auth",
            _ => "other",
        };
    }
    if path.starts_with("/gate.v1.ConnectorService/") {
        return "connector";
    }
    if let Some(method) = path.strip_prefix("/gate.v1.ControlPlaneService/") {
        const BY_NOUN: [(&str, &str); 12] = [
            ("AccessRequest", "access"),
            ("ApprovalRules", "access"),
            ("Resource", "resources"),
            ("Polic", "policies"),
            ("Organization", "organizations"),
            ("Identit", "identities"),
            ("Group", "groups"),
            ("ApiKey", "api_keys"),
            ("Connector", "connectors"),
            ("RegistrationToken", "connectors"),
            ("Audit", "audit"),
            ("WhoAmI", "auth"),
        ];
        return BY_NOUN
            .iter()
            .find(|(noun, _)| method.contains(noun))
            .map(|(_, area)| *area)
            .unwrap_or("other");
    }
    match path {
        "/health" | "/metrics" => "system",
        "/mcp" => "mcp",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_agree_across_surfaces() {
        let pairs = [
            (
                "/api/v1/resources/x",
                "/gate.v1.ControlPlaneService/GetResource",
            ),
            (
                "/api/v1/policies",
                "/gate.v1.ControlPlaneService/ListPolicyVersions",
            ),
            (
                "/api/v1/api-keys",
                "/gate.v1.ControlPlaneService/CreateApiKey",
            ),
            (
                "/api/v1/registration-tokens",
                "/gate.v1.ControlPlaneService/CreateRegistrationToken",
            ),
            (
                "/api/v1/audit/export",
                "/gate.v1.ControlPlaneService/ExportAudit",
            ),
            (
                "/api/v1/identities",
                "/gate.v1.ControlPlaneService/ListIdentities",
            ),
        ];
        for (http, grpc) in pairs {
            assert_eq!(area_of(http), area_of(grpc), "{http} vs {grpc}");
        }
        assert_eq!(area_of("/gate.v1.ConnectorService/Watch"), "connector");
        assert_eq!(area_of("/nope"), "other");
    }
}
