//! The live view of the fleet: the latest reading of every sensor, a geo
//! index of sensors, a feed of changes and alerts. [`crate::redis`] keeps
//! it in Redis, shared by every gateway; [`MemoryLive`] keeps it in the
//! process when no Redis is configured (the embedded default).
//!
//! Invariant (both implementations): a sensor's latest reading only moves
//! forward in time. A reading not newer than the stored one (a late backlog,
//! a resend) changes nothing and is not fed to subscribers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use aeris_wire::{aqi, Batch};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::SinkError;

/// A sensor's reading as the map sees it. JSON in Redis and on the wire of
/// the server-sent events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveReading {
    /// `<device>/<sensor>`: sensor ids are unique only within a device.
    pub id: String,
    pub device: String,
    pub sensor: String,
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub values: BTreeMap<String, f64>,
    /// US EPA AQI of this one reading's PM2.5 (else PM10), if it has
    /// either: an instant value, not the hourly NowCast AQI (that is
    /// `/api/sensors`' `nowcast`, from the rollups). Stored as `aqi` before
    /// it was renamed; such entries still read.
    #[serde(alias = "aqi")]
    pub aqi_instant: Option<u32>,
}

impl LiveReading {
    /// The newest reading of each sensor in `batches`.
    pub fn newest_of(batches: &[Batch]) -> Vec<LiveReading> {
        let mut newest: HashMap<(&str, &str), &aeris_wire::Reading> = HashMap::new();
        for b in batches {
            for r in &b.readings {
                let key = (b.device.as_str(), r.sensor.as_str());
                match newest.get(&key) {
                    Some(cur) if cur.ts_ms >= r.ts_ms => {}
                    _ => {
                        newest.insert(key, r);
                    }
                }
            }
        }
        newest
            .into_iter()
            .map(|((device, _), r)| LiveReading::new(device, r))
            .collect()
    }

    pub fn new(device: &str, r: &aeris_wire::Reading) -> LiveReading {
        let values: BTreeMap<String, f64> = r
            .values
            .iter()
            .map(|v| (v.quantity.clone(), v.value))
            .collect();
        let aqi_instant = live_aqi(&values);
        LiveReading {
            id: format!("{device}/{}", r.sensor),
            device: device.to_owned(),
            sensor: r.sensor.clone(),
            ts_ms: r.ts_ms,
            lat: r.lat,
            lon: r.lon,
            values,
            aqi_instant,
        }
    }
}

/// The map's AQI: PM2.5's, else PM10's ([`aeris_wire::aqi`], the tables
/// the edge attaches to readings too). A concentration the tables do not
/// read (negative) gives none.
fn live_aqi(values: &BTreeMap<String, f64>) -> Option<u32> {
    let pm25 = values.get("pm25").and_then(|c| aqi::PM25.index(*c));
    pm25.or_else(|| values.get("pm10").and_then(|c| aqi::PM10.index(*c)))
}

/// Where to look for sensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Area {
    All,
    /// West, south, east, north in degrees.
    BBox {
        min_lon: f64,
        min_lat: f64,
        max_lon: f64,
        max_lat: f64,
    },
    Radius {
        lon: f64,
        lat: f64,
        meters: f64,
    },
}

impl Area {
    pub fn contains(&self, lon: f64, lat: f64) -> bool {
        match *self {
            Area::All => true,
            Area::BBox {
                min_lon,
                min_lat,
                max_lon,
                max_lat,
            } => (min_lon..=max_lon).contains(&lon) && (min_lat..=max_lat).contains(&lat),
            Area::Radius {
                lon: clon,
                lat: clat,
                meters,
            } => haversine_m(clon, clat, lon, lat) <= meters,
        }
    }
}

/// Great-circle distance in metres (the sphere Redis' geo commands use).
pub fn haversine_m(lon1: f64, lat1: f64, lon2: f64, lat2: f64) -> f64 {
    const R: f64 = 6_372_797.560_856;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * R * a.sqrt().asin()
}

