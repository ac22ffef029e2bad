//! Announcements: `POST /api/admin/announcements` puts one `admin.announcement.created` event
//! in the outbox, with its audit row, in one transaction; the gateway sends it to every
//! connected socket (the `broadcast` room) as `notification:new`.
//!
//! No table of its own: an announcement is a message to whoever is connected now, and its
//! record is the audit row (action `admin.announcement.created`, the text in `details`, who
//! sent it and from where). The event's data is what every socket receives, so it carries no
//! user id of the admin who wrote it.

use chrono::{DateTime, Utc};
use mfe_events::{outbox, types, Envelope};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::audit::{self, AuditLog, EVENT_SOURCE};
use crate::system_config::Actor;

/// Longest message and title accepted (characters).
pub const MAX_MESSAGE: usize = 2000;
pub const MAX_TITLE: usize = 200;
/// The levels a client may show differently; `info` when absent.
pub const LEVELS: &[&str] = &["info", "warning", "critical"];

/// The request body.
#[derive(Debug, Clone, Deserialize)]
pub struct NewAnnouncement {
    pub title: Option<String>,
    pub message: Option<String>,
    pub level: Option<String>,
}

/// One announcement as published (the `notification:new` payload) and answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Announcement {
    pub id: String,
    pub title: Option<String>,
    pub message: String,
    pub level: String,
    pub created_at: DateTime<Utc>,
}

impl NewAnnouncement {
    /// The announcement this body asks for, or the one line saying what is wrong with it.
    pub fn validate(self) -> Result<(Option<String>, String, String), String> {
        let message = self.message.map(|m| m.trim().to_string()).unwrap_or_default();
        if message.is_empty() {
            return Err("body must carry a non-empty \"message\"".into());
        }
        if message.chars().count() > MAX_MESSAGE {
            return Err(format!("\"message\" is longer than {MAX_MESSAGE} characters"));
        }
        let title = self.title.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        if title.as_ref().is_some_and(|t| t.chars().count() > MAX_TITLE) {
            return Err(format!("\"title\" is longer than {MAX_TITLE} characters"));
        }
        let level = self.level.map(|l| l.trim().to_ascii_lowercase()).unwrap_or_else(|| "info".into());
        if !LEVELS.contains(&level.as_str()) {
            return Err(format!("\"level\" must be one of {}, got {level:?}", LEVELS.join(", ")));
        }
        Ok((title, message, level))
    }
}

/// Publishes an announcement (through the outbox, with its audit row); the caller wakes the
/// relay after this returns.
pub async fn publish(
    pool: &PgPool,
    title: Option<String>,
    message: String,
    level: String,
    actor: &Actor,
) -> Result<Announcement, sqlx::Error> {
    let id = uuid::Uuid::new_v4();
    let announcement = Announcement { id: id.to_string(), title, message, level, created_at: Utc::now() };
    let data = serde_json::to_value(&announcement).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let env = Envelope::new(types::ADMIN_ANNOUNCEMENT_CREATED, EVENT_SOURCE, data)
        .with_correlation_id(actor.correlation_id.clone());
    let mut tx = pool.begin().await?;
    outbox::enqueue(&mut tx, &env).await?;
    let mut log = AuditLog::of_event(&env);
    log.user_id = Some(actor.user_id.clone());
    log.ip_address = actor.ip_address.clone();
    log.user_agent = actor.user_agent.clone();
    audit::record(&mut tx, &log, actor.correlation_id.clone()).await?;
    tx.commit().await?;
    Ok(announcement)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(title: Option<&str>, message: Option<&str>, level: Option<&str>) -> NewAnnouncement {
        NewAnnouncement {
            title: title.map(String::from),
            message: message.map(String::from),
            level: level.map(String::from),
        }
    }

    #[test]
    fn an_announcement_needs_a_message_and_a_known_level() {
        assert_eq!(
            body(Some(" Maintenance "), Some(" at 02:00 "), None).validate(),
            Ok((Some("Maintenance".into()), "at 02:00".into(), "info".into()))
        );
        assert_eq!(body(None, Some("x"), Some("WARNING")).validate().unwrap().2, "warning");
        assert!(body(None, None, None).validate().unwrap_err().contains("\"message\""));
        assert!(body(None, Some("   "), None).validate().is_err());
        assert!(body(None, Some("x"), Some("loud")).validate().unwrap_err().contains("info, warning, critical"));
        assert!(body(None, Some(&"m".repeat(MAX_MESSAGE + 1)), None).validate().is_err());
        assert!(body(Some(&"t".repeat(MAX_TITLE + 1)), Some("x"), None).validate().is_err());
    }
}
