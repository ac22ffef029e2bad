//! The event envelope of SPEC §7 and the names of every event type.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One event as it travels through RabbitMQ: JSON, persistent, routed by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per event; consumers deduplicate on it (see [`crate::idempotency`]).
    pub id: Uuid,
    /// The routing key, e.g. `auth.user.registered` (see [`types`]).
    #[serde(rename = "type")]
    pub event_type: String,
    /// Schema version of `data`, so consumers can handle old and new shapes side by side.
    pub version: u32,
    pub timestamp: DateTime<Utc>,
    /// The service that emitted the event, e.g. `auth-service`.
    pub source: String,
    /// Ties the event to the request that caused it (the gateway's request id).
    #[serde(rename = "correlationId", default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    pub data: serde_json::Value,
    /// W3C `traceparent` of the request that emitted the event (see [`crate::trace`]). Not part
    /// of the published body: it travels as the AMQP header `traceparent`.
    #[serde(skip)]
    pub traceparent: Option<String>,
}

impl Envelope {
    /// A version-1 envelope with a fresh id and the current time.
    pub fn new(event_type: impl Into<String>, source: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            id: Uuid::new_v4(),
            event_type: event_type.into(),
            version: 1,
            timestamp: Utc::now(),
            source: source.into(),
            correlation_id: None,
            data,
            traceparent: crate::trace::current_traceparent(),
        }
    }

    pub fn with_correlation_id(mut self, id: Option<String>) -> Self {
        self.correlation_id = id;
        self
    }

    /// The routing key this envelope is published with: its type.
    pub fn routing_key(&self) -> &str {
        &self.event_type
    }
}

/// Every event type of SPEC §7; the routing key of an event is its type.
pub mod types {
    pub const AUTH_USER_REGISTERED: &str = "auth.user.registered";
    pub const AUTH_USER_LOGIN: &str = "auth.user.login";
    pub const AUTH_USER_LOGOUT: &str = "auth.user.logout";
    pub const AUTH_SESSION_REVOKED: &str = "auth.session.revoked";
    pub const PAYMENTS_PAYMENT_CREATED: &str = "payments.payment.created";
    pub const PAYMENTS_PAYMENT_UPDATED: &str = "payments.payment.updated";
    pub const PAYMENTS_PAYMENT_COMPLETED: &str = "payments.payment.completed";
    pub const PAYMENTS_PAYMENT_FAILED: &str = "payments.payment.failed";
    pub const ADMIN_AUDIT_CREATED: &str = "admin.audit.created";
    pub const ADMIN_CONFIG_UPDATED: &str = "admin.config.updated";
    /// An announcement for every connected socket (`POST /api/admin/announcements`); the
    /// gateway sends it to the `broadcast` room as `notification:new`.
    pub const ADMIN_ANNOUNCEMENT_CREATED: &str = "admin.announcement.created";

    /// All of the above, for validation and documentation.
    pub const ALL: &[&str] = &[
        AUTH_USER_REGISTERED,
        AUTH_USER_LOGIN,
        AUTH_USER_LOGOUT,
        AUTH_SESSION_REVOKED,
        PAYMENTS_PAYMENT_CREATED,
        PAYMENTS_PAYMENT_UPDATED,
        PAYMENTS_PAYMENT_COMPLETED,
        PAYMENTS_PAYMENT_FAILED,
        ADMIN_AUDIT_CREATED,
        ADMIN_CONFIG_UPDATED,
        ADMIN_ANNOUNCEMENT_CREATED,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_serialises_with_the_spec_field_names() {
        let env = Envelope::new(types::AUTH_USER_REGISTERED, "auth-service", serde_json::json!({"userId": "u1"}))
            .with_correlation_id(Some("req-1".into()));
        let v = serde_json::to_value(&env).unwrap();
        assert_eq!(v["type"], "auth.user.registered");
        assert_eq!(v["correlationId"], "req-1");
        assert_eq!(v["version"], 1);
        assert_eq!(v["data"]["userId"], "u1");
        let back: Envelope = serde_json::from_value(v).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn an_envelope_without_correlation_id_omits_the_field() {
        let env = Envelope::new(types::ADMIN_AUDIT_CREATED, "admin-service", serde_json::json!({}));
        let v = serde_json::to_value(&env).unwrap();
        assert!(v.get("correlationId").is_none(), "{v}");
    }
}
