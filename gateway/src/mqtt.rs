//! Connections to the cloud broker with the configured login and TLS,
//! shared by the source and the operator tools (re-send, verify, fleet
//! metrics, rollouts).

use std::time::Duration;

use aeris_runtime::tls::TlsError;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, TlsConfiguration, Transport};

use crate::config::BrokerConfig;

/// Most queued requests a client writes to the broker in one system call.
const REQUEST_BATCH: usize = 64;

/// Options for a client named `client_id` with `broker`'s address, login,
/// keep-alive and TLS (`broker.tls`); `Err` when a TLS file cannot be
/// used (the message names the key and the file).
pub fn options(broker: &BrokerConfig, client_id: &str) -> Result<MqttOptions, TlsError> {
    let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    opts.set_keep_alive(broker.keep_alive)
        .set_max_packet_size(32 << 20, 1 << 20)
        // Acks and publishes queued together leave in one write (the
        // patched rumqttc, vendor/README.md).
        .set_max_request_batch(REQUEST_BATCH);
    if !broker.username.is_empty() {
        opts.set_credentials(broker.username.clone(), broker.password.clone());
    }
    if let Some(tls) = broker.tls.client_config()? {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    }
    Ok(opts)
}

/// Why a connection to the broker failed, as a metric label: `tls`,
/// `refused`, `rejected`, `timeout`, `io` ([`aeris_runtime::tls`]).
pub fn failure_reason(e: &rumqttc::ConnectionError) -> &'static str {
    aeris_runtime::tls::failure_reason(e)
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
    let opts = options(broker, client_id).map_err(|e| e.to_string())?;
    let (client, mut events) = AsyncClient::new(opts, 256);
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
