//! `GET /api/profile/me` and `PUT /api/profile/me`. PUT changes only the fields it names
//! (`null` clears one); it creates the profile when the registration event has not arrived yet.

use axum::{extract::State, routing::get, Router};
use chrono::{DateTime, NaiveDateTime, Utc};
use mfe_kit::{ApiError, AuthUser, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::AppState;

/// Largest accepted `preferences` object, serialised.
pub const MAX_PREFERENCES_BYTES: usize = 16 * 1024;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/profile/me", get(get_me).put(put_me))
}

/// A profile as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub id: String,
    pub user_id: String,
    pub avatar_url: Option<String>,
    pub phone: Option<String>,
    pub address: Option<String>,
    pub bio: Option<String>,
    pub preferences: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ProfileRow {
    id: String,
    user_id: String,
    avatar_url: Option<String>,
    phone: Option<String>,
    address: Option<String>,
    bio: Option<String>,
    preferences: Option<Value>,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

impl From<ProfileRow> for Profile {
    fn from(r: ProfileRow) -> Self {
        Profile {
            id: r.id,
            user_id: r.user_id,
            avatar_url: r.avatar_url,
            phone: r.phone,
            address: r.address,
            bio: r.bio,
            preferences: r.preferences.unwrap_or_else(|| Value::Object(Map::new())),
            created_at: r.created_at.and_utc(),
            updated_at: r.updated_at.and_utc(),
        }
    }
}

const COLUMNS: &str = "id, user_id, avatar_url, phone, address, bio, preferences, created_at, updated_at";

async fn get_me(State(state): State<AppState>, auth: AuthUser) -> Result<Json<Profile>, ApiError> {
    if let Some(cache) = &state.profiles_cache {
        if let Some(profile) = cache.get::<Profile>(auth.id()).await {
            return Ok(Json(profile));
        }
    }
    let row: Option<ProfileRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM user_profiles WHERE user_id = $1"))
        .bind(auth.id())
        .fetch_optional(&state.db)
        .await?;
    let profile: Profile = row
        .ok_or_else(|| ApiError::NotFound("no profile for this user yet; PUT /api/profile/me creates one".into()))?
        .into();
    if let Some(cache) = &state.profiles_cache {
        cache.set(auth.id(), &profile).await;
    }
    Ok(Json(profile))
}

/// The fields of a PUT body after validation: `Some(None)` clears, `None` leaves unchanged.
#[derive(Debug, Default, PartialEq)]
pub struct ProfileChanges {
    pub avatar_url: Option<Option<String>>,
    pub phone: Option<Option<String>>,
    pub address: Option<Option<String>>,
    pub bio: Option<Option<String>>,
    pub preferences: Option<Value>,
}

fn text_field(name: &str, value: &Value, max_chars: usize) -> Result<Option<String>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s.chars().count() <= max_chars => Ok(Some(s.trim().to_string())),
        Value::String(_) => Err(ApiError::Validation(format!("{name} must be at most {max_chars} characters"))),
        _ => Err(ApiError::Validation(format!("{name} must be a string or null"))),
    }
}

fn check_avatar_url(raw: &str) -> Result<(), ApiError> {
    let bad = || ApiError::Validation("avatarUrl must be an absolute http(s) URL of at most 2048 characters".into());
    let parsed = url::Url::parse(raw).map_err(|_| bad())?;
    if raw.len() > 2048 || !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad());
    }
    Ok(())
}

fn check_phone(raw: &str) -> Result<(), ApiError> {
    let digits = raw.chars().filter(char::is_ascii_digit).count();
    let allowed =
        raw.chars().enumerate().all(|(i, c)| c.is_ascii_digit() || " -().".contains(c) || (c == '+' && i == 0));
    if !allowed || !(5..=15).contains(&digits) {
        return Err(ApiError::Validation(
            "phone must be 5 to 15 digits, optionally with a leading + and spaces, dashes, dots or parentheses".into(),
        ));
    }
    Ok(())
}

