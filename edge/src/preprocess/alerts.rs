//! Local events from the agent's own hourly AQI ([`super::local_aqi`]):
//! when a sensor's index of its last complete hour moves into another
//! category (Good, Moderate, ...), one `up/event` of kind `Alert`, sent
//! while the board is offline too (events are held and published in order
//! by the uplink). The same numbers as the cloud's rollups, from the same
//! code; the cloud stays the source of truth once late data arrives.
//!
//! Invariants: the first hour a sensor has an index sets its category
//! without an event; a withheld hour (too few valid hours) changes nothing;
//! at most one event per sensor and closed hour.

use std::collections::HashMap;

use aeris_wire::aqi::table::category;
use aeris_wire::{Event, EventKind};
use tokio::sync::mpsc::UnboundedSender;

use super::HourAqi;

/// Each sensor's last category, and where changes go.
#[derive(Debug)]
pub struct CategoryAlerts {
    device: String,
    tx: UnboundedSender<Event>,
    last: HashMap<String, &'static str>,
}

impl CategoryAlerts {
    pub fn new(device: String, tx: UnboundedSender<Event>) -> CategoryAlerts {
        CategoryAlerts {
            device,
            tx,
            last: HashMap::new(),
        }
    }

    /// Sends the event for `hour` if its category differs from the
    /// sensor's last one; returns whether it did.
    pub fn observe(&mut self, hour: &HourAqi) -> bool {
        let Some(event) = self.change(hour) else {
            return false;
        };
        // The uplink has ended only when the agent is stopping.
        self.tx.send(event).is_ok()
    }

    /// The event `hour` causes, remembering its category.
    fn change(&mut self, hour: &HourAqi) -> Option<Event> {
        let aqi = hour.aqi?;
        let now = category(aqi.aqi);
        let before = self.last.insert(hour.sensor.clone(), now)?;
        (before != now).then(|| Event {
            device: self.device.clone(),
            ts_ms: hour.hour_ms + aeris_wire::aqi::hourly::HOUR_MS,
            kind: EventKind::Alert,
            message: format!(
                "sensor {}: AQI {} {} ({}, {}) for the hour from {} ms, was {}",
                hour.sensor,
                aqi.aqi,
                now,
                aqi.pollutant.quantity(),
                aqi.averaging.label(),
                hour.hour_ms,
                before
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use aeris_wire::aqi::averaging::{Averaging, Pollutant, PollutantAqi};

    use super::*;

    fn hour(sensor: &str, h: i64, aqi: Option<u32>) -> HourAqi {
        HourAqi {
            sensor: sensor.into(),
            hour_ms: h * 3_600_000,
            aqi: aqi.map(|aqi| PollutantAqi {
                pollutant: Pollutant::Pm25,
                aqi,
                averaging: Averaging::NowCast,
            }),
            nowcast_pm25: None,
        }
    }

    #[test]
    fn only_a_change_of_category_is_an_event() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut alerts = CategoryAlerts::new("dev".into(), tx);
        let sent: Vec<bool> = [
            hour("s1", 0, Some(40)),  // first: sets Good
            hour("s1", 1, Some(50)),  // still Good
            hour("s1", 2, None),      // withheld: nothing
            hour("s2", 2, Some(160)), // another sensor's first
            hour("s1", 3, Some(51)),  // Good → Moderate
            hour("s1", 4, Some(157)), // Moderate → Unhealthy
            hour("s1", 5, Some(155)), // still Unhealthy
        ]
        .iter()
        .map(|h| alerts.observe(h))
        .collect();
        assert_eq!(sent, [false, false, false, false, true, true, false]);
        let first = rx.try_recv().unwrap();
        assert_eq!(first.kind, EventKind::Alert);
        assert_eq!(first.ts_ms, 4 * 3_600_000);
        assert!(
            first.message.contains("AQI 51 Moderate"),
            "{}",
            first.message
        );
        assert!(first.message.ends_with("was Good"), "{}", first.message);
        let second = rx.try_recv().unwrap();
        assert!(
            second.message.contains("Unhealthy (pm25, nowcast)"),
            "{}",
            second.message
        );
        assert!(rx.try_recv().is_err());
    }
}
