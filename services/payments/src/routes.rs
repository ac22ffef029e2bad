//! The HTTP API under `/api/payments/`: create, list, get, status change, history. Each
//! handler parses the request, calls a use case of [`crate::service::PaymentsService`] and maps
//! the answer.

use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    http::{header::CONTENT_TYPE, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, patch},
    Router,
};
use mfe_kit::{ApiError, AuthUser, CorrelationId, Json, Role};
use serde::Deserialize;

use crate::{
    domain::{parse_amount, parse_currency, PaymentStatus, PaymentType},
    startup::AppState,
    store::{Cursor, NewPayment, Payment, Scope, StatusChangeError},
};

/// Page size when the client gives none, and the largest it may ask for.
pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;
const MAX_DESCRIPTION_CHARS: usize = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/payments", get(list_payments).post(create_payment))
        .route("/api/payments/", get(list_payments).post(create_payment))
        .route("/api/payments/{id}", get(get_payment))
        .route("/api/payments/{id}/status", patch(update_status))
        .route("/api/payments/{id}/transactions", get(list_transactions))
}

/// `POST /api/payments` body. `amount` is a decimal string (or number); `currency` defaults to
/// USD and `type` to instant.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatePayment {
    #[serde(default)]
    pub amount: serde_json::Value,
    pub currency: Option<String>,
    #[serde(rename = "type")]
    pub payment_type: Option<String>,
    pub recipient_id: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::Validation(e.to_string())
}

impl CreatePayment {
    /// Checks every field; the first problem found is the 422 message.
    pub fn validate(self, sender_id: &str) -> Result<NewPayment, ApiError> {
        let amount = parse_amount(&self.amount).map_err(invalid)?;
        let currency = parse_currency(self.currency.as_deref()).map_err(invalid)?;
        let payment_type = match self.payment_type.as_deref() {
            None => PaymentType::default(),
            Some(t) => t.parse().map_err(invalid)?,
        };
        let recipient_id = self.recipient_id.map(|r| r.trim().to_string()).filter(|r| !r.is_empty());
        if recipient_id.as_deref() == Some(sender_id) {
            return Err(invalid("recipientId must be another user than the sender"));
        }
        if self.description.as_ref().is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_CHARS) {
            return Err(invalid(format!("description is longer than {MAX_DESCRIPTION_CHARS} characters")));
        }
        if self.metadata.as_ref().is_some_and(|m| !m.is_object() && !m.is_null()) {
            return Err(invalid("metadata must be a JSON object"));
        }
        Ok(NewPayment {
            sender_id: sender_id.to_string(),
            recipient_id,
            amount,
            currency,
            payment_type,
            description: self.description,
            metadata: self.metadata.filter(|m| !m.is_null()),
        })
    }
}

async fn create_payment(
    State(state): State<AppState>,
    user: AuthUser,
    correlation: CorrelationId,
    Json(body): Json<CreatePayment>,
) -> Result<impl IntoResponse, ApiError> {
    let new = body.validate(user.id())?;
    // A validly signed token of an account that does not exist creates nothing.
    state.accounts.require(&user).await?;
    let payment = state.service.create(new, correlation.0).await?;
    Ok((StatusCode::CREATED, Json(payment)))
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

async fn list_payments(
    State(state): State<AppState>,
    user: AuthUser,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))?;
    let limit = match params.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(raw) => raw.parse::<i64>().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
            ApiError::BadRequest(format!("limit must be a number from 1 to {MAX_LIMIT}, got {raw:?}"))
        })?,
    };
    let cursor_text = params.cursor.filter(|c| !c.is_empty());
    let cursor = match cursor_text.as_deref() {
        None => None,
        Some(raw) => Some(Cursor::decode(raw).ok_or_else(|| {
            ApiError::BadRequest("cursor is not one this service issued; pass nextCursor from a previous page".into())
        })?),
    };
    let scope = if user.role() == Role::Admin { Scope::All } else { Scope::User(user.id().to_string()) };

    let json = state.service.list(&scope, cursor_text.as_deref(), cursor.as_ref(), limit).await?;
    Ok(json_body(json))
}

/// A response whose body is JSON text already.
fn json_body(json: String) -> Response {
    ([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], json).into_response()
}

/// The payment if `user` may see it: its sender, its recipient or an admin. Anyone else gets
/// the same 404 as for a payment that does not exist, so ids cannot be probed.
async fn visible_payment(state: &AppState, user: &AuthUser, id: &str) -> Result<Payment, ApiError> {
    let not_found = || ApiError::NotFound(format!("payment {id} not found"));
    let payment = state.service.get(id).await?.ok_or_else(not_found)?;
    if user.role() == Role::Admin || payment.involves(user.id()) {
        Ok(payment)
    } else {
        Err(not_found())
    }
}

async fn get_payment(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Payment>, ApiError> {
    Ok(Json(visible_payment(&state, &user, &id).await?))
}

async fn list_transactions(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let payment = visible_payment(&state, &user, &id).await?;
    let history = state.service.transactions(&payment.id).await?;
    Ok(Json(serde_json::json!({ "data": history })))
}

#[derive(Debug, Deserialize)]
pub struct StatusChange {
    pub status: String,
    pub message: Option<String>,
}

/// `PATCH /api/payments/{id}/status`. Admins (standing in for the payment provider) may make any
/// legal change; the sender may only cancel; the recipient may look but not touch (403).
async fn update_status(
    State(state): State<AppState>,
    user: AuthUser,
    correlation: CorrelationId,
    Path(id): Path<String>,
    Json(body): Json<StatusChange>,
) -> Result<Json<Payment>, ApiError> {
    let target: PaymentStatus = body.status.parse().map_err(invalid)?;
    let payment = visible_payment(&state, &user, &id).await?;
    let allowed = user.role() == Role::Admin || (payment.sender_id == user.id() && target == PaymentStatus::Cancelled);
    if !allowed {
        return Err(ApiError::Forbidden(format!(
            "only an admin may set a payment to {target}; the sender may only cancel it"
        )));
    }
    let after = state.service.change_status(&id, target, body.message.as_deref(), None, Some(correlation.0)).await?;
    Ok(Json(after))
}

impl From<StatusChangeError> for ApiError {
    fn from(e: StatusChangeError) -> Self {
        match e {
            StatusChangeError::NotFound => ApiError::NotFound("payment not found".into()),
            StatusChangeError::Illegal(illegal) => ApiError::Conflict(illegal.to_string()),
            StatusChangeError::Database(db) => ApiError::Database(db),
        }
    }
}
