//! The JSON error every service answers with: `{"error": {"code": "...", "message": "..."}}`
//! and the matching status (SPEC §4). Database and internal errors stay opaque to clients and
//! are logged once, here, with their cause chain.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{header::CONTENT_TYPE, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use mfe_core::cause_chain;
use serde::{de::DeserializeOwned, Serialize};

/// An error a handler returns; its variant decides the status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request could not be read (malformed JSON, wrong content type, bad query).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: the write conflicts with existing data (e.g. a duplicate email).
    #[error("{0}")]
    Conflict(String),
    /// 422: well-formed but invalid input.
    #[error("{0}")]
    Validation(String),
    /// 503: a dependency is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// 500 from the database; a unique violation becomes 409 instead.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// 500 for anything else unexpected.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    /// The status and machine-readable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Database(e) if is_unique_violation(e) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Database(e) if is_unavailable(e) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Database(_) | ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// Whether `e` is a PostgreSQL unique-constraint violation (SQLSTATE 23505).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Database(e) if is_unique_violation(e) => "a record with the same unique value exists".to_string(),
            ApiError::Database(e) => {
                tracing::error!(error = %cause_chain(e), "database error while handling request");
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    "the database is unavailable, try again later".to_string()
                } else {
                    "internal error".to_string()
                }
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error while handling request");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        (status, axum::Json(ErrorBody { error: ErrorDetail { code, message } })).into_response()
    }
}

/// `axum::Json` for requests, answering in the shared error shape:
/// - a body that is not JSON: 400 `malformed JSON body` (with the field being read when the
///   text broke off, e.g. `malformed JSON body (in field "description")`);
/// - JSON of the wrong shape: 400 `invalid request body: field "amount": expected a number`,
///   `... field "password" is required`;
/// - a string (or field name) with a control character other than tab, LF and CR: 422
///   `field "description" contains a control character (U+0000)` ([`crate::input`]);
///
/// never the parser's own text (positions, Rust type names), which goes to a debug log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::BadRequest(
                "expected a JSON body with header content-type: application/json".to_string(),
            ));
        }
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            ApiError::BadRequest(format!("cannot read request body: {}", rejection.body_text()))
        })?;
        decode_json(&body).map(Json)
    }
}

/// `application/json` or `application/<anything>+json`, parameters allowed (what axum accepts).
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A JSON request body as `T`, with the errors of [`Json`]: for a handler that reads the body
/// itself (an optional body, say).
pub fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if crate::input::json_may_hold_control(body) {
        if let Some(err) =
            serde_json::from_slice::<serde_json::Value>(body).ok().as_ref().and_then(crate::input::control_in_json)
        {
            tracing::debug!(error = %err, "request body refused");
            return Err(err);
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(value) => value,
        Err(e) => {
            tracing::debug!(error = %e.inner(), path = %e.path(), "request body refused");
            return Err(body_error(&e.path().to_string(), e.inner()));
        }
    };
    de.end().map_err(|e| {
        tracing::debug!(error = %e, "request body refused");
        ApiError::BadRequest("malformed JSON body: text after the JSON value".to_string())
    })?;
    Ok(value)
}

