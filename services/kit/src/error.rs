//! The JSON error every service answers with: `{"error": {"code": "...", "message": "..."}}`
//! and the matching status (SPEC §4). Database and internal errors stay opaque to clients and
//! are logged once, here, with their cause chain.

use axum::{
    extract::{rejection::JsonRejection, FromRequest, Request},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use mfe_core::cause_chain;
use serde::Serialize;

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

/// `axum::Json` whose rejections answer in the shared error shape (400 with a message saying
/// what was wrong with the body) instead of axum's plain-text defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(ApiError::BadRequest(match rejection {
                JsonRejection::JsonDataError(e) => format!("invalid request body: {}", cause_chain(&e)),
                JsonRejection::JsonSyntaxError(e) => format!("malformed JSON body: {}", cause_chain(&e)),
                JsonRejection::MissingJsonContentType(_) => {
                    "expected a JSON body with header content-type: application/json".to_string()
                }
                other => format!("cannot read request body: {}", other.body_text()),
            })),
        }
    }
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
        assert!(body["error"]["message"].as_str().unwrap().starts_with("malformed JSON body"), "{body}");
        let (status, body) = call(router, r#"{"n": "x"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"]["message"].as_str().unwrap().contains("invalid request body"), "{body}");
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
