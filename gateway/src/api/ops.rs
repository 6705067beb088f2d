//! Operator endpoints; every route here needs the `operate` scope (see
//! [`super::auth::protect`]) and every action is written to the audit log.
//!
//! - `POST /api/ops/resend`: after a database restore, asks every known
//!   device to re-send what the database lacks ([`crate::resend`]).
//! - `GET /api/audit?limit=`: the newest audit rows (default 100, at most
//!   1,000), newest first.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::auth::Caller;
use super::{error, sink_error, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/ops/resend", post(resend))
        .route("/api/audit", get(audit))
}

async fn resend(State(s): State<ApiState>, Extension(caller): Extension<Caller>) -> Response {
    let result = crate::resend::run(&s.config, s.sink.as_ref())
        .await
        .and_then(|r| serde_json::to_value(r).map_err(|e| e.to_string()));
    crate::audit::record(
        s.sink.as_ref(),
        &s.stats,
        &caller.name,
        "resend",
        "fleet",
        &result,
    )
    .await;
    match result {
        Ok(report) => Json(report).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

#[derive(Debug, Deserialize)]
struct AuditParams {
    limit: Option<i64>,
}

async fn audit(State(s): State<ApiState>, Query(p): Query<AuditParams>) -> Response {
    match s.sink.audit(p.limit.unwrap_or(100).clamp(1, 1000)).await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => sink_error(e),
    }
}
