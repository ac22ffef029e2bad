//! Business metrics of the payments service, served on `/metrics` after the kit's HTTP, cache
//! and event metrics: payments created by type and status, amounts by currency.

use std::time::Duration;

use prometheus::{CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use rust_decimal::{prelude::ToPrimitive, Decimal};

/// Cheap to clone; one registry per app so apps spawned side by side keep their own figures.
#[derive(Clone)]
pub struct BusinessMetrics {
    registry: Registry,
    created: IntCounterVec,
    amount: CounterVec,
    status_changes: IntCounterVec,
    create_phases: HistogramVec,
}

impl BusinessMetrics {
    pub fn new() -> Self {
        let labels = std::collections::HashMap::from([("service".to_string(), "payments".to_string())]);
        let registry = Registry::new_custom(None, Some(labels)).expect("valid registry labels");
        let created = IntCounterVec::new(Opts::new("payments_created_total", "payments created"), &["type", "status"])
            .expect("valid metric");
        // A float counter: Prometheus has no decimal type; the exact sums live in the database.
        let amount =
            CounterVec::new(Opts::new("payments_amount_total", "sum of created payment amounts"), &["currency"])
                .expect("valid metric");
        let status_changes =
            IntCounterVec::new(Opts::new("payments_status_changes_total", "payment status changes"), &["status"])
                .expect("valid metric");
        registry.register(Box::new(created.clone())).expect("metric registered once");
        registry.register(Box::new(amount.clone())).expect("metric registered once");
        // Where the time of a create goes, to tell a slow database from a slow cache or a slow
        // process (the kit's http_request_duration_seconds holds the whole request).
        let create_phases = HistogramVec::new(
            HistogramOpts::new("payments_create_phase_seconds", "time of each phase of a payment create")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
            &["phase"],
        )
        .expect("valid metric");
        registry.register(Box::new(status_changes.clone())).expect("metric registered once");
        registry.register(Box::new(create_phases.clone())).expect("metric registered once");
        Self { registry, created, amount, status_changes, create_phases }
    }

    pub fn payment_created(&self, payment_type: &str, status: &str, currency: &str, amount: Decimal) {
        self.created.with_label_values(&[payment_type, status]).inc();
        self.amount.with_label_values(&[currency]).inc_by(amount.to_f64().unwrap_or(0.0));
    }

    pub fn status_changed(&self, status: &str) {
        self.status_changes.with_label_values(&[status]).inc();
    }

    /// Records that the `phase` of a create (`acquire`, `db`, and `cache`, which runs beside the
    /// other two) took `elapsed`.
    pub fn create_phase(&self, phase: &str, elapsed: Duration) {
        self.create_phases.with_label_values(&[phase]).observe(elapsed.as_secs_f64());
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding never fails");
        String::from_utf8(buffer).expect("prometheus text is utf-8")
    }
}

impl Default for BusinessMetrics {
    fn default() -> Self {
        Self::new()
    }
}
