//! The Migration panel: the online sync's state per service (`mfe migrate sync status`'s
//! report: phase, lag in bytes and seconds, rows applied, errors), which the page polls every 2 s.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::Shared;
use crate::config::DbService;

/// `GET /api/migration`: `active` false while no split database records a sync.
pub async fn get(State(st): State<Shared>) -> Json<Value> {
    match crate::migrate::sync::status(&st.ctx.config, &DbService::SPLIT).await {
        Ok(report) => {
            let active = !(report.checks.len() == 1 && report.checks[0].name == "sync");
            Json(json!({"active": active, "report": report}))
        }
        Err(e) => Json(json!({"active": false, "error": crate::error_line(&e)})),
    }
}
