//! `GET /ws` (SPEC §8): the token is checked before the upgrade (401 otherwise), then the socket
//! joins `user:{id}`, `role:{role}` and `broadcast` and is served by [`socket::serve`].
//!
//! The token travels in `?token=` (browsers cannot set headers on a WebSocket) or in
//! `Authorization: Bearer`; neither the token nor the query string is ever logged.
//!
//! A user holds at most `WS_MAX_CONNECTIONS_PER_USER` sockets ([`limit`]): the next upgrade is
//! answered 429 `too_many_connections` before the handshake, and a closed socket frees its slot.

pub mod limit;
pub mod rooms;
pub mod socket;

use axum::{
    extract::{
        ws::{rejection::WebSocketUpgradeRejection, Utf8Bytes, WebSocketUpgrade},
        RawQuery, State,
    },
    http::{header::AUTHORIZATION, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use mfe_kit::jwt::{Claims, JwtError};

use crate::{proxy::error_response, routing, AppState};

/// Frames a client may send are tiny (pings); this bounds what a client can make us buffer.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// Read buffer per socket: small, because 10 000 idle sockets must fit in 100 MB.
const READ_BUFFER: usize = 1024;

/// The upgrade handler.
pub async fn ws_handler(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let claims = match authenticate(&state, query.as_deref(), &headers).await {
        Ok(claims) => claims,
        Err((reason, message)) => {
            state.metrics.ws_rejected(reason);
            return error_response(StatusCode::UNAUTHORIZED, "unauthorized", &message);
        }
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            state.metrics.ws_rejected("not_an_upgrade");
            return error_response(rejection.status(), "bad_request", &rejection.body_text());
        }
    };
    // Held by the socket's task; dropped (the slot freed) when the socket ends or the upgrade fails.
    let slot = match state.ws_slots.try_acquire(&claims.sub) {
        Ok(slot) => slot,
        Err(open) => {
            state.metrics.ws_rejected("too_many_connections");
            let message = format!(
                "this user already has {open} open WebSocket connections, the most allowed \
                 (WS_MAX_CONNECTIONS_PER_USER={}); close one and connect again",
                state.ws_slots.max()
            );
            return error_response(StatusCode::TOO_MANY_REQUESTS, "too_many_connections", &message);
        }
    };
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            let room_names = vec![
                routing::user_room(&claims.sub),
                routing::role_room(claims.role.as_str()),
                routing::BROADCAST_ROOM.to_string(),
            ];
            let ack = ack_message(&claims.sub, &room_names);
            let (conn, queue) = state.rooms.join(&claims.sub, claims.device_id.as_deref(), &room_names);
            drop(claims);
            state.metrics.ws_opened();
            let (sink, stream) = socket.split();
            let ended = socket::serve(sink, stream, &conn, queue, ack, state.heartbeat, &state.metrics).await;
            state.rooms.leave(&conn, &room_names);
            drop(slot);
            state.metrics.ws_closed();
            tracing::debug!(conn = conn.id, ?ended, "websocket closed");
        })
        .into_response()
}

/// The claims of the request's token, or why there is none: `(metric reason, message)`.
/// The message names the kind of refusal only; the decoder's detail goes to a debug line.
async fn authenticate(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Claims, (&'static str, String)> {
    let from_query = query.and_then(token_from_query);
    let from_header = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_string());
    let Some(token) = from_query.or(from_header).filter(|t| !t.is_empty()) else {
        return Err((
            "missing_token",
            "a token is required: connect to /ws?token=JWT or send Authorization: Bearer JWT".into(),
        ));
    };
    state.jwt.authenticate(&token).await.map_err(|e| {
        tracing::debug!(error = %e, "websocket upgrade refused");
        match e {
            JwtError::Expired => ("expired_token", "the token expired, refresh it".to_string()),
            JwtError::Revoked => ("revoked_token", "the session of this token ended, sign in again".to_string()),
            _ => ("invalid_token", "the token was refused".to_string()),
        }
    })
}

/// The `token` parameter of a query string, percent-decoded.
fn token_from_query(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("token=")?;
        Some(percent_decode(value))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `{"type":"connection:ack","payload":{"userId":..,"rooms":[..]},"timestamp":..}`.
fn ack_message(user_id: &str, rooms: &[String]) -> Utf8Bytes {
    serde_json::json!({
        "type": "connection:ack",
        "payload": {"userId": user_id, "rooms": rooms},
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
    .to_string()
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_from_the_query_and_percent_decoded() {
        assert_eq!(token_from_query("a=1&token=abc.def%2Dx").as_deref(), Some("abc.def-x"));
        assert_eq!(token_from_query("a=1"), None);
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn the_ack_lists_the_user_and_its_rooms() {
        let ack = ack_message("u1", &["user:u1".into(), "role:admin".into(), "broadcast".into()]);
        let v: serde_json::Value = serde_json::from_str(ack.as_str()).unwrap();
        assert_eq!(v["type"], "connection:ack");
        assert_eq!(v["payload"]["userId"], "u1");
        assert_eq!(v["payload"]["rooms"][1], "role:admin");
        assert!(v["timestamp"].is_string());
    }
}