/// The client's message for a serde_json error at `path` (`.` is the body itself).
fn body_error(path: &str, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let at_root = path.is_empty() || path == ".";
    let field = |name: &str| if at_root { name.to_string() } else { format!("{path}.{name}") };
    match e.classify() {
        Category::Eof if at_root && e.line() == 1 && e.column() == 0 => {
            ApiError::BadRequest("the request body is empty; expected a JSON value".to_string())
        }
        // `?` stands for a key serde_path_to_error could not read: no field to name.
        Category::Syntax | Category::Eof | Category::Io => ApiError::BadRequest(if at_root || path.contains('?') {
            "malformed JSON body".to_string()
        } else {
            format!("malformed JSON body (in field {path:?})")
        }),
        Category::Data => {
            let message = e.to_string();
            let message = match message.rfind(" at line ") {
                Some(i) => &message[..i],
                None => message.as_str(),
            };
            let what = if let Some(name) = backticked(message, "missing field `") {
                return ApiError::BadRequest(format!("invalid request body: field {:?} is required", field(name)));
            } else if let Some(name) = backticked(message, "unknown field `") {
                return ApiError::BadRequest(format!("invalid request body: field {:?} is not allowed", field(name)));
            } else if let Some(rest) = message.strip_prefix("unknown variant `") {
                match rest.split_once(", expected ") {
                    Some((_, allowed)) => format!("expected {}", allowed.replace('`', "\"")),
                    None => "has a value that is not allowed".to_string(),
                }
            } else if message.starts_with("invalid length ") {
                "has the wrong number of elements".to_string()
            } else {
                // "invalid type: ..., expected X", "invalid value: ..., expected X", or a
                // custom message of a type's own parser.
                match message.split_once(", expected ").and_then(|(_, exp)| human_expectation(exp)) {
                    Some(expected) => format!("expected {expected}"),
                    None if message.starts_with("invalid type: ") => "has the wrong type".to_string(),
                    None => "is not a valid value".to_string(),
                }
            };
            ApiError::BadRequest(match (at_root, what.starts_with("expected ")) {
                (true, true) => format!("invalid request body: {what}"),
                (true, false) => format!("invalid request body: the body {what}"),
                (false, _) => format!("invalid request body: field {path:?}: {what}"),
            })
        }
    }
}

/// `name` in `prefix` + "name`...".
fn backticked<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message.strip_prefix(prefix)?.split('`').next()
}

