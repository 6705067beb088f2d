//! OpenAQ v3-style read endpoints (<https://docs.openaq.org>), next to
//! Aeris' own, for the tools that already speak OpenAQ:
//!
//! - `GET /v3/locations`, `GET /v3/locations/{id}`: a location is one
//!   sensor of one device (one position), with its `sensors`.
//! - `GET /v3/sensors/{id}`: an OpenAQ sensor measures one parameter: here
//!   one pollutant of one location.
//! - `GET /v3/sensors/{id}/measurements`, `/hours`, `/days` ([`series`]):
//!   raw readings, the hourly rollups, and daily means from the rollups
//!   (18 of 24 valid hours, `aeris_wire::aqi::hourly::daily_mean`).
//!
//! Responses carry OpenAQ's envelope `{"meta": {name, website, page,
//! limit, found}, "results": [...]}`; lists take `limit` (1..=1000,
//! default 100) and `page` (from 1). Ids are the stable integers of
//! migration 0013. Times are UTC (`datetime.local` too: Aeris knows no
//! location's time zone). PostGIS only (501 on SQLite).

mod series;

use aeris_sink::query::CatalogSensor;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{error, sink_error, ApiState};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v3/locations", get(locations))
        .route("/v3/locations/{id}", get(location))
        .route("/v3/sensors/{id}", get(sensor))
        .route("/v3/sensors/{id}/measurements", get(series::measurements))
        .route("/v3/sensors/{id}/hours", get(series::hours))
        .route("/v3/sensors/{id}/days", get(series::days))
}

/// OpenAQ's largest page.
const MAX_LIMIT: i64 = 1000;

/// `limit`, `page` and the time range of a request, as given.
#[derive(Debug, Deserialize, Default)]
pub(super) struct ListParams {
    limit: Option<String>,
    page: Option<String>,
    datetime_from: Option<String>,
    datetime_to: Option<String>,
}

/// A page: `limit` rows from `offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Page {
    limit: i64,
    page: i64,
}

impl Page {
    fn offset(&self) -> i64 {
        (self.page - 1).saturating_mul(self.limit)
    }
}

fn page(p: &ListParams) -> Result<Page, String> {
    let num = |v: &Option<String>, name: &str, default: i64, max: i64| match v {
        None => Ok(default),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "`{name}` must be an integer from 1 to {max}, not {s:?}"
            )),
        },
    };
    Ok(Page {
        limit: num(&p.limit, "limit", 100, MAX_LIMIT)?,
        page: num(&p.page, "page", 1, 1_000_000)?,
    })
}

/// Why a request is not answered: a status with a message, or the
/// sink's error (kept small: `Response` is too large to return in `Err`).
pub(super) enum Refusal {
    Status(StatusCode, String),
    Sink(aeris_sink::SinkError),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Status(code, message) => error(code, message),
            Refusal::Sink(e) => sink_error(e),
        }
    }
}

fn id(raw: &str, what: &str) -> Result<i64, Refusal> {
    raw.parse::<i64>().map_err(|_| {
        Refusal::Status(
            StatusCode::BAD_REQUEST,
            format!("{what} id must be an integer, not {raw:?}"),
        )
    })
}

/// OpenAQ's envelope.
fn envelope(page: Page, found: Value, results: Vec<Value>) -> Response {
    Json(json!({
        "meta": {
            "name": "aeris-openaq-v3",
            "website": "/",
            "page": page.page,
            "limit": page.limit,
            "found": found,
        },
        "results": results,
    }))
    .into_response()
}

/// `{"utc": ..., "local": ...}` of a Unix ms (both UTC).
fn datetime(ms: i64) -> Value {
    local_datetime(ms, None)
}

/// OpenAQ's `{utc, local}` of a time at a location whose local standard
/// time is `offset_min` from UTC (`None`: UTC).
fn local_datetime(ms: i64, offset_min: Option<i32>) -> Value {
    let rfc = |ms: i64| {
        let t = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        humantime::format_rfc3339_seconds(t).to_string()
    };
    let utc = rfc(ms);
    let off = offset_min.unwrap_or(0);
    let shifted = rfc(ms + i64::from(off) * 60_000);
    let local = shifted.replace('Z', &crate::locations::format_offset(off));
    json!({ "utc": utc, "local": local })
}

/// OpenAQ's `timezone` of a location: an IANA name for UTC or a whole-hour
/// offset (`Etc/GMT-8` is UTC+8: the POSIX sign), else the offset itself.
fn timezone(offset_min: Option<i32>) -> String {
    match offset_min {
        None | Some(0) => "UTC".into(),
        Some(m) if m % 60 == 0 => format!("Etc/GMT{:+}", -m / 60),
        Some(m) => format!("UTC{}", crate::locations::format_offset(m)),
    }
}

/// OpenAQ's parameter object; ids as OpenAQ's `/v3/parameters` gives
/// them for the µg/m³ forms (Aeris stores every pollutant in µg/m³).
fn parameter(pollutant: &str) -> Value {
    let (id, display) = match pollutant {
        "pm10" => (1, "PM10"),
        "pm25" => (2, "PM2.5"),
        "o3" => (3, "O₃ mass"),
        "co" => (4, "CO mass"),
        "no2" => (5, "NO₂ mass"),
        "so2" => (6, "SO₂ mass"),
        "pm1" => (19, "PM1"),
        _ => (0, pollutant),
    };
    json!({ "id": id, "name": pollutant, "units": "µg/m³", "displayName": display })
}

fn sensor_brief(c: &CatalogSensor) -> Value {
    json!({
        "id": c.id,
        "name": format!("{} µg/m³", c.pollutant),
        "parameter": parameter(&c.pollutant),
    })
}

