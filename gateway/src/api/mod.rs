//! The HTTP API and the live map.
//!
//! - `GET /healthz`: the process runs. `GET /readyz`: connected to the
//!   broker, the database answers, and writes have not been failing for
//!   longer than `writer.stall_after` (503 otherwise). `GET /metrics`:
//!   Prometheus text.
//! - `GET /api/sensors[?bbox=w,s,e,n | ?lat=&lon=&radius_m=]`: latest reading
//!   of each sensor in the area, from the live view (Redis geo index), with
//!   its instant AQI (`aqi_instant`, of that reading alone) and, from the
//!   hourly rollups (PostGIS), `nowcast`: the AQI of its latest hour with
//!   one in the last 3 hours, its category and the pollutant responsible.
//! - `GET /api/readings?device=&sensor=&from=&to=&limit=`: a sensor's stored
//!   readings over `[from, to)` (Unix ms or RFC 3339), from the database;
//!   `to` defaults to now (+ the 5 minutes of clock skew ingest accepts),
//!   `from` to 24 hours before `to`. Times must lie in the years 1..=9999.
//! - `GET /api/hours?device=&sensor=[&pollutant=&from=&to=&limit=]`: a
//!   sensor's hourly rollups, by default of the last 24 hours (`hours`).
//! - `GET /api/export/aqcsv?from=&to=`: the valid hourly rollups of a
//!   range in EPA's AQCSV exchange format (`export`).
//! - `GET /v3/locations`, `/v3/locations/{id}`, `/v3/sensors/{id}` and its
//!   `/measurements`, `/hours`, `/days`: OpenAQ v3-style reads (`openaq`).
//! - `GET /api/devices`: each device's last status and data debt next to the
//!   seq ranges never received (computed in the database), and, for a
//!   device with a desired configuration, `config`: desired and applied
//!   versions, a refusal, `state` (`converged`, `pending`, `refused`) and
//!   `drift` (issue 18); `channels`: each two-channel sensor's hours
//!   judged, disagreeing and one-channel over `rollups.degrading_window`,
//!   its `disagreement_ratio` and `degrading` (above
//!   `rollups.degrading_ratio`).
//! - `GET /api/live`: server-sent events, one `reading` event per reading
//!   that became its sensor's latest (the Redis stream), capped per client
//!   and in total, closed when idle ([`live`]). The only route that also
//!   takes its token as `?access_token=` (`EventSource` cannot set headers).
//! - `POST /api/rollouts`, `GET /api/rollouts/{id}`: staged agent updates
//!   ([`rollout`]).
//! - `GET /`: the map page; its scripts are compiled into the binary
//!   (`map`), nothing is fetched from a CDN.
//! - Operator routes (`ops`): re-send, the audit log; desired
//!   configuration of devices and groups (`config`).
//!
//! The `/api/*` and `/v3/*` read routes need the `read` scope and the operator routes
//! the `operate` scope ([`auth`]); health, metrics and the map page are
//! open.

pub mod auth;
mod config;
mod export;
mod hours;
pub mod live;
mod map;
mod openaq;
mod ops;
pub mod rollout;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use aeris_sink::live::{Area, Live};
use aeris_sink::query::ReadingsQuery;
use aeris_sink::{Sink, SinkError};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::stats::Stats;

#[derive(Clone)]
pub struct ApiState {
    pub sink: Arc<dyn Sink>,
    pub live: Arc<dyn Live>,
    pub stats: Arc<Stats>,
    pub tile_url: String,
    pub shutdown: CancellationToken,
    pub access: Arc<auth::Access>,
    /// The gateway's config, for operator actions that reach the broker.
    pub config: Arc<crate::Config>,
    /// The open `/api/live` streams and their caps.
    pub streams: Arc<live::Streams>,
    /// Stores and drives the staged changes started over HTTP.
    pub rollouts: Arc<crate::rollout::Driver>,
}

/// The event stream's path: the one route whose token may come in the
/// query string ([`auth`]).
pub const LIVE_PATH: &str = "/api/live";

pub fn router(state: ApiState) -> Router {
    let reads = Router::new()
        .route("/api/sensors", get(sensors))
        .route("/api/readings", get(readings))
        .route("/api/devices", get(devices))
        .route("/api/hours", get(hours::handler))
        .route("/api/export/aqcsv", get(export::aqcsv))
        .merge(openaq::routes())
        .route(LIVE_PATH, get(live::handler));
    let access = state.access.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(auth::protect(reads, access.clone(), auth::Scope::Read))
        .merge(auth::protect(
            ops::routes(),
            access.clone(),
            auth::Scope::Operate,
        ))
        .merge(auth::protect(
            config::routes(),
            access,
            auth::Scope::Operate,
        ))
        .merge(map::routes())
        .with_state(state)
}

/// A JSON error body with a status.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (status, Json(body)).into_response()
}

