//! `GET /api/hours?device=&sensor=[&pollutant=][&from=&to=][&limit=]`: a
//! sensor's hourly rollups (`readings_hourly`) whose hour begins in
//! `[from, to)`, each pollutant's hours in order. `to` defaults to now,
//! `from` to 24 hours before `to`: the map's 24-hour chart. PostGIS only
//! (501 on SQLite).

use aeris_sink::query::HoursQuery;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{error, sink_error, window, ApiState};

/// Rows one request returns at most (a year of one pollutant is 8,784).
pub(super) const MAX_ROWS: i64 = 10_000;

#[derive(Debug, Deserialize)]
pub(super) struct Params {
    device: String,
    sensor: String,
    pollutant: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<i64>,
}

pub(super) async fn handler(State(s): State<ApiState>, Query(p): Query<Params>) -> Response {
    let (from_ms, to_ms) = match window(p.from.as_deref(), p.to.as_deref(), aeris_wire::now_ms()) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Some(q) = p.pollutant.as_deref() {
        if !aeris_sink::query::POLLUTANT_COLUMNS.contains(&q) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown pollutant {q:?}: one of pm1, pm25, pm10, no2, o3, co, so2"),
            );
        }
    }
    let q = HoursQuery {
        device: Some(p.device),
        sensor: Some(p.sensor),
        pollutant: p.pollutant,
        from_ms,
        to_ms,
        limit: p.limit.unwrap_or(MAX_ROWS).clamp(1, MAX_ROWS),
        offset: 0,
    };
    match s.sink.hours(&q).await {
        Ok((rows, _)) => Json(rows).into_response(),
        Err(e) => sink_error(e),
    }
}
