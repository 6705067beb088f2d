//! A plain MQTT subscriber for tests: subscribes at QoS 1 once connected
//! (again after a reconnect), hands every message it receives to a
//! callback, and is returned once the broker acknowledged the subscription.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};

/// Subscribes to `topic` on the broker at `port`; `on_publish` sees each
/// message. Panics when the subscription is not acknowledged in 10 s.
pub async fn subscribe(
    port: u16,
    topic: &str,
    mut on_publish: impl FnMut(Publish) + Send + 'static,
) -> AsyncClient {
    let mut opts = MqttOptions::new(
        format!("subscriber-{:08x}", fastrand::u32(..)),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(32 << 20, 32 << 20);
    let (client, mut events) = AsyncClient::new(opts, 1024);
    let (c, topic) = (client.clone(), topic.to_owned());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = c.subscribe(topic.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => on_publish(p),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("subscription acknowledged within 10 s")
        .expect("subscriber task");
    client
}
