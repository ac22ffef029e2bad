//! Keyset pagination of lists sorted newest first by `(created_at, id)`: the [`Cursor`] a page
//! hands out for the next one (payments, audit logs).

use chrono::{DateTime, NaiveDateTime, Utc};

/// Where a page starts: after the row created at `created_at` with `id` (newest first). Sent to
/// clients as the opaque `<epoch-millis>_<id>`, so `created_at` must be stored at millisecond
/// precision (`timestamp(3)`) for the value read back to compare exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: NaiveDateTime,
    pub id: String,
}

impl Cursor {
    /// The cursor of the page after the row created at `created_at` with `id`.
    pub fn after(created_at: DateTime<Utc>, id: &str) -> Self {
        Self { created_at: created_at.naive_utc(), id: id.to_string() }
    }

    pub fn encode(&self) -> String {
        format!("{}_{}", self.created_at.and_utc().timestamp_millis(), self.id)
    }

    /// The cursor `raw` names, or `None` when it is not one [`Cursor::encode`] wrote.
    pub fn decode(raw: &str) -> Option<Self> {
        let (millis, id) = raw.split_once('_')?;
        let created_at = DateTime::<Utc>::from_timestamp_millis(millis.parse().ok()?)?.naive_utc();
        (!id.is_empty()).then(|| Self { created_at, id: id.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_its_text_form_and_other_text_is_refused() {
        let at = DateTime::<Utc>::from_timestamp_millis(1_764_000_000_123).unwrap();
        let cursor = Cursor::after(at, "a1b2-c3_d");
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in ["garbage", "12_", "x_y", "_id", ""] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }
}
