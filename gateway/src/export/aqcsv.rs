//! AQCSV: EPA's Air Quality Comma Separated Values, the AirNow-I exchange
//! format (<https://aqs.epa.gov/aqsweb/documents/AQCSV_Format.html>). One
//! record per site, hour and parameter, 20 fields, no header line:
//!
//! `site,data_status,action_code,datetime,parameter,duration,frequency,
//! value,unit,qc,poc,lat,lon,GISDatum,elev,method_code,mpc,mpc_value,
//! uncertainty,qualifiers`
//!
//! What Aeris writes (`docs/air-quality.md`, "AQCSV export"):
//! - `site`: 12 characters: the code an operator set for the location
//!   (`aeris-gateway locations set --site`: ISO 3166 numeric country and
//!   the 9-digit monitor location code), else `000` (no country) and the
//!   location's API id (migration 0013) as 9 digits; `poc` 1.
//! - `datetime`: the hour's **beginning** in UTC, `YYYYMMDDThhmm+0000`
//!   (AQCSV labels the begin time of the sampling period; so do the
//!   rollups); `duration` 60 (minutes), `frequency` blank (hourly).
//! - `parameter` and `unit`: AQS codes; PM in µg/m³ as stored, gases
//!   converted from the stored µg/m³ at the rollups' reference conditions
//!   (25 °C, 1 atm) to ppm (O3, CO) or ppb (NO2, SO2). PM1 has no AQS
//!   parameter code and is left out.
//! - Only valid hours (75 % of the expected readings): an incomplete hour
//!   is not an hourly value EPA would report. `qc` 0 (valid),
//!   `data_status` 0 (preliminary: nobody certified it).

use std::collections::BTreeMap;
use std::fmt::Write;

use aeris_sink::query::{CatalogSensor, HourRow};
use aeris_wire::units::Reference;

/// AQS parameter code, unit code and the factor from stored ppb (gases)
/// or µg/m³ (PM) to that unit.
pub struct Parameter {
    pub code: &'static str,
    pub unit: &'static str,
    /// `None`: PM, written as stored (µg/m³); `Some(f)`: a gas, ppb × f.
    pub ppb_factor: Option<f64>,
}

/// The AQS codes of the pollutants Aeris stores.
pub fn parameter(pollutant: &str) -> Option<Parameter> {
    let (code, unit, ppb_factor) = match pollutant {
        // 105: µg/m³ at local conditions, PM2.5's FRM/FEM unit.
        "pm25" => ("88101", "105", None),
        // 001: µg/m³ at 25 °C.
        "pm10" => ("81102", "001", None),
        // 007: ppm; 008: ppb.
        "o3" => ("44201", "007", Some(0.001)),
        "co" => ("42101", "007", Some(0.001)),
        "so2" => ("42401", "008", Some(1.0)),
        "no2" => ("42602", "008", Some(1.0)),
        _ => return None,
    };
    Some(Parameter {
        code,
        unit,
        ppb_factor,
    })
}

/// `YYYYMMDDThhmm+0000` of a UTC Unix ms.
pub fn datetime(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    // `2026-05-01T10:00:00Z` -> `20260501T1000+0000`
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!(
        "{}{}{}T{}{}+0000",
        &s[0..4],
        &s[5..7],
        &s[8..10],
        &s[11..13],
        &s[14..16]
    )
}

/// The site code of a location: the one set for it, else `000` and its
/// API id.
pub fn site(place: &CatalogSensor) -> String {
    match &place.site {
        Some(code) => code.clone(),
        None => format!("000{:09}", place.location_id),
    }
}

/// The records of `rows` (valid hours of known pollutants), in the order
/// given. `catalog` supplies each sensor's location id and position.
pub fn write(rows: &[HourRow], catalog: &[CatalogSensor], reference: &Reference) -> String {
    let places: BTreeMap<(&str, &str), &CatalogSensor> = catalog
        .iter()
        .map(|c| ((c.device.as_str(), c.sensor.as_str()), c))
        .collect();
    let mut out = String::new();
    for r in rows.iter().filter(|r| r.valid && r.hour_ms >= 0) {
        let (Some(p), Some(place)) = (
            parameter(&r.pollutant),
            places.get(&(r.device.as_str(), r.sensor.as_str())),
        ) else {
            continue;
        };
        let value = match p.ppb_factor {
            None => Some(r.mean),
            Some(f) => reference
                .ppb_from_ugm3(&r.pollutant, r.mean)
                .map(|ppb| ppb * f),
        };
        let Some(value) = value.filter(|v| v.is_finite()) else {
            continue;
        };
        let coord = |c: Option<f64>| c.map(|c| format!("{c:.6}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "{},0,,{},{},60,,{value:.6},{},0,1,{},{},WGS84,,,,,,",
            site(place),
            datetime(r.hour_ms),
            p.code,
            p.unit,
            coord(place.lat),
            coord(place.lon),
        );
    }
    out
}

/// Reads the hours of `[from_ms, to_ms)` and the catalogue from `sink`
/// and writes them as AQCSV; `Ok(Err(message))` when the range holds more
/// than `max_rows` hours (the caller asks for less).
pub async fn export(
    sink: &dyn aeris_sink::Sink,
    from_ms: i64,
    to_ms: i64,
    max_rows: i64,
) -> Result<Result<String, String>, aeris_sink::SinkError> {
    let q = aeris_sink::query::HoursQuery {
        from_ms,
        to_ms,
        limit: max_rows.saturating_add(1),
        ..Default::default()
    };
    let (rows, found) = sink.hours(&q).await?;
    if rows.len() as i64 > max_rows {
        return Ok(Err(format!(
            "the range holds {found} hourly values, more than {max_rows}: export a shorter range"
        )));
    }
    let catalog = sink.catalog(None, None).await?;
    Ok(Ok(write(&rows, &catalog, &Reference::default())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sites_have_the_formats_aqcsv_names() {
        assert_eq!(datetime(1_700_000_000_000), "20231114T2213+0000");
        assert_eq!(datetime(0), "19700101T0000+0000");
        let mut place = CatalogSensor {
            id: 3,
            location_id: 17,
            device: "d".into(),
            sensor: "s1".into(),
            pollutant: "pm25".into(),
            first_hour_ms: 0,
            last_hour_ms: 0,
            lat: None,
            lon: None,
            site: None,
            utc_offset_min: None,
        };
        assert_eq!(site(&place), "000000000017");
        place.site = Some("840060371103".into());
        assert_eq!(site(&place), "840060371103");
        assert!(parameter("pm1").is_none());
        assert_eq!(parameter("no2").map(|p| p.code), Some("42602"));
    }
}
