//! Simulated sensors publishing flat JSON readings to a broker.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// One reading as a sensor publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorReading {
    pub sensor: String,
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub pm25: f64,
}

impl SensorReading {
    pub fn json(&self) -> String {
        serde_json::json!({
            "ts": self.ts_ms as f64 / 1000.0,
            "lat": self.lat,
            "lon": self.lon,
            "pm25": self.pm25,
        })
        .to_string()
    }
}

/// `n` readings from `sensors` sensors, each sensor at its own position,
/// one second apart per sensor, ending an hour before now.
pub fn readings(n: usize, sensors: usize) -> Vec<SensorReading> {
    let start = crate::now_ms() - 3_600_000 - n as i64 * 1000;
    (0..n)
        .map(|i| {
            let s = i % sensors;
            SensorReading {
                sensor: format!("sensor-{s:02}"),
                ts_ms: start + i as i64 * 1000 + 123,
                lat: 47.0 + s as f64 * 0.137_5,
                lon: 6.0 + s as f64 * 0.281_25,
                pm25: (i % 400) as f64 / 4.0,
            }
        })
        .collect()
}

/// A sensor-side MQTT publisher; its event loop runs in a background task.
pub struct Publisher {
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(port: u16) -> Publisher {
        let mut opts =
            MqttOptions::new(format!("sim-{:08x}", fastrand::u32(..)), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(opts, 1024);
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Disconnect)) => break,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher { client, task }
    }

    pub async fn publish(&self, r: &SensorReading) {
        self.client
            .publish(
                format!("sensors/{}/air", r.sensor),
                QoS::AtLeastOnce,
                false,
                r.json(),
            )
            .await
            .expect("queue sensor publish");
    }

    pub async fn publish_raw(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queue sensor publish");
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
