//! Event routing of SPEC §8 as a pure function: which rooms a broker event goes to, under which
//! WebSocket message type, and whether it closes a device's sockets.
//!
//! | event | rooms | message type |
//! |---|---|---|
//! | `payments.payment.*` | `user:{senderId}`, `role:admin` | `payment:<last part>` |
//! | `auth.user.login` / `auth.user.logout` | `user:{userId}` | `session:login` / `session:logout` |
//! | `auth.session.revoked` | `user:{userId}` (and closes that device's sockets) | `session:revoked` |
//! | `admin.announcement.created` | `broadcast` (every socket) | `notification:new` |
//! | `admin.*` (the rest) | `role:admin` | `admin:<rest, dashed>` |
//!
//! Anything else (e.g. `auth.user.registered`) is not forwarded to browsers.
//!
//! The seed's "fanout for broadcast events" is the `broadcast` row: every socket joins that
//! room, and every gateway replica already receives every event on its own queue (bound `#`),
//! so the topic exchange fans an announcement out to all replicas and the room to all their
//! sockets. A separate fanout exchange would be a second path to the same queues, with no
//! receiver the topic exchange does not reach already.

use mfe_events::Envelope;
use serde_json::Value;

/// Where one event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// Target rooms; a socket in several of them gets the message once.
    pub rooms: Vec<String>,
    /// The `type` of the WebSocket message.
    pub message_type: String,
    /// Set for `auth.session.revoked`: close the sockets of this user on this device.
    pub revoke: Option<Revocation>,
}

/// The sockets a revoked session closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub user_id: String,
    /// `None` when the event names no device: then only the message is sent.
    pub device_id: Option<String>,
}

/// The room of one user.
pub fn user_room(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// The room of one role (lower-case, `role:admin`).
pub fn role_room(role: &str) -> String {
    format!("role:{}", role.to_ascii_lowercase())
}

/// The room every socket joins.
pub const BROADCAST_ROOM: &str = "broadcast";

/// Routes one event; `None` when it is not for browsers or lacks the id it is routed by.
pub fn route(event_type: &str, data: &Value) -> Option<Routed> {
    let mut parts = event_type.splitn(2, '.');
    let (domain, rest) = (parts.next()?, parts.next()?);
    match domain {
        "payments" => {
            let last = rest.rsplit('.').next().filter(|s| !s.is_empty())?;
            let sender = string_field(data, &["senderId", "sender_id"])?;
            Some(Routed {
                rooms: vec![user_room(&sender), role_room("admin")],
                message_type: format!("payment:{last}"),
                revoke: None,
            })
        }
        "auth" => {
            let message_type = match rest {
                "user.login" => "session:login",
                "user.logout" => "session:logout",
                "session.revoked" => "session:revoked",
                _ => return None,
            };
            let user_id = string_field(data, &["userId", "user_id"])?;
            let revoke = (rest == "session.revoked").then(|| Revocation {
                user_id: user_id.clone(),
                device_id: string_field(data, &["deviceId", "device_id"]),
            });
            Some(Routed { rooms: vec![user_room(&user_id)], message_type: message_type.to_string(), revoke })
        }
        "admin" if rest == "announcement.created" => Some(Routed {
            rooms: vec![BROADCAST_ROOM.to_string()],
            message_type: "notification:new".to_string(),
            revoke: None,
        }),
        "admin" if !rest.is_empty() => Some(Routed {
            rooms: vec![role_room("admin")],
            message_type: format!("admin:{}", rest.replace('.', "-")),
            revoke: None,
        }),
        _ => None,
    }
}

/// The WebSocket message of an event: `{type, eventId, payload, timestamp, correlationId?}`.
/// `eventId` is the envelope's id: a client (or `mfe test chaos`) tells a redelivery from a new
/// event by it.
pub fn render(message_type: &str, envelope: &Envelope) -> String {
    let mut message = serde_json::json!({
        "type": message_type,
        "eventId": envelope.id,
        "payload": envelope.data,
        "timestamp": envelope.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    if let Some(id) = &envelope.correlation_id {
        message["correlationId"] = Value::String(id.clone());
    }
    message.to_string()
}

/// The first of `names` holding a string (or number) in `data`.
fn string_field(data: &Value, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| match data.get(*n)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_payment_event_goes_to_its_sender_and_the_admins_under_its_last_part() {
        let r = route("payments.payment.created", &json!({"senderId": "u1", "amount": "10.00"})).unwrap();
        assert_eq!(r.rooms, vec!["user:u1", "role:admin"]);
        assert_eq!(r.message_type, "payment:created");
        let r = route("payments.payment.completed", &json!({"sender_id": "u2"})).unwrap();
        assert_eq!((r.rooms[0].as_str(), r.message_type.as_str()), ("user:u2", "payment:completed"));
    }

    #[test]
    fn login_and_logout_go_to_the_user_as_session_messages() {
        let r = route("auth.user.login", &json!({"userId": "u1"})).unwrap();
        assert_eq!((r.rooms, r.message_type, r.revoke), (vec!["user:u1".to_string()], "session:login".into(), None));
        assert_eq!(route("auth.user.logout", &json!({"userId": "u1"})).unwrap().message_type, "session:logout");
    }

    #[test]
    fn a_revoked_session_notifies_the_user_and_names_the_device_to_close() {
        let r = route("auth.session.revoked", &json!({"userId": "u1", "deviceId": "d9"})).unwrap();
        assert_eq!(r.message_type, "session:revoked");
        assert_eq!(r.rooms, vec!["user:u1"]);
        assert_eq!(r.revoke, Some(Revocation { user_id: "u1".into(), device_id: Some("d9".into()) }));
    }

    #[test]
    fn admin_events_go_to_admins_with_the_rest_dashed() {
        let r = route("admin.config.updated", &json!({"key": "x"})).unwrap();
        assert_eq!((r.rooms, r.message_type), (vec!["role:admin".to_string()], "admin:config-updated".to_string()));
        assert_eq!(route("admin.audit.created", &json!({})).unwrap().message_type, "admin:audit-created");
    }

    #[test]
    fn an_announcement_goes_to_every_socket_as_a_new_notification() {
        let r = route("admin.announcement.created", &json!({"id": "a1", "message": "hi"})).unwrap();
        assert_eq!((r.rooms, r.message_type), (vec!["broadcast".to_string()], "notification:new".to_string()));
    }

    #[test]
    fn events_not_for_browsers_or_missing_their_routing_id_are_dropped() {
        assert_eq!(route("auth.user.registered", &json!({"userId": "u1"})), None);
        assert_eq!(route("payments.payment.created", &json!({"amount": 1})), None);
        assert_eq!(route("auth.user.login", &json!({})), None);
        assert_eq!(route("profile.updated", &json!({"userId": "u1"})), None);
        assert_eq!(route("nodots", &json!({})), None);
    }

    #[test]
    fn a_rendered_message_carries_type_event_id_payload_timestamp_and_correlation_id() {
        let env = Envelope::new("payments.payment.created", "payments-service", json!({"senderId": "u1"}))
            .with_correlation_id(Some("c-1".into()));
        let v: Value = serde_json::from_str(&render("payment:created", &env)).unwrap();
        assert_eq!(v["type"], "payment:created");
        assert_eq!(v["eventId"], env.id.to_string());
        assert_eq!(v["payload"]["senderId"], "u1");
        assert_eq!(v["correlationId"], "c-1");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        let plain = Envelope::new("admin.audit.created", "admin-service", json!({}));
        assert!(serde_json::from_str::<Value>(&render("admin:audit-created", &plain))
            .unwrap()
            .get("correlationId")
            .is_none());
    }
}
