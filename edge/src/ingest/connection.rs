//! The connection to the board's local broker: its options (persistent
//! session, manual acks), the subscription, what a lost connection does,
//! and the shutdown that gets every earned ack written before DISCONNECT.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, QoS};
use tracing::{info, warn};

use super::acks::Acks;
use super::Settings;
use crate::buffer::Buffer;
use crate::health::Probes;

/// Most acks the client writes to the broker in one system call.
const ACK_BATCH: usize = 64;

/// A persistent session with manual acks, as `<device_id>-ingest`.
pub(super) fn options(config: &Settings) -> MqttOptions {
    let mut opts = MqttOptions::new(
        format!("{}-ingest", config.device_id),
        config.local.host.clone(),
        config.local.port,
    );
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_manual_acks(true)
        // Acks earned by one group commit leave in one write (the patched
        // rumqttc, vendor/README.md), not one system call each.
        .set_max_request_batch(ACK_BATCH)
        // Oversize payloads must reach the parser to be counted, not break
        // the connection, so the client's own limit is far above ours.
        .set_max_packet_size(16 << 20, 1 << 20);
    opts
}

/// Logs the connection and queues the sensor subscription.
pub(super) fn subscribe(config: &Settings, client: &AsyncClient) {
    info!(host = %config.local.host, port = config.local.port, "connected to local broker");
    if let Err(e) = client.try_subscribe(config.local.topic.clone(), QoS::AtLeastOnce) {
        warn!(error = %e, "cannot queue sensor subscription");
    }
}

/// The connection is gone: the acks waiting for it are void, the probe
/// says unsubscribed, and the liveness probe allows for the `wait` before
/// the next attempt.
pub(super) fn lost(e: &ConnectionError, acks: &Acks, probes: &Probes, wait: Duration) {
    acks.connection_lost();
    probes.set_subscribed(false);
    warn!(error = %e, retry_in = ?wait, "local broker connection lost");
    let live = &probes.live;
    live.alive_for(&live.ingest, wait + crate::health::systemd::BEAT_GRACE);
}

/// Acks every message the buffer has committed, then disconnects; within
/// two seconds.
pub(super) async fn close(
    buffer: &Buffer,
    acks: &Arc<Acks>,
    client: &AsyncClient,
    events: &mut EventLoop,
) {
    // Barrier: the buffer thread answers this only after committing every
    // reading handed to it before, so their acks are queued by now.
    if buffer.snapshot().await.is_err() {
        warn!("buffer closed before the last commit");
    }
    // Hand the client every waiting ack, then DISCONNECT behind them: once
    // it is written, they are too, and the broker will not deliver those
    // messages again. Messages arriving meanwhile stay unacked and come
    // again on the next start.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while acks.hand_over(client) > 0 {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    if client.try_disconnect().is_ok() {
        loop {
            match tokio::time::timeout_at(deadline, events.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {}
            }
        }
    }
}
