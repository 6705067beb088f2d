//! A fake device speaking the wire protocol directly to the cloud broker:
//! publishes batches and statuses, and records the acks it gets. For tests
//! of the gateway alone, where the edge agent would only add noise.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aeris_wire::{encode, Ack, Batch, Command, DeviceState, Reading, Status, Topics, Value};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};

pub struct FakeDevice {
    pub id: String,
    client: AsyncClient,
    acks: Arc<Mutex<Vec<Ack>>>,
    commands: Arc<Mutex<Vec<Command>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeDevice {
    pub async fn connect(port: u16, id: &str) -> FakeDevice {
        Self::connect_as(port, id, None).await
    }

    /// Connects with a broker login (`user`, `password`).
    pub async fn connect_as(port: u16, id: &str, login: Option<(&str, &str)>) -> FakeDevice {
        let mut opts =
            MqttOptions::new(format!("{id}-{:08x}", fastrand::u32(..)), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(32 << 20, 32 << 20);
        if let Some((u, p)) = login {
            opts.set_credentials(u, p);
        }
        let (client, mut events) = AsyncClient::new(opts, 1024);
        let acks = Arc::new(Mutex::new(Vec::new()));
        let commands = Arc::new(Mutex::new(Vec::new()));
        let (sink, cmds, c) = (acks.clone(), commands.clone(), client.clone());
        let filters: Vec<SubscribeFilter> = [Topics::default().ack(id), Topics::default().cmd(id)]
            .into_iter()
            .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce))
            .collect();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.subscribe_many(filters.clone()).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic.ends_with("/down/cmd") {
                            if let Ok(cmd) = aeris_wire::decode::<Command>(&p.payload) {
                                if let Ok(mut c) = cmds.lock() {
                                    c.push(cmd);
                                }
                            }
                        } else if let Ok(ack) = aeris_wire::decode::<Ack>(&p.payload) {
                            if let Ok(mut a) = sink.lock() {
                                a.push(ack);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), ready_rx).await;
        FakeDevice {
            id: id.to_owned(),
            client,
            acks,
            commands,
            task,
        }
    }

    /// Commands received on the device's `down/cmd`, oldest first.
    pub fn commands(&self) -> Vec<Command> {
        self.commands.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Publishes raw bytes on a topic (QoS 1).
    pub async fn publish(&self, topic: String, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queue publish");
    }

    pub async fn send(&self, batch: &Batch) {
        self.publish(Topics::default().batch(&batch.device), encode(batch))
            .await;
    }

    pub async fn send_status(&self, status: &Status) {
        self.client
            .publish(
                Topics::default().status(&status.device),
                QoS::AtLeastOnce,
                true,
                encode(status),
            )
            .await
            .expect("queue status");
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Waits until an ack covers `last_seq` of this device.
    pub async fn wait_acked(&self, last_seq: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.acks().iter().any(|a| a.last_seq == last_seq) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for FakeDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reading of `sensor` with one pm25 value.
pub fn reading(sensor: &str, ts_ms: i64, lat: f64, lon: f64, pm25: f64) -> Reading {
    Reading {
        sensor: sensor.into(),
        ts_ms,
        lat,
        lon,
        flags: 0,
        values: vec![Value {
            quantity: "pm25".into(),
            value: pm25,
        }],
    }
}

/// A status with the given data debt.
pub fn status(device: &str, last_seq: u64, queued: u64) -> Status {
    Status {
        device: device.into(),
        boot_id: 7,
        ts_ms: crate::now_ms(),
        state: DeviceState::Online,
        agent_version: "0.1.0-test".into(),
        last_seq,
        queued_readings: queued,
        queued_bytes: queued * 60,
        oldest_unsent_ms: (queued > 0).then(|| crate::now_ms() - 60_000),
        losses: vec![aeris_wire::Loss {
            reason: "evicted".into(),
            count: 3,
        }],
        models: vec![],
        drain_eta_s: None,
    }
}