/// Validates a PUT body (a JSON object of the profile's fields).
pub fn parse_changes(body: &Map<String, Value>) -> Result<ProfileChanges, ApiError> {
    let mut changes = ProfileChanges::default();
    for (key, value) in body {
        match key.as_str() {
            "avatarUrl" => {
                let v = text_field(key, value, 2048)?.filter(|s| !s.is_empty());
                if let Some(url) = &v {
                    check_avatar_url(url)?;
                }
                changes.avatar_url = Some(v);
            }
            "phone" => {
                let v = text_field(key, value, 32)?.filter(|s| !s.is_empty());
                if let Some(phone) = &v {
                    check_phone(phone)?;
                }
                changes.phone = Some(v);
            }
            "address" => changes.address = Some(text_field(key, value, 500)?),
            "bio" => changes.bio = Some(text_field(key, value, 2000)?),
            "preferences" => {
                let Value::Object(_) = value else {
                    return Err(ApiError::Validation("preferences must be a JSON object".into()));
                };
                let size = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(usize::MAX);
                if size > MAX_PREFERENCES_BYTES {
                    return Err(ApiError::Validation(format!(
                        "preferences is {size} bytes; at most {MAX_PREFERENCES_BYTES} bytes are accepted"
                    )));
                }
                changes.preferences = Some(value.clone());
            }
            "id" | "userId" | "createdAt" | "updatedAt" => {
                return Err(ApiError::Validation(format!("{key} cannot be changed")));
            }
            other => {
                return Err(ApiError::Validation(format!(
                    "unknown field {other:?} (expected avatarUrl, phone, address, bio, preferences)"
                )))
            }
        }
    }
    Ok(changes)
}

async fn put_me(
    State(state): State<AppState>,
    auth: AuthUser,
    Json(body): Json<Map<String, Value>>,
) -> Result<Json<Profile>, ApiError> {
    let changes = parse_changes(&body)?;
    // A validly signed token of an account that does not exist writes no profile.
    state.accounts.require(&auth).await?;
    let now = Utc::now().naive_utc();
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO user_profiles (id, user_id, preferences, created_at, updated_at)
         VALUES ($1, $2, '{}'::jsonb, $3, $3) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(auth.id())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let current: Profile =
        sqlx::query_as::<_, ProfileRow>(&format!("SELECT {COLUMNS} FROM user_profiles WHERE user_id = $1 FOR UPDATE"))
            .bind(auth.id())
            .fetch_one(&mut *tx)
            .await?
            .into();
    let row: ProfileRow = sqlx::query_as(&format!(
        "UPDATE user_profiles SET avatar_url = $2, phone = $3, address = $4, bio = $5, preferences = $6, updated_at = $7
         WHERE user_id = $1 RETURNING {COLUMNS}"
    ))
    .bind(auth.id())
    .bind(changes.avatar_url.unwrap_or(current.avatar_url))
    .bind(changes.phone.unwrap_or(current.phone))
    .bind(changes.address.unwrap_or(current.address))
    .bind(changes.bio.unwrap_or(current.bio))
    .bind(changes.preferences.unwrap_or(current.preferences))
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    // Deleted after the commit: a reader between commit and delete may re-cache the old value
    // only if it read before the commit, and that entry is deleted here.
    if let Some(cache) = &state.profiles_cache {
        cache.delete(auth.id()).await;
    }
    Ok(Json(row.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn changes(v: Value) -> Result<ProfileChanges, ApiError> {
        parse_changes(v.as_object().unwrap())
    }

    #[test]
    fn preferences_must_be_an_object_of_at_most_16_kib() {
        assert!(changes(json!({"preferences": [1, 2]})).is_err());
        assert!(changes(json!({"preferences": "dark"})).is_err());
        assert!(changes(json!({"preferences": {"big": "x".repeat(17 * 1024)}})).is_err());
        assert_eq!(
            changes(json!({"preferences": {"theme": "dark"}})).unwrap().preferences,
            Some(json!({"theme": "dark"}))
        );
    }

    #[test]
    fn phone_and_avatar_url_are_validated_and_null_clears() {
        assert!(changes(json!({"phone": "+44 20 7946 0958"})).is_ok());
        assert!(changes(json!({"phone": "call me"})).is_err());
        assert!(changes(json!({"phone": "12+34567"})).is_err());
        assert!(changes(json!({"avatarUrl": "https://cdn.example.com/a.png"})).is_ok());
        assert!(changes(json!({"avatarUrl": "javascript:alert(1)"})).is_err());
        assert_eq!(changes(json!({"bio": null})).unwrap().bio, Some(None));
        assert!(changes(json!({"userId": "other"})).is_err());
        assert!(changes(json!({"nickname": "x"})).is_err());
    }
}
