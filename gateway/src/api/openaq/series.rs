//! A sensor's values over time, OpenAQ-style: raw `measurements`, `hours`
//! (the rollups as stored) and `days` (computed from the stored hours with
//! `aeris_wire::aqi::hourly::daily_mean`: the mean of the valid hours, a
//! valid day needs 18 of 24; and, under `aeris.daily`, EPA's daily value
//! and index from `aeris_wire::aqi::daily`: the maximum 8-hour average for
//! O3 and CO, the highest hour for NO2 and SO2). `datetime_from` / `datetime_to` (RFC 3339
//! or Unix ms) select `[from, to)` by the period's beginning; without
//! them the last 24 hours (`days`: the last 30 days).
//!
//! Coverage as OpenAQ reports it: `expectedCount` / `observedCount`
//! (readings in an hour; valid hours in a day), the intervals they span,
//! and `percentComplete` = observed / expected × 100.

use aeris_sink::query::{CatalogSensor, HourRow, HoursQuery, ReadingsQuery};
use aeris_wire::aqi::daily::day_rollup;
use aeris_wire::aqi::hourly::{daily_mean, Completeness, HourlyMean, DAY_MS, HOUR_MS};
use aeris_wire::units::Reference;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{
    datetime, envelope, error, find_sensor, local_datetime, page, parameter, ListParams, Page,
    Refusal,
};
use crate::api::{sink_error, window, ApiState};

/// Longest ranges: raw readings (a month) and hours or days (a year).
const MAX_RAW_SPAN_MS: i64 = 31 * DAY_MS;
const MAX_SPAN_MS: i64 = 366 * DAY_MS;

/// `HH:MM:SS` of a duration in ms (hours may exceed 24).
fn hms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn percent(observed: f64, expected: f64) -> f64 {
    if expected <= 0.0 {
        return 0.0;
    }
    (observed / expected * 1000.0).round() / 10.0
}

/// The sensor, its page and its `[from, to)`, or the error response.
async fn request(
    s: &ApiState,
    raw: &str,
    p: &ListParams,
    default_span_ms: i64,
    max_span_ms: i64,
) -> Result<(CatalogSensor, Page, i64, i64), Refusal> {
    let bad = |e: String| Refusal::Status(StatusCode::BAD_REQUEST, e);
    let pg = page(p).map_err(bad)?;
    let now = aeris_wire::now_ms();
    let (mut from, to) = window(p.datetime_from.as_deref(), p.datetime_to.as_deref(), now)
        .map_err(|e| {
            bad(e
                .replace("`from`", "`datetime_from`")
                .replace("`to`", "`datetime_to`"))
        })?;
    if p.datetime_from.is_none() {
        from = to.saturating_sub(default_span_ms);
    }
    if to.saturating_sub(from) > max_span_ms {
        return Err(bad(format!(
            "datetime_from to datetime_to spans more than {} days: ask for less",
            max_span_ms / DAY_MS
        )));
    }
    let c = find_sensor(s, raw).await?;
    Ok((c, pg, from, to))
}

fn period(label: &str, from_ms: i64, to_ms: i64) -> Value {
    json!({
        "label": label,
        "interval": hms(to_ms - from_ms),
        "datetimeFrom": datetime(from_ms),
        "datetimeTo": datetime(to_ms),
    })
}

/// One stored hour, OpenAQ's hour object with Aeris' own fields beside.
fn hour_value(h: &HourRow) -> Value {
    let end = h.hour_ms + HOUR_MS;
    let interval = HOUR_MS / i64::from(h.expected.max(1));
    json!({
        "value": h.mean,
        "flagInfo": { "hasFlags": !h.valid },
        "parameter": parameter(&h.pollutant),
        "period": period("1hour", h.hour_ms, end),
        "coordinates": null,
        "summary": { "min": h.min, "max": h.max, "avg": h.mean,
                     "q02": null, "q25": null, "median": null, "q75": null, "q98": null, "sd": null },
        "coverage": {
            "expectedCount": h.expected,
            "expectedInterval": hms(HOUR_MS),
            "observedCount": h.count,
            "observedInterval": hms(interval * i64::from(h.count)),
            "percentComplete": percent(f64::from(h.count), f64::from(h.expected)),
            "percentCoverage": percent(f64::from(h.count), f64::from(h.expected)),
            "datetimeFrom": datetime(h.hour_ms),
            "datetimeTo": datetime(end),
        },
        "aeris": { "valid": h.valid, "nowcast": h.nowcast, "aqi": h.aqi,
                   "aqiAveraging": h.aqi_averaging },
    })
}