fn coordinates(c: &CatalogSensor) -> Value {
    match (c.lat, c.lon) {
        (Some(lat), Some(lon)) => json!({ "latitude": lat, "longitude": lon }),
        _ => Value::Null,
    }
}

/// The locations of a catalogue (sorted by location id), each with its
/// sensors.
fn location_values(catalog: &[CatalogSensor]) -> Vec<Value> {
    catalog
        .chunk_by(|a, b| a.location_id == b.location_id)
        .map(|sensors| {
            let c = &sensors[0];
            let first = sensors.iter().map(|s| s.first_hour_ms).min().unwrap_or(0);
            let last = sensors.iter().map(|s| s.last_hour_ms).max().unwrap_or(0);
            let bounds = match (c.lat, c.lon) {
                (Some(lat), Some(lon)) => json!([lon, lat, lon, lat]),
                _ => Value::Null,
            };
            json!({
                "id": c.location_id,
                "name": format!("{}/{}", c.device, c.sensor),
                "locality": null,
                "timezone": timezone(c.utc_offset_min),
                "country": null,
                "owner": null,
                "provider": { "id": 0, "name": "aeris" },
                "isMobile": false,
                "isMonitor": false,
                "instruments": [],
                "sensors": sensors.iter().map(sensor_brief).collect::<Vec<_>>(),
                "coordinates": coordinates(c),
                "bounds": bounds,
                "distance": null,
                "datetimeFirst": datetime(first),
                "datetimeLast": datetime(last + aeris_wire::aqi::hourly::HOUR_MS),
                "aeris": { "device": c.device, "sensor": c.sensor, "site": c.site,
                           "utcOffset": c.utc_offset_min.map(crate::locations::format_offset) },
            })
        })
        .collect()
}

async fn locations(State(s): State<ApiState>, Query(p): Query<ListParams>) -> Response {
    let page = match page(&p) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let catalog = match s.sink.catalog(None, None).await {
        Ok(c) => c,
        Err(e) => return sink_error(e),
    };
    let all = location_values(&catalog);
    let found = all.len();
    let skip = usize::try_from(page.offset()).unwrap_or(usize::MAX);
    let take = usize::try_from(page.limit).unwrap_or(0);
    let results = all.into_iter().skip(skip).take(take).collect();
    envelope(page, json!(found), results)
}

async fn location(State(s): State<ApiState>, Path(raw): Path<String>) -> Response {
    let location = match id(&raw, "location") {
        Ok(i) => i,
        Err(r) => return r.into_response(),
    };
    match s.sink.catalog(None, Some(location)).await {
        Ok(c) if c.is_empty() => error(
            StatusCode::NOT_FOUND,
            format!("no location with id {location}"),
        ),
        Ok(c) => envelope(
            Page {
                limit: 100,
                page: 1,
            },
            json!(1),
            location_values(&c),
        ),
        Err(e) => sink_error(e),
    }
}

/// The catalogue entry of sensor `raw`, or the response to give instead.
async fn find_sensor(s: &ApiState, raw: &str) -> Result<CatalogSensor, Refusal> {
    let sensor = id(raw, "sensor")?;
    match s.sink.catalog(Some(sensor), None).await {
        Ok(mut c) if !c.is_empty() => Ok(c.remove(0)),
        Ok(_) => Err(Refusal::Status(
            StatusCode::NOT_FOUND,
            format!("no sensor with id {sensor}"),
        )),
        Err(e) => Err(Refusal::Sink(e)),
    }
}

async fn sensor(State(s): State<ApiState>, Path(raw): Path<String>) -> Response {
    let c = match find_sensor(&s, &raw).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let mut v = sensor_brief(&c);
    v["datetimeFirst"] = datetime(c.first_hour_ms);
    v["datetimeLast"] = datetime(c.last_hour_ms + aeris_wire::aqi::hourly::HOUR_MS);
    v["coverage"] = Value::Null;
    v["latest"] = Value::Null;
    v["summary"] = Value::Null;
    v["aeris"] = json!({ "location": c.location_id, "device": c.device, "sensor": c.sensor });
    envelope(
        Page {
            limit: 100,
            page: 1,
        },
        json!(1),
        vec![v],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(limit: Option<&str>, page: Option<&str>) -> ListParams {
        ListParams {
            limit: limit.map(str::to_owned),
            page: page.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn limit_and_page_are_checked() {
        assert_eq!(
            page(&p(None, None)),
            Ok(Page {
                limit: 100,
                page: 1
            })
        );
        assert_eq!(
            page(&p(Some("1000"), Some("3"))).map(|p| p.offset()),
            Ok(2000)
        );
        for (l, g) in [
            ("0", "1"),
            ("1001", "1"),
            ("x", "1"),
            ("10", "0"),
            ("10", "-2"),
        ] {
            assert!(page(&p(Some(l), Some(g))).is_err(), "{l} {g}");
        }
    }

    #[test]
    fn datetimes_are_utc_in_both_forms() {
        let d = datetime(1_700_000_000_000);
        assert_eq!(d["utc"], "2023-11-14T22:13:20Z");
        assert_eq!(d["local"], "2023-11-14T22:13:20+00:00");
        let beijing = local_datetime(1_700_000_000_000, Some(480));
        assert_eq!(beijing["utc"], "2023-11-14T22:13:20Z");
        assert_eq!(beijing["local"], "2023-11-15T06:13:20+08:00");
        let kathmandu = local_datetime(1_700_000_000_000, Some(345));
        assert_eq!(kathmandu["local"], "2023-11-15T03:58:20+05:45");
        assert_eq!(timezone(Some(480)), "Etc/GMT-8");
        assert_eq!(timezone(Some(-300)), "Etc/GMT+5");
        assert_eq!(timezone(Some(345)), "UTC+05:45");
        assert_eq!(timezone(None), "UTC");
    }
}
