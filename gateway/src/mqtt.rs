//! Connections to the cloud broker with the configured login, shared by the
//! source and the operator tools (re-send, verify, fleet metrics).

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet};

use crate::config::BrokerConfig;

/// Options for a client named `client_id` with `broker`'s address, login
/// and keep-alive.
pub fn options(broker: &BrokerConfig, client_id: &str) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    opts.set_keep_alive(broker.keep_alive)
        .set_max_packet_size(32 << 20, 1 << 20);
    if !broker.username.is_empty() {
        opts.set_credentials(broker.username.clone(), broker.password.clone());
    }
    opts
}

/// A random suffix for client ids, so tools never take over each other's
/// session.
pub fn random_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

/// Connects and waits for the broker's CONNACK: an `Err` names why (refused
/// login, unreachable, timed out).
pub async fn connect(
    broker: &BrokerConfig,
    client_id: &str,
    timeout: Duration,
) -> Result<(AsyncClient, EventLoop), String> {
    let (client, mut events) = AsyncClient::new(options(broker, client_id), 256);
    let wait = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(())) => Ok((client, events)),
        Ok(Err(e)) => Err(format!(
            "broker {}:{} refused or unreachable: {e}",
            broker.host, broker.port
        )),
        Err(_) => Err(format!(
            "broker {}:{} did not answer within {timeout:?}",
            broker.host, broker.port
        )),
    }
}