/// The live view's seam.
#[async_trait::async_trait]
pub trait Live: Send + Sync {
    /// Stores each reading as its sensor's latest if it is newer; returns
    /// how many were newer.
    async fn update(&self, readings: &[LiveReading]) -> Result<u64, SinkError>;
    /// Latest readings of the sensors in `area`.
    async fn search(&self, area: Area) -> Result<Vec<LiveReading>, SinkError>;
    /// Publishes an alert (JSON) to whoever listens.
    async fn alert(&self, json: &str) -> Result<(), SinkError>;
    /// Readings that became their sensor's latest, from now on.
    fn subscribe(&self) -> broadcast::Receiver<LiveReading>;
    fn kind(&self) -> &'static str;
}

/// The in-process live view.
pub struct MemoryLive {
    latest: Mutex<HashMap<String, LiveReading>>,
    feed: broadcast::Sender<LiveReading>,
    alerts: broadcast::Sender<String>,
}

impl Default for MemoryLive {
    fn default() -> Self {
        MemoryLive {
            latest: Mutex::new(HashMap::new()),
            feed: broadcast::channel(4096).0,
            alerts: broadcast::channel(256).0,
        }
    }
}

impl MemoryLive {
    pub fn alerts(&self) -> broadcast::Receiver<String> {
        self.alerts.subscribe()
    }
}

#[async_trait::async_trait]
impl Live for MemoryLive {
    async fn update(&self, readings: &[LiveReading]) -> Result<u64, SinkError> {
        let mut newer = Vec::new();
        if let Ok(mut latest) = self.latest.lock() {
            for r in readings {
                if latest.get(&r.id).is_none_or(|cur| cur.ts_ms < r.ts_ms) {
                    latest.insert(r.id.clone(), r.clone());
                    newer.push(r.clone());
                }
            }
        }
        let n = newer.len() as u64;
        for r in newer {
            let _ = self.feed.send(r);
        }
        Ok(n)
    }

    async fn search(&self, area: Area) -> Result<Vec<LiveReading>, SinkError> {
        let latest = self
            .latest
            .lock()
            .map_err(|_| SinkError::Unavailable("live view lock poisoned".into()))?;
        let mut found: Vec<_> = latest
            .values()
            .filter(|r| area.contains(r.lon, r.lat))
            .cloned()
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    async fn alert(&self, json: &str) -> Result<(), SinkError> {
        let _ = self.alerts.send(json.to_owned());
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<LiveReading> {
        self.feed.subscribe()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aqi_of(quantity: &str, c: f64) -> Option<u32> {
        live_aqi(&BTreeMap::from([(quantity.to_owned(), c)]))
    }

    #[test]
    fn aqi_follows_the_epa_breakpoints() {
        let aqi_pm25 = |c| aqi_of("pm25", c).unwrap();
        let aqi_pm10 = |c| aqi_of("pm10", c).unwrap();
        assert_eq!(aqi_pm25(0.0), 0);
        assert_eq!(aqi_pm25(9.0), 50);
        assert_eq!(aqi_pm25(35.4), 100);
        assert_eq!(aqi_pm25(200.0), 275);
        assert_eq!(aqi_pm25(5000.0), 500);
        assert_eq!(aqi_pm10(54.0), 50);
    }

    #[tokio::test]
    async fn latest_never_moves_back_in_time() {
        let live = MemoryLive::default();
        let r = |ts, pm25| LiveReading {
            id: "d/s".into(),
            device: "d".into(),
            sensor: "s".into(),
            ts_ms: ts,
            lat: 1.0,
            lon: 2.0,
            values: [("pm25".to_owned(), pm25)].into(),
            aqi_instant: None,
        };
        assert_eq!(live.update(&[r(10, 1.0)]).await.unwrap(), 1);
        assert_eq!(live.update(&[r(5, 2.0)]).await.unwrap(), 0);
        let got = live.search(Area::All).await.unwrap();
        assert_eq!(got[0].ts_ms, 10);
    }

    #[test]
    fn radius_and_box_contain_what_they_should() {
        let b = Area::BBox {
            min_lon: 6.0,
            min_lat: 47.0,
            max_lon: 7.0,
            max_lat: 48.0,
        };
        assert!(b.contains(6.5, 47.5) && !b.contains(7.5, 47.5));
        let r = Area::Radius {
            lon: 6.0,
            lat: 47.0,
            meters: 20_000.0,
        };
        assert!(r.contains(6.2, 47.0) && !r.contains(6.3, 47.0));
    }
}