fn sink_error(e: SinkError) -> Response {
    match e {
        SinkError::Unsupported(_) => error(StatusCode::NOT_IMPLEMENTED, e.to_string()),
        SinkError::Rejected(_) | SinkError::Data(_) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        _ => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn readyz(State(s): State<ApiState>) -> Response {
    let broker = s.stats.broker_connected.load(Relaxed);
    let db = matches!(
        tokio::time::timeout(Duration::from_secs(2), s.sink.ping()).await,
        Ok(Ok(()))
    );
    // Writes failing (and retried) for longer than `writer.stall_after`:
    // batches pile up unacked, so this gateway is not doing its job.
    let stall_after = s.config.writer.stall_after;
    let writer = s
        .stats
        .progress
        .stalled_for()
        .is_none_or(|d| d < stall_after);
    let body = serde_json::json!({ "broker": broker, "database": db, "writer": writer });
    let status = if broker && db && writer {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.stats.encode(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct AreaParams {
    bbox: Option<String>,
    lat: Option<f64>,
    lon: Option<f64>,
    radius_m: Option<f64>,
}

fn area(p: &AreaParams) -> Result<Area, String> {
    if let Some(b) = &p.bbox {
        let v: Vec<f64> = b
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| "bbox must be four numbers: west,south,east,north".to_owned())?;
        let [w, s, e, n] = v[..] else {
            return Err("bbox must be four numbers: west,south,east,north".into());
        };
        let lon_ok = (-180.0..=180.0).contains(&w) && (-180.0..=180.0).contains(&e);
        let lat_ok = (-90.0..=90.0).contains(&s) && (-90.0..=90.0).contains(&n);
        if !(w < e && s < n && lon_ok && lat_ok) {
            return Err("bbox must satisfy west < east and south < north, in degrees".into());
        }
        return Ok(Area::BBox {
            min_lon: w,
            min_lat: s,
            max_lon: e,
            max_lat: n,
        });
    }
    match (p.lat, p.lon, p.radius_m) {
        (None, None, None) => Ok(Area::All),
        (Some(lat), Some(lon), Some(r))
            if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) && r > 0.0 =>
        {
            Ok(Area::Radius {
                lon,
                lat,
                meters: r,
            })
        }
        _ => Err("give lat, lon (degrees) and radius_m > 0 together, or bbox".into()),
    }
}

async fn sensors(State(s): State<ApiState>, Query(p): Query<AreaParams>) -> Response {
    let area = match area(&p) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let found = match s.live.search(area).await {
        Ok(found) => found,
        Err(e) => return sink_error(e),
    };
    let ids: Vec<(String, String)> = found
        .iter()
        .map(|r| (r.device.clone(), r.sensor.clone()))
        .collect();
    let since = aeris_wire::now_ms().saturating_sub(NOWCAST_MAX_AGE_MS);
    // The map works without the rollups: a failed read leaves `nowcast` out.
    let mut current = match s.sink.current_aqi(&ids, since).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "current AQI from the rollups not read");
            Default::default()
        }
    };
    let out: Vec<SensorView> = found
        .into_iter()
        .map(|reading| {
            let nowcast = current.remove(&(reading.device.clone(), reading.sensor.clone()));
            SensorView { reading, nowcast }
        })
        .collect();
    Json(out).into_response()
}

/// How old a rollup hour `/api/sensors` still shows as current: the
/// NowCast needs 2 of the last 3 hours.
const NOWCAST_MAX_AGE_MS: i64 = 3 * 3_600_000;

/// A sensor as `/api/sensors` returns it: the live reading's fields and
/// the current AQI from the rollups (absent without one).
#[derive(serde::Serialize)]
struct SensorView {
    #[serde(flatten)]
    reading: aeris_sink::live::LiveReading,
    #[serde(skip_serializing_if = "Option::is_none")]
    nowcast: Option<aeris_sink::query::CurrentAqi>,
}

#[derive(Debug, Deserialize)]
struct ReadingsParams {
    device: String,
    sensor: String,
    from: Option<String>,
    to: Option<String>,
    limit: Option<i64>,
}

/// Unix milliseconds or an RFC 3339 time.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("bad time {s:?}: {e}"))
        .map(|t| aeris_wire::time::unix_ms(t).unwrap_or(0))
}

/// Times the API accepts: 0001-01-01 to 9999-12-31 UTC, which both sinks
/// (PostgreSQL's timestamptz arithmetic included) represent.
const MIN_TIME_MS: i64 = -62_135_596_800_000;
const MAX_TIME_MS: i64 = 253_402_300_799_999;
/// Without `to`, readings up to this far ahead of now (ingest accepts
/// timestamps up to 5 minutes in the future).
const DEFAULT_AHEAD_MS: i64 = 5 * 60_000;
/// Without `from`, the window reaches this far back from `to`.
const DEFAULT_WINDOW_MS: i64 = 24 * 3_600_000;

