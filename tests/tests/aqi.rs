//! The edge and the cloud give the same AQI for every concentration near
//! an EPA breakpoint.
//!
//! Both call [`aeris_wire::aqi`] now; this test guards the two call sites
//! (the agent's preprocessing, which attaches `aqi_<pollutant>` to a
//! reading, and the live map's `LiveReading::aqi`) against drifting apart
//! again, and checks both against EPA's rules worked in integers: truncate
//! the concentration to the table's decimals, find the row, Equation 1,
//! round half up.

use std::time::Duration;

use aeris_edge::config::PreprocessConfig;
use aeris_edge::preprocess::units::Reference;
use aeris_edge::preprocess::Preprocessor;
use aeris_sink::live::LiveReading;
use aeris_wire::aqi::{Table, TABLES};
use aeris_wire::{Reading, Value};

/// Fractions of one truncation step added to a truncated concentration:
/// at it, just above it, and just below the next one.
const FRACTIONS: [f64; 4] = [0.0, 0.01, 0.5, 0.99];

fn reading(quantity: &str, value: f64) -> Reading {
    Reading {
        sensor: "s1".into(),
        ts_ms: 1_700_000_000_000,
        lat: 1.0,
        lon: 2.0,
        flags: 0,
        values: vec![Value {
            quantity: quantity.into(),
            value,
        }],
    }
}

/// The index the agent attaches: `aqi_<quantity>` after preprocessing a
/// reading whose value is `concentration` in the table's unit (gases go in
/// as µg/m³, the agent's canonical unit).
fn edge_aqi(t: &Table, concentration: f64) -> Option<u32> {
    let config = PreprocessConfig {
        aqi: true,
        spike_ratio: 0.0,
        stuck_count: 0,
        window: Duration::ZERO,
        ..PreprocessConfig::default()
    };
    let r = Reference::default();
    let canonical = match t.quantity {
        "pm25" | "pm10" => concentration,
        "no2" | "so2" => r.ugm3_from_ppb(t.quantity, concentration)?,
        _ => r.ugm3_from_ppb(t.quantity, concentration * 1000.0)?,
    };
    let mut reading = reading(t.quantity, canonical);
    Preprocessor::new(config).process(&mut reading);
    let name = format!("aqi_{}", t.quantity);
    let v = reading.values.iter().find(|v| v.quantity == name)?;
    Some(v.value as u32)
}

/// The index the live map shows for a reading with only this pollutant
/// (it reads PM2.5, else PM10).
fn cloud_aqi(t: &Table, concentration: f64) -> Option<u32> {
    LiveReading::new("dev-1", &reading(t.quantity, concentration)).aqi_instant
}

/// EPA's index of a concentration already truncated to `c` (scaled).
fn expected(t: &Table, c: i64) -> u32 {
    let &(_, top_c, _, top_i) = t.rows.last().unwrap();
    if c > top_c {
        return top_i;
    }
    let &(clo, chi, ilo, ihi) = t.rows.iter().find(|r| r.0 <= c && c <= r.1).unwrap();
    if chi == clo {
        return ilo;
    }
    // Equation 1 rounded half up, in integers: (2a + b) / 2b.
    let (a, b) = (i64::from(ihi - ilo) * (c - clo), chi - clo);
    ilo + ((2 * a + b) / (2 * b)) as u32
}

/// Every truncated concentration at, one below and one above each
/// breakpoint of `t`, and one past the top of the table.
fn truncated_points(t: &Table) -> Vec<i64> {
    let mut out: Vec<i64> = t
        .rows
        .iter()
        .flat_map(|&(lo, hi, _, _)| [lo - 1, lo, lo + 1, hi - 1, hi, hi + 1])
        .filter(|c| *c >= 0)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[test]
fn edge_and_cloud_agree_with_epa_at_every_breakpoint() {
    let mut checked = 0;
    for t in TABLES {
        let scale = 10f64.powi(t.decimals as i32);
        for c in truncated_points(t) {
            let want = expected(t, c);
            for f in FRACTIONS {
                let concentration = (c as f64 + f) / scale;
                let what = format!("{} {concentration} (truncated {c})", t.quantity);
                assert_eq!(t.index(concentration), Some(want), "table: {what}");
                assert_eq!(edge_aqi(t, concentration), Some(want), "edge: {what}");
                if matches!(t.quantity, "pm25" | "pm10") {
                    assert_eq!(cloud_aqi(t, concentration), Some(want), "cloud: {what}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 500, "{checked} points");
}

#[test]
fn neither_side_gives_an_index_for_a_negative_concentration() {
    for t in TABLES {
        assert_eq!(edge_aqi(t, -0.1), None, "edge {}", t.quantity);
    }
    let pm25 = TABLES.iter().find(|t| t.quantity == "pm25").unwrap();
    assert_eq!(cloud_aqi(pm25, -0.1), None);
}
