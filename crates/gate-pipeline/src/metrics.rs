//! Prometheus metrics shared by every handler. One registry per process, exposed on the
//! health listener's `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets from 10 µs to 10 s: policy evaluation lives at the bottom, queries above.
const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub connpool_active: IntGaugeVec,
    pub connpool_idle: IntGaugeVec,
    pub connpool_waiters: IntGaugeVec,
    pub connpool_wait: HistogramVec,
    pub connpool_exhausted: IntCounterVec,
    pub policy_eval: HistogramVec,
    pub request_duration: HistogramVec,
    pub sessions_active: IntGaugeVec,
    pub sessions_total: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub decisions: IntCounterVec,
    pub thread_connections: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("register");
            h
        };
        Metrics {
            connpool_active: gauge(
                "gate_connpool_active_connections",
                "Upstream connections currently lent to sessions.",
                &["resource"],
            ),
            connpool_idle: gauge(
                "gate_connpool_idle_connections",
                "Upstream connections idle in the pool.",
                &["resource"],
            ),
            connpool_waiters: gauge(
                "gate_connpool_waiters",
                "Sessions waiting for an upstream connection.",
                &["resource"],
            ),
            connpool_wait: histogram(
                "gate_connpool_wait_duration_seconds",
                "Time sessions waited for an upstream connection.",
                &["resource"],
            ),
            connpool_exhausted: counter(
                "gate_connpool_exhausted_total",
                "Acquisitions that timed out because the pool was exhausted.",
                &["resource"],
            ),
            policy_eval: histogram(
                "gate_policy_evaluation_duration_seconds",
                "Time spent evaluating policy, per stage and resulting action.",
                &["protocol", "resource", "stage", "action"],
            ),
            request_duration: histogram(
                "gate_request_duration_seconds",
                "Time from a request reaching the gateway to its completion.",
                &["protocol", "resource"],
            ),
            sessions_active: gauge(
                "gate_sessions_active",
                "Open client sessions.",
                &["protocol", "resource"],
            ),
            sessions_total: counter(
                "gate_sessions_total",
                "Client sessions opened.",
                &["protocol", "resource"],
            ),
            auth_failures: counter(
                "gate_auth_failures_total",
                "Refused authentication attempts.",
                &["protocol"],
            ),
            decisions: counter(
                "gate_policy_decisions_total",
                "Policy decisions, per stage and action.",
                &["protocol", "resource", "stage", "action"],
            ),
            thread_connections: gauge(
                "gate_thread_connections",
                "Client connections on each session thread (a connection stays on one thread; new ones go to the least busy).",
                &["thread"],
            ),
            registry,
        }
    }

    /// The registry in Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
