//! Simulated sensors replaying the shared data sets with their original
//! timestamps and real positions:
//! - 70 German rural background stations, daily PM10 1998–2009
//!   (`de_rural_pm10_daily.csv` + `de_rural_pm10_stations.csv`), stamped at
//!   noon UTC of their day;
//! - the Beijing US-embassy monitor, hourly PM2.5 with weather 2010–2014
//!   (`beijing_pm25_hourly.csv`, local time UTC+8; `NA` PM2.5 is left out of
//!   that hour's message, the weather still goes).
//!
//! Both sets start together at simulated time zero and run at `speedup`
//! times real time (or as fast as the broker takes them).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};

/// One sensor message of the replay.
#[derive(Debug, Clone)]
pub struct Message {
    /// Offset from its data set's first timestamp, ms (the replay clock).
    pub offset_ms: i64,
    pub sensor: String,
    pub payload: String,
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Howard Hinnant's algorithm: days since 1970-01-01 of a proleptic
    // Gregorian date.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn german(dir: &Path) -> anyhow::Result<Vec<(i64, Message)>> {
    let mut stations = HashMap::new();
    for (i, line) in read(&dir.join("de_rural_pm10_stations.csv"))?
        .lines()
        .enumerate()
        .skip(1)
    {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(id), Some(lon), Some(lat)) = (f.first(), f.get(1), f.get(2)) else {
            bail!(
                "de_rural_pm10_stations.csv line {}: expected station,lon,lat",
                i + 1
            );
        };
        stations.insert(id.to_string(), (lon.parse::<f64>()?, lat.parse::<f64>()?));
    }
    let mut out = Vec::new();
    for (i, line) in read(&dir.join("de_rural_pm10_daily.csv"))?
        .lines()
        .enumerate()
        .skip(1)
    {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(id), Some(date), Some(pm10)) = (f.first(), f.get(1), f.get(2)) else {
            bail!(
                "de_rural_pm10_daily.csv line {}: expected station,date,PM10",
                i + 1
            );
        };
        let Some(&(lon, lat)) = stations.get(*id) else {
            continue;
        };
        let Ok(pm10) = pm10.parse::<f64>() else {
            continue;
        };
        let ymd: Vec<i64> = date.split('-').filter_map(|p| p.parse().ok()).collect();
        let [y, m, d] = ymd[..] else {
            bail!("de_rural_pm10_daily.csv line {}: bad date {date}", i + 1);
        };
        let ts_ms = (days_from_civil(y, m, d) * 86_400 + 12 * 3600) * 1000;
        let payload = format!(
            r#"{{"ts":{},"pm10":{pm10},"lat":{lat},"lon":{lon}}}"#,
            ts_ms / 1000
        );
        out.push((
            ts_ms,
            Message {
                offset_ms: 0,
                sensor: id.to_string(),
                payload,
            },
        ));
    }
    Ok(out)
}

fn beijing(dir: &Path) -> anyhow::Result<Vec<(i64, Message)>> {
    const SENSOR: &str = "CN-beijing-us-embassy";
    let mut out = Vec::new();
    for (i, line) in read(&dir.join("beijing_pm25_hourly.csv"))?
        .lines()
        .enumerate()
        .skip(1)
    {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 13 {
            bail!(
                "beijing_pm25_hourly.csv line {}: expected 13 columns",
                i + 1
            );
        }
        let n = |k: usize| f[k].parse::<f64>().ok();
        let (Some(y), Some(m), Some(d), Some(h)) = (n(1), n(2), n(3), n(4)) else {
            bail!("beijing_pm25_hourly.csv line {}: bad date", i + 1);
        };
        let local_s = days_from_civil(y as i64, m as i64, d as i64) * 86_400 + h as i64 * 3600;
        let ts_ms = (local_s - 8 * 3600) * 1000;
        let mut fields = vec![format!(r#""ts":{}"#, ts_ms / 1000)];
        if let Some(pm25) = n(5) {
            fields.push(format!(r#""pm25":{pm25}"#));
        }
        for (k, name) in [(6, "dewp"), (7, "temp"), (8, "pres"), (10, "iws")] {
            if let Some(v) = n(k) {
                fields.push(format!(r#""{name}":{v}"#));
            }
        }
        fields.push(r#""lat":39.954,"lon":116.468"#.to_owned());
        let payload = format!("{{{}}}", fields.join(","));
        out.push((
            ts_ms,
            Message {
                offset_ms: 0,
                sensor: SENSOR.to_owned(),
                payload,
            },
        ));
    }
    Ok(out)
}

/// Both data sets merged on the replay clock.
pub fn load(dir: &Path) -> anyhow::Result<Vec<Message>> {
    let mut all = Vec::new();
    for mut set in [german(dir)?, beijing(dir)?] {
        set.sort_by_key(|(ts, _)| *ts);
        let t0 = set.first().map(|(ts, _)| *ts).unwrap_or(0);
        all.extend(set.into_iter().map(|(ts, mut m)| {
            m.offset_ms = ts - t0;
            m
        }));
    }
    all.sort_by_key(|m| m.offset_ms);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2014, 12, 31), 16_435);
    }

    #[test]
    fn loads_both_shared_data_sets() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
        let msgs = load(&dir).unwrap();
        let beijing = msgs.iter().filter(|m| m.sensor.starts_with("CN-")).count();
        assert_eq!(beijing, 43_824);
        assert_eq!(msgs.len() - beijing, 149_151);
        let sensors: std::collections::HashSet<_> = msgs.iter().map(|m| &m.sensor).collect();
        assert_eq!(sensors.len(), 71);
        assert!(msgs.windows(2).all(|w| w[0].offset_ms <= w[1].offset_ms));
        // 2010-01-01 00:00 Beijing time is 2009-12-31 16:00 UTC.
        let first = msgs.iter().find(|m| m.sensor.starts_with("CN-")).unwrap();
        assert!(
            first.payload.starts_with(r#"{"ts":1262275200,"dewp""#),
            "{}",
            first.payload
        );
    }
}