/// `[from, to)` of a readings query: given times checked, missing ones
/// defaulted relative to `now_ms`.
fn window(from: Option<&str>, to: Option<&str>, now_ms: i64) -> Result<(i64, i64), String> {
    let checked = |s: &str| {
        let t = parse_time(s)?;
        if (MIN_TIME_MS..=MAX_TIME_MS).contains(&t) {
            Ok(t)
        } else {
            Err(format!(
                "time {s:?} is outside the years 1 to 9999 (Unix ms {MIN_TIME_MS} to {MAX_TIME_MS})"
            ))
        }
    };
    let to = match to {
        Some(t) => checked(t)?,
        None => now_ms.saturating_add(DEFAULT_AHEAD_MS).min(MAX_TIME_MS),
    };
    let from = match from {
        Some(f) => checked(f)?,
        None => to.saturating_sub(DEFAULT_WINDOW_MS).max(MIN_TIME_MS),
    };
    if from > to {
        return Err("`from` is after `to`".into());
    }
    Ok((from, to))
}

async fn readings(State(s): State<ApiState>, Query(p): Query<ReadingsParams>) -> Response {
    let (from_ms, to_ms) = match window(p.from.as_deref(), p.to.as_deref(), aeris_wire::now_ms()) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let q = ReadingsQuery {
        device: p.device,
        sensor: p.sensor,
        from_ms,
        to_ms,
        limit: p.limit.unwrap_or(1000).clamp(1, 10_000),
    };
    match s.sink.readings(&q).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => sink_error(e),
    }
}

/// Per device, its two-channel sensors' disagreement over
/// `rollups.degrading_window`, each marked `degrading` above
/// `rollups.degrading_ratio`. Empty without rollups (or if unread).
async fn channel_report(s: &ApiState) -> BTreeMap<String, Vec<serde_json::Value>> {
    let r = &s.config.rollups;
    let window = i64::try_from(r.degrading_window.as_millis()).unwrap_or(i64::MAX);
    let since = aeris_wire::now_ms().saturating_sub(window);
    let health = match s.sink.channel_health(since).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "channel disagreement from the rollups not read");
            Vec::new()
        }
    };
    let mut out: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for h in health {
        let degrading = h.disagreement_ratio.is_some_and(|x| x > r.degrading_ratio);
        let mut v = serde_json::json!(h);
        v["degrading"] = serde_json::json!(degrading);
        if let Some(obj) = v.as_object_mut() {
            obj.remove("device");
        }
        out.entry(h.device).or_default().push(v);
    }
    out
}

async fn devices(State(s): State<ApiState>) -> Response {
    let devices = match s.sink.devices().await {
        Ok(d) => d,
        Err(e) => return sink_error(e),
    };
    let names: Vec<String> = devices.iter().map(|d| d.device.clone()).collect();
    // Without fleet configuration (the SQLite sink) the list is as before.
    let configs = crate::fleet_config::service::drift_of(s.sink.as_ref(), &names)
        .await
        .unwrap_or_default();
    let mut out = match serde_json::to_value(&devices) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let channels = channel_report(&s).await;
    for d in out.as_array_mut().into_iter().flatten() {
        let name = d.get("device").and_then(|n| n.as_str()).unwrap_or_default();
        let sensors = channels.get(name).cloned().unwrap_or_default();
        if let (Some(c), Some(obj)) = (configs.get(name), d.as_object_mut()) {
            let mut v = serde_json::json!(c);
            v["drift"] = serde_json::json!(c.drift());
            obj.insert("config".into(), v);
        }
        if let Some(obj) = d.as_object_mut() {
            obj.insert("channels".into(), serde_json::Value::Array(sensors));
        }
    }
    Json(out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(bbox: Option<&str>, lat: Option<f64>, lon: Option<f64>, r: Option<f64>) -> AreaParams {
        AreaParams {
            bbox: bbox.map(str::to_owned),
            lat,
            lon,
            radius_m: r,
        }
    }

    #[test]
    fn area_parameters_are_checked() {
        assert_eq!(area(&p(None, None, None, None)), Ok(Area::All));
        assert!(matches!(
            area(&p(Some("6,47,7,48"), None, None, None)),
            Ok(Area::BBox { .. })
        ));
        assert!(area(&p(Some("7,47,6,48"), None, None, None)).is_err());
        assert!(area(&p(Some("6,47,7"), None, None, None)).is_err());
        assert!(area(&p(None, Some(47.0), None, Some(10.0))).is_err());
        assert!(matches!(
            area(&p(None, Some(47.0), Some(6.0), Some(10.0))),
            Ok(Area::Radius { .. })
        ));
        assert_eq!(parse_time("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
    }

    #[test]
    fn the_readings_window_defaults_to_the_last_day_and_refuses_unrepresentable_times() {
        let now = 1_700_000_000_000;
        assert_eq!(
            window(None, None, now),
            Ok((now + 300_000 - 86_400_000, now + 300_000))
        );
        assert_eq!(window(Some("1000"), None, now), Ok((1000, now + 300_000)));
        assert_eq!(window(None, Some("86400000"), now), Ok((0, 86_400_000)));
        assert_eq!(
            window(Some("-62135596800000"), Some("9999-12-31T23:59:59Z"), now),
            Ok((MIN_TIME_MS, MAX_TIME_MS - 999))
        );
        assert!(window(Some("-9223372036854775808"), None, now).is_err());
        assert!(window(None, Some("9223372036854775807"), now).is_err());
        assert!(window(Some("2000"), Some("1000"), now).is_err());
    }
}
