//! Sensor ingest from the board's local broker.
//!
//! Invariant: a sensor message is acknowledged to the local broker only after
//! its reading is committed to the buffer (manual acks), or after it was
//! rejected. The session is persistent, so messages published while the agent
//! is down, or received but not yet committed when it died, are delivered
//! again. Rejections are counted per reason and never stop the loop.

pub mod flat;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::buffer::Buffer;
use crate::config::Config;
use crate::health::Stats;
use crate::infer::runtime::{Inference, Runtime};
use crate::uplink::backoff::Backoff;

/// The topic level after the filter's fixed part names the sensor:
/// `sensors/#` and `sensors/abc/pm` give `abc`.
pub fn sensor_id<'t>(filter: &str, topic: &'t str) -> Option<&'t str> {
    let fixed = filter.trim_end_matches('#').trim_end_matches('/');
    let rest = if fixed.is_empty() {
        topic
    } else {
        topic.strip_prefix(fixed)?.strip_prefix('/')?
    };
    let id = rest.split('/').next()?;
    (!id.is_empty() && id.len() <= aeris_wire::message::MAX_NAME_LEN).then_some(id)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs until `shutdown`; then disconnects, leaving uncommitted messages
/// unacknowledged for the broker to deliver again.
pub async fn run(
    config: Arc<Config>,
    buffer: Buffer,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    inference: Option<Inference>,
) {
    let (mut runtime, mut candidates, mut news) = match inference {
        Some(i) => (Some(i.runtime), Some(i.candidates), Some(i.news)),
        None => (None, None, None),
    };
    let mut opts = MqttOptions::new(
        format!("{}-ingest", config.device_id),
        config.local.host.clone(),
        config.local.port,
    );
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_manual_acks(true)
        // Oversize payloads must reach the parser to be counted, not break
        // the connection, so the client's own limit is far above ours.
        .set_max_packet_size(16 << 20, 1 << 20);
    // Acks are queued from the buffer thread with try_ack; the broker's
    // in-flight window bounds how many can be outstanding, far below this.
    let (client, mut events) = AsyncClient::new(opts, 65_536);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = events.poll() => ev,
            c = recv_opt(&mut candidates) => {
                if let (Some(c), Some(rt)) = (c, runtime.as_mut()) {
                    rt.offer(c);
                }
                continue;
            }
            n = recv_opt_unbounded(&mut news) => {
                if let (Some(n), Some(rt)) = (n, runtime.as_mut()) {
                    rt.on_news(n);
                }
                continue;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                info!(host = %config.local.host, port = config.local.port, "connected to local broker");
                if let Err(e) = client.try_subscribe(config.local.topic.clone(), QoS::AtLeastOnce) {
                    warn!(error = %e, "cannot queue sensor subscription");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                stats.ingest_subscribed.store(true, Relaxed);
                info!(topic = %config.local.topic, "subscribed to sensor topic");
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                handle(&config, &client, &buffer, &stats, runtime.as_mut(), p).await;
            }
            Ok(_) => {}
            Err(e) => {
                stats.ingest_subscribed.store(false, Relaxed);
                let wait = backoff.next_delay();
                warn!(error = %e, retry_in = ?wait, "local broker connection lost");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    // Barrier: the buffer thread answers this only after committing every
    // reading handed to it before, so their acks are queued by now.
    if buffer.depth().await.is_err() {
        warn!("buffer closed before the last commit");
    }
    // DISCONNECT is queued behind those acks: once it is written, they are
    // too, and the broker will not deliver them again. Messages arriving
    // meanwhile stay unacked and come again on the next start.
    if client.try_disconnect().is_ok() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            match tokio::time::timeout_at(deadline, events.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {}
            }
        }
    }
}

async fn handle(
    config: &Config,
    client: &AsyncClient,
    buffer: &Buffer,
    stats: &Arc<Stats>,
    runtime: Option<&mut Runtime>,
    p: Publish,
) {
    let topic = p.topic.clone();
    let parsed = match sensor_id(&config.local.topic, &topic) {
        None => Err(flat::Reject::BadSensorId(topic.clone())),
        Some(sensor) => {
            let cx = flat::Context {
                now_ms: now_ms(),
                max_future_ms: config.ingest.max_future.as_millis() as i64,
                max_payload_bytes: config.ingest.max_payload_bytes,
                sensors: &config.sensors,
            };
            flat::parse(sensor, &p.payload, &cx)
        }
    };
    match parsed {
        Err(reject) => {
            stats.reject(reject.reason());
            debug!(topic = %topic, reason = reject.reason(), error = %reject, "sensor message rejected");
            if let Err(e) = client.try_ack(&p) {
                warn!(error = %e, "cannot queue ack of a rejected message");
            }
        }
        Ok(mut reading) => {
            if let Some(rt) = runtime {
                rt.process(&mut reading);
            }
            let client = client.clone();
            let stats_cb = stats.clone();
            let on_commit = Box::new(
                move |res: Result<(u64, u64), &crate::buffer::BufferError>| {
                    match res {
                        Ok(_) => {
                            stats_cb.accepted.fetch_add(1, Relaxed);
                            if let Err(e) = client.try_ack(&p) {
                                warn!(error = %e, "cannot queue ack of a stored reading");
                            }
                        }
                        // Not acked: the broker delivers it again after a reconnect.
                        Err(_) => {
                            stats_cb.buffer_errors.fetch_add(1, Relaxed);
                        }
                    }
                },
            );
            if buffer.append(vec![reading], on_commit).await.is_err() {
                warn!("buffer closed; reading left with the broker");
            }
        }
    }
}

/// The next item of an optional channel; pends forever once it is closed
/// or absent.
async fn recv_opt<T>(rx: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => match r.recv().await {
            Some(v) => Some(v),
            None => {
                *rx = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

async fn recv_opt_unbounded<T>(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<T>>,
) -> Option<T> {
    match rx {
        Some(r) => match r.recv().await {
            Some(v) => Some(v),
            None => {
                *rx = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::sensor_id;

    #[test]
    fn sensor_id_is_the_level_after_the_filter() {
        assert_eq!(sensor_id("sensors/#", "sensors/abc/pm"), Some("abc"));
        assert_eq!(sensor_id("sensors/#", "sensors/abc"), Some("abc"));
        assert_eq!(sensor_id("site/sensors/#", "site/sensors/x1/y"), Some("x1"));
        assert_eq!(sensor_id("sensors/#", "other/abc"), None);
        assert_eq!(sensor_id("sensors/#", "sensors//x"), None);
        assert_eq!(sensor_id("#", "abc/def"), Some("abc"));
    }
}