fn hours_query(c: &CatalogSensor, from_ms: i64, to_ms: i64, limit: i64, offset: i64) -> HoursQuery {
    HoursQuery {
        device: Some(c.device.clone()),
        sensor: Some(c.sensor.clone()),
        pollutant: Some(c.pollutant.clone()),
        from_ms,
        to_ms,
        limit,
        offset,
    }
}

pub(super) async fn hours(
    State(s): State<ApiState>,
    Path(raw): Path<String>,
    Query(p): Query<ListParams>,
) -> Response {
    let (c, pg, from, to) = match request(&s, &raw, &p, DAY_MS, MAX_SPAN_MS).await {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    match s
        .sink
        .hours(&hours_query(&c, from, to, pg.limit, pg.offset()))
        .await
    {
        Ok((rows, found)) => envelope(pg, json!(found), rows.iter().map(hour_value).collect()),
        Err(e) => sink_error(e),
    }
}

/// The days from `from`'s midnight to `to`, from the stored hours. A day
/// runs from the location's local midnight (its UTC offset, `aeris-gateway
/// locations set --utc-offset`; UTC when none is set).
pub(super) async fn days(
    State(s): State<ApiState>,
    Path(raw): Path<String>,
    Query(p): Query<ListParams>,
) -> Response {
    let (c, pg, from, to) = match request(&s, &raw, &p, 30 * DAY_MS, MAX_SPAN_MS).await {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let offset = c.utc_offset_min.map_or(0, |m| i64::from(m) * 60_000);
    let day_of = |ms: i64| (ms + offset).div_euclid(DAY_MS);
    let first_day = day_of(from) * DAY_MS - offset;
    // A year of hours fits one read (8,784 rows), with the 7 hours after
    // `to` that the last day's 8-hour averages (O3, CO) reach into.
    let q = hours_query(&c, first_day, to + 7 * HOUR_MS, 9_000, 0);
    let rows = match s.sink.hours(&q).await {
        Ok((rows, _)) => rows,
        Err(e) => return sink_error(e),
    };
    let rules = Completeness::default();
    let means: Vec<HourlyMean> = rows.iter().map(hourly_mean).collect();
    let days: Vec<Value> = rows
        .chunk_by(|a, b| day_of(a.hour_ms) == day_of(b.hour_ms))
        .filter(|day| day[0].hour_ms < to)
        .map(|day| {
            let start = day_of(day[0].hour_ms) * DAY_MS - offset;
            day_value(day, start, &means, &c, &rules)
        })
        .collect();
    let found = days.len();
    let skip = usize::try_from(pg.offset()).unwrap_or(usize::MAX);
    let take = usize::try_from(pg.limit).unwrap_or(0);
    envelope(
        pg,
        json!(found),
        days.into_iter().skip(skip).take(take).collect(),
    )
}

fn hourly_mean(h: &HourRow) -> HourlyMean {
    HourlyMean {
        hour_start_ms: h.hour_ms,
        mean: h.mean,
        min: h.min,
        max: h.max,
        count: h.count,
        expected: h.expected,
        valid: h.valid,
    }
}

/// One day of `c`'s location from its stored hours (`day`: non-empty,
/// one day, beginning at `start`; `all`: every hour read, sorted, for the
/// 8-hour averages reaching past midnight).
fn day_value(
    day: &[HourRow],
    start: i64,
    all: &[HourlyMean],
    c: &CatalogSensor,
    rules: &Completeness,
) -> Value {
    let pollutant = c.pollutant.as_str();
    let when = |ms: i64| local_datetime(ms, c.utc_offset_min);
    let means: Vec<HourlyMean> = day.iter().map(hourly_mean).collect();
    let d = daily_mean(&means, start, rules);
    // EPA's daily value and index: the 24-hour mean for PM, the maximum
    // 8-hour average for O3 and CO, the highest hour for NO2 and SO2.
    let epa = day_rollup(pollutant, all, start, &Reference::default(), rules);
    let aqi = epa.and_then(|e| e.aqi).map(|a| a.aqi);
    let daily = epa.map(|e| {
        json!({ "value": e.value, "averaging": e.averaging.label(), "observed": e.observed,
                "expected": e.expected, "valid": e.valid,
                "aqiAveraging": e.aqi.map(|a| a.averaging.label()) })
    });
    let valid_means = day.iter().filter(|h| h.valid).map(|h| h.mean);
    let min = valid_means
        .clone()
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
    let max = valid_means.fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    json!({
        "value": d.mean,
        "flagInfo": { "hasFlags": !d.valid },
        "parameter": parameter(pollutant),
        "period": {
            "label": "1day",
            "interval": hms(DAY_MS),
            "datetimeFrom": when(start),
            "datetimeTo": when(start + DAY_MS),
        },
        "coordinates": null,
        "summary": { "min": min, "max": max, "avg": d.mean,
                     "q02": null, "q25": null, "median": null, "q75": null, "q98": null, "sd": null },
        "coverage": {
            "expectedCount": 24,
            "expectedInterval": hms(DAY_MS),
            "observedCount": d.valid_hours,
            "observedInterval": hms(i64::from(d.valid_hours) * HOUR_MS),
            "percentComplete": percent(f64::from(d.valid_hours), 24.0),
            "percentCoverage": percent(f64::from(d.valid_hours), 24.0),
            "datetimeFrom": when(start),
            "datetimeTo": when(start + DAY_MS),
        },
        "aeris": { "valid": d.valid, "validHours": d.valid_hours, "aqi": aqi, "daily": daily },
    })
}

/// Raw readings of the sensor's pollutant. Paging reads up to the page's
/// end (at most 10,000 readings) and skips to it.
pub(super) async fn measurements(
    State(s): State<ApiState>,
    Path(raw): Path<String>,
    Query(p): Query<ListParams>,
) -> Response {
    let (c, pg, from, to) = match request(&s, &raw, &p, DAY_MS, MAX_RAW_SPAN_MS).await {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let end = pg.offset().saturating_add(pg.limit);
    if end > 10_000 {
        return error(
            StatusCode::BAD_REQUEST,
            "measurements pages end at the 10,000th reading: narrow datetime_from/datetime_to",
        );
    }
    let q = ReadingsQuery {
        device: c.device.clone(),
        sensor: c.sensor.clone(),
        from_ms: from,
        to_ms: to,
        limit: end,
    };
    let readings = match s.sink.readings(&q).await {
        Ok(r) => r,
        Err(e) => return sink_error(e),
    };
    let results: Vec<Value> = readings
        .iter()
        .filter_map(|r| Some((r, *r.values.get(&c.pollutant)?)))
        .skip(usize::try_from(pg.offset()).unwrap_or(usize::MAX))
        .map(|(r, value)| {
            json!({
                "value": value,
                "flagInfo": { "hasFlags": r.flags != 0 },
                "parameter": parameter(&c.pollutant),
                "period": period("raw", r.ts_ms, r.ts_ms),
                "coordinates": { "latitude": r.lat, "longitude": r.lon },
                "summary": null,
                "coverage": null,
            })
        })
        .collect();
    let shown = pg.offset() + results.len() as i64;
    let found = if readings.len() as i64 == end {
        json!(format!(">{shown}"))
    } else {
        json!(shown)
    };
    envelope(pg, found, results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_percentages() {
        assert_eq!(hms(HOUR_MS), "01:00:00");
        assert_eq!(hms(DAY_MS), "24:00:00");
        assert_eq!(hms(30 * 60_000 + 5_000), "00:30:05");
        assert_eq!(percent(3.0, 6.0), 50.0);
        assert_eq!(percent(19.0, 24.0), 79.2);
        assert_eq!(percent(1.0, 0.0), 0.0);
    }
}