/// What serde's "expected ..." says, in words a client understands; `None` for what would only
/// be a Rust type name.
fn human_expectation(expected: &str) -> Option<&'static str> {
    let e = expected.trim();
    Some(if ["u8", "u16", "u32", "u64", "u128", "usize"].contains(&e) {
        "a non-negative whole number"
    } else if ["i8", "i16", "i32", "i64", "i128", "isize"].contains(&e) {
        "a whole number"
    } else if e == "f32" || e == "f64" || e.contains("Decimal") || e.contains("number") {
        "a number"
    } else if e == "a string"
        || e == "a borrowed string"
        || e == "a character"
        || (e.contains("string") && !e.contains("RFC") && !e.contains("UUID"))
    {
        "a string"
    } else if e == "a boolean" {
        "true or false"
    } else if e.starts_with("struct ") || e == "a map" || e.starts_with("map") {
        "an object"
    } else if e == "a sequence" || e.starts_with("tuple") || e.starts_with("a sequence") {
        "an array"
    } else if e.contains("UUID") {
        "a UUID"
    } else if e.contains("RFC 3339") || e.contains("date") {
        "an RFC 3339 date and time"
    } else if e.starts_with("enum ") || e.contains("variant") {
        "one of the allowed values"
    } else {
        return None;
    })
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{body::Body, routing::post, Router};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(router: Router, body: &'static str) -> (StatusCode, serde_json::Value) {
        let req =
            axum::http::Request::post("/").header("content-type", "application/json").body(Body::from(body)).unwrap();
        let res = router.oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_malformed_body_answers_400_in_the_shared_error_shape() {
        #[derive(serde::Deserialize)]
        struct Body {
            #[allow(dead_code)]
            n: u32,
        }
        let router = Router::new().route("/", post(|Json(_): Json<Body>| async { "ok" }));
        let (status, body) = call(router.clone(), "{oops").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "bad_request");
        assert_eq!(body["error"]["message"], "malformed JSON body", "{body}");
        let (status, body) = call(router, r#"{"n": "x"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["error"]["message"], r#"invalid request body: field "n": expected a non-negative whole number"#,
            "{body}"
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Payment {
        amount: rust_decimal::Decimal,
        currency: String,
        description: Option<String>,
        status: Option<Status>,
        items: Option<Vec<Item>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    enum Status {
        #[serde(rename = "PENDING")]
        Pending,
        #[serde(rename = "COMPLETED")]
        Completed,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Item {
        name: String,
        qty: u32,
    }

    fn refusal(body: &str) -> (StatusCode, String) {
        let err = decode_json::<Payment>(body.as_bytes()).unwrap_err();
        let (status, _) = err.status_and_code();
        (status, err.to_string())
    }

    #[test]
    fn body_errors_say_what_and_where_without_parser_internals() {
        for (body, expected) in [
            (r#"{"amount": "x", "currency": "EUR"}"#, r#"invalid request body: field "amount": expected a number"#),
            (r#"{"currency": "EUR"}"#, r#"invalid request body: field "amount" is required"#),
            (r#"{"amount": 1, "currency": 5}"#, r#"invalid request body: field "currency": expected a string"#),
            (
                r#"{"amount": 1, "currency": "EUR", "status": "LOST"}"#,
                r#"invalid request body: field "status": expected "PENDING" or "COMPLETED""#,
            ),
            (
                r#"{"amount": 1, "currency": "EUR", "items": [{"name": "a", "qty": -1}]}"#,
                r#"invalid request body: field "items[0].qty": expected a non-negative whole number"#,
            ),
            (
                r#"{"amount": 1, "currency": "EUR", "items": [{"qty": 1}]}"#,
                r#"invalid request body: field "items[0].name" is required"#,
            ),
            (r#""text""#, "invalid request body: expected an object"),
            (r#"{"amount": 1, "currency": "EU"#, r#"malformed JSON body (in field "currency")"#),
            (r#"{"amount": 1, "currency": "EUR"} trailing"#, "malformed JSON body: text after the JSON value"),
            ("", "the request body is empty; expected a JSON value"),
        ] {
            let (status, message) = refusal(body);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(message, expected, "{body}");
            assert!(!message.contains("line ") && !message.contains("column") && !message.contains("u32"), "{message}");
        }
    }

    #[test]
    fn a_control_character_in_any_string_is_a_422_naming_the_field() {
        for (body, expected) in [
            (
                r#"{"amount": 1, "currency": "EUR", "description": "a\u0000b"}"#,
                r#"field "description" contains a control character (U+0000)"#,
            ),
            (
                r#"{"amount": 1, "currency": "EUR", "items": [{"name": "\u001b[31m", "qty": 1}]}"#,
                r#"field "items[0].name" contains a control character (U+001B)"#,
            ),
            // Refused in a field the handler does not even read.
            (
                r#"{"amount": 1, "currency": "EUR", "note": "\b"}"#,
                r#"field "note" contains a control character (U+0008)"#,
            ),
        ] {
            let (status, message) = refusal(body);
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert_eq!(message, expected);
        }
        let ok: Payment =
            decode_json(br#"{"amount": "10.50", "currency": "EUR", "description": "two\nlines\tand a tab"}"#).unwrap();
        assert_eq!(ok.description.as_deref(), Some("two\nlines\tand a tab"));
        assert_eq!(ok.amount.to_string(), "10.50");
    }

    #[tokio::test]
    async fn the_extractor_refuses_a_control_character_with_422_and_a_wrong_content_type_with_400() {
        #[derive(serde::Deserialize)]
        struct Signup {
            #[allow(dead_code)]
            name: String,
        }
        let router = Router::new().route("/", post(|Json(_): Json<Signup>| async { "ok" }));
        let (status, body) = call(router.clone(), r#"{"name": "\u0000"}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"]["code"], "validation_failed");
        assert_eq!(body["error"]["message"], r#"field "name" contains a control character (U+0000)"#);
        let req = axum::http::Request::post("/").header("content-type", "text/plain").body(Body::from("{}")).unwrap();
        let res = router.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn each_variant_maps_to_its_status_and_internal_details_stay_hidden() {
        let router = Router::new().route(
            "/",
            post(|| async { Err::<(), _>(ApiError::Internal(anyhow::anyhow!("secret connection string"))) }),
        );
        let (status, body) = call(router, "{}").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["message"], "internal error");
        for (err, status) in [
            (ApiError::NotFound("x".into()), StatusCode::NOT_FOUND),
            (ApiError::Conflict("x".into()), StatusCode::CONFLICT),
            (ApiError::Validation("x".into()), StatusCode::UNPROCESSABLE_ENTITY),
            (ApiError::Forbidden("x".into()), StatusCode::FORBIDDEN),
            (ApiError::Unavailable("x".into()), StatusCode::SERVICE_UNAVAILABLE),
            (ApiError::Database(sqlx::Error::PoolTimedOut), StatusCode::SERVICE_UNAVAILABLE),
            (ApiError::Database(sqlx::Error::RowNotFound), StatusCode::INTERNAL_SERVER_ERROR),
        ] {
            assert_eq!(err.status_and_code().0, status, "{err:?}");
        }
    }
}
