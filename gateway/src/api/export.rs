//! `GET /api/export/aqcsv?from=&to=`: the valid hourly rollups whose hour
//! begins in `[from, to)` (RFC 3339 or Unix ms; default the last 24
//! hours) as AQCSV ([`crate::export::aqcsv`]), ordered by device, sensor,
//! pollutant and hour. At most 31 days and 200,000 hours per request.

use aeris_wire::aqi::hourly::DAY_MS;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{error, sink_error, window, ApiState};

pub(super) const MAX_SPAN_MS: i64 = 31 * DAY_MS;
pub(super) const MAX_ROWS: i64 = 200_000;

#[derive(Debug, Deserialize)]
pub(super) struct Params {
    from: Option<String>,
    to: Option<String>,
}

pub(super) async fn aqcsv(State(s): State<ApiState>, Query(p): Query<Params>) -> Response {
    let (from_ms, to_ms) = match window(p.from.as_deref(), p.to.as_deref(), aeris_wire::now_ms()) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if to_ms.saturating_sub(from_ms) > MAX_SPAN_MS {
        return error(
            StatusCode::BAD_REQUEST,
            "`from` to `to` spans more than 31 days: export in parts",
        );
    }
    match crate::export::aqcsv::export(s.sink.as_ref(), from_ms, to_ms, MAX_ROWS).await {
        Ok(Ok(csv)) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"aeris.aqcsv.csv\"",
                ),
            ],
            csv,
        )
            .into_response(),
        Ok(Err(too_many)) => error(StatusCode::BAD_REQUEST, too_many),
        Err(e) => sink_error(e),
    }
}
