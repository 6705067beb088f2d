//! The MQTT source: batches in through a shared subscription, acks out.
//!
//! Invariants: an `Ack` is published only after the sink committed the
//! batch; a batch that fails decoding or authorization is counted and
//! dropped (never stored, never acked); a failed write is retried with
//! backoff while its acks are held. Several gateways may share the
//! subscription, so nothing here assumes it sees all of a device's batches
//! or sees them in order.

mod writer;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use aeris_sink::Sink;
use aeris_wire::{decode, Batch, Channel, Topics};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::authorize;
use crate::config::Config;
use crate::stats::Stats;

/// A decoded, authorized batch and the message it came in.
pub(crate) struct Incoming {
    pub batch: Batch,
    pub publish: Publish,
}

pub async fn run(
    config: Arc<Config>,
    sink: Arc<dyn Sink>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics = Topics::new(&config.broker.prefix)?;
    let client_id = if config.broker.client_id.is_empty() {
        format!("aeris-gateway-{:08x}", fastrand_u32())
    } else {
        config.broker.client_id.clone()
    };
    let mut opts = MqttOptions::new(
        client_id.clone(),
        config.broker.host.clone(),
        config.broker.port,
    );
    opts.set_keep_alive(config.broker.keep_alive)
        .set_clean_session(true)
        .set_manual_acks(true)
        .set_max_packet_size(32 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 4096);
    let (tx, rx) = mpsc::channel::<Incoming>(1024);
    let writer = tokio::spawn(writer::run(
        rx,
        client.clone(),
        topics.clone(),
        sink,
        stats.clone(),
        config.writer.clone(),
        shutdown.clone(),
    ));
    let filter = topics.shared(&config.broker.share_group, Channel::UpBatch);
    let mut forward = Some(tx);
    let mut writer = writer;
    let mut writer_done = false;
    let mut backoff = Duration::from_millis(200);
    loop {
        let ev = tokio::select! {
            // On shutdown stop taking batches; keep polling so the writer's
            // last acks still go out, then disconnect.
            _ = shutdown.cancelled(), if forward.is_some() => {
                forward = None;
                continue;
            }
            res = &mut writer, if !writer_done => {
                writer_done = true;
                res?;
                if client.try_disconnect().is_err() {
                    break;
                }
                continue;
            }
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(200);
                info!(client_id = %client_id, filter = %filter, "connected to broker");
                if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                    warn!(error = %e, "cannot queue subscription");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // Without a forward (shutting down) the message stays
                // unacked: the broker forgets it with the clean session, and
                // the device sends it again after its ack timeout.
                if let (Some(tx), Some(incoming)) = (&forward, accept(&topics, &stats, &client, p))
                {
                    if tx.send(incoming).await.is_err() {
                        break;
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => {
                if writer_done {
                    break;
                }
                warn!(error = %e, retry_in = ?backoff, "broker connection lost");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    if !writer_done {
        writer.await?;
    }
    Ok(())
}

fn fastrand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

/// Decodes and authorizes one message; a rejected one is counted, acked to
/// the broker (so it is not redelivered) and dropped.
fn accept(topics: &Topics, stats: &Stats, client: &AsyncClient, p: Publish) -> Option<Incoming> {
    let verdict = match topics.parse(&p.topic) {
        Ok((device, Channel::UpBatch)) => match decode::<Batch>(&p.payload) {
            Ok(batch) => match authorize(device, &batch) {
                Ok(()) => Ok(batch),
                Err(e) => Err((e.reason(), e.to_string())),
            },
            Err(e) => Err((e.reason(), e.to_string())),
        },
        _ => Err(("unexpected_topic", format!("topic {}", p.topic))),
    };
    match verdict {
        Ok(batch) => {
            stats.batches_received.fetch_add(1, Relaxed);
            Some(Incoming { batch, publish: p })
        }
        Err((reason, error)) => {
            stats.reject(reason);
            warn!(topic = %p.topic, reason, error = %error, "batch rejected");
            let _ = client.try_ack(&p);
            None
        }
    }
}
