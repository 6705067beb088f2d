//! Publishing `Configure` commands on devices' `down/cmd` (QoS 1, not
//! retained: the device's retained `up/config` report is what brings an
//! offline device its desired state when it returns, see the module doc).

use std::time::Duration;

use aeris_wire::{encode, Command, Topics};
use rumqttc::{AsyncClient, Event, Packet, QoS};

use crate::config::BrokerConfig;

/// Publishes `commands` on a connection of its own and waits for the
/// broker's acknowledgements; returns how many it acknowledged.
pub async fn publish(
    broker: &BrokerConfig,
    commands: &[(String, Command)],
) -> Result<usize, String> {
    if commands.is_empty() {
        return Ok(0);
    }
    let topics = Topics::new(&broker.prefix).map_err(|e| e.to_string())?;
    let client_id = format!("aeris-config-{:08x}", crate::mqtt::random_suffix());
    let (client, mut events) =
        crate::mqtt::connect(broker, &client_id, Duration::from_secs(10)).await?;
    for (device, cmd) in commands {
        client
            .publish(topics.cmd(device), QoS::AtLeastOnce, false, encode(cmd))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut acked = 0;
    let wait = async {
        while acked < commands.len() {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => return Err(format!("broker connection lost: {e}")),
            }
        }
        Ok(())
    };
    let result = tokio::time::timeout(Duration::from_secs(30), wait).await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while events.poll().await.is_ok() {}
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(acked),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "the broker acknowledged {acked} of {} configure commands",
            commands.len()
        )),
    }
}

/// Publishes `cmd` to `device` on the source's own connection (for a
/// device whose report showed another version).
pub fn publish_on(
    client: &AsyncClient,
    topics: &Topics,
    device: &str,
    cmd: &Command,
) -> Result<(), String> {
    client
        .try_publish(topics.cmd(device), QoS::AtLeastOnce, false, encode(cmd))
        .map_err(|e| e.to_string())
}
