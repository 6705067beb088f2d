//! Sensor ingest from the board's local broker.
//!
//! Invariant: a sensor message is acknowledged to the local broker only after
//! its reading is committed to the buffer (manual acks), or after it was
//! rejected. The session is persistent, so messages published while the agent
//! is down, or received but not yet committed when it died, are delivered
//! again. Rejections are counted per reason and never stop the loop.
//!
//! Format by content: a JSON object is a flat message ([`flat`]), a JSON
//! array a SenML pack ([`senml`]). One message may yield several readings
//! (a SenML pack with several times); they are preprocessed, scored, and
//! appended in one call, so the message is acked once, after all of them
//! are committed, or never.
//!
//! Order of checks: size, allow-list, JSON, then the format's own checks;
//! after preprocessing and inference, every reading passes the buffer's
//! own check ([`crate::buffer::row::check`]) before it is handed over, so
//! what is acknowledged here always reads back from the buffer.
//!
//! Redeliveries: every message goes to the buffer with its packet id, DUP
//! flag and a digest of topic and payload ([`crate::buffer::Delivery`]);
//! the buffer stores it unless it is a DUP copy of the message last
//! committed under that packet id. A message delivered for the first time
//! is never discarded, whatever its sensor and timestamp.
//!
//! Timestamps: a reading without its own is stamped with its arrival time
//! and flagged [`FLAG_ARRIVAL_TIME`]; one that arrives within
//! `ingest.replay_window` of a reconnect to a broker that kept the session
//! is also flagged [`FLAG_REPLAYED`]: the broker may have held it while the
//! agent was away, so it was measured before its stamp.

pub mod acks;
pub mod config;
pub mod flat;
pub mod metrics;
pub mod senml;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use aeris_runtime::Backoff;
use aeris_wire::flags::{FLAG_SPIKE, FLAG_STUCK};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::buffer::Buffer;
use crate::health::Probes;
use crate::infer::scorer::{Inference, Scorer};
use crate::preprocess::PreprocessConfig;
use crate::preprocess::Preprocessor;
pub use config::{IngestConfig, LocalConfig, SensorConfig};
pub use metrics::Metrics;

use self::acks::Acks;

pub use aeris_wire::flags::{FLAG_ARRIVAL_TIME, FLAG_REPLAYED};
/// Kept for the modules that still import the clock from here; the one
/// definition is [`aeris_wire::now_ms`].
pub use aeris_wire::now_ms;

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

/// Parses and validates one sensor message into its readings.
pub fn parse_message(
    sensor: &str,
    payload: &[u8],
    allow_list: &[String],
    cx: &flat::Context<'_>,
) -> Result<Vec<aeris_wire::Reading>, flat::Reject> {
    if payload.len() > cx.max_payload_bytes {
        return Err(flat::Reject::Oversize(payload.len()));
    }
    if !allow_list.is_empty() && !allow_list.iter().any(|a| a == sensor) {
        return Err(flat::Reject::UnknownSensor);
    }
    let json: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| flat::Reject::NotJson(e.to_string()))?;
    match json {
        serde_json::Value::Object(map) => Ok(vec![flat::from_object(sensor, &map, cx)?]),
        serde_json::Value::Array(records) => senml::from_pack(sensor, &records, cx),
        _ => Err(flat::Reject::NotObject),
    }
}

/// What ingest is built from: its own sections, and `[preprocess]` for the
/// preprocessor it runs on each reading.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This device's id; the local client id is `<device_id>-ingest`.
    pub device_id: String,
    pub local: LocalConfig,
    pub ingest: IngestConfig,
    /// Fixed positions of sensors without GPS, by sensor id.
    pub sensors: BTreeMap<String, SensorConfig>,
    pub preprocess: PreprocessConfig,
}

/// Runs until `shutdown`; then disconnects, leaving uncommitted messages
/// unacknowledged for the broker to deliver again.
pub async fn run(
    config: Arc<Settings>,
    buffer: Buffer,
    metrics: Arc<Metrics>,
    probes: Arc<Probes>,
    shutdown: CancellationToken,
    inference: Option<Inference>,
) {
    let (mut scorer, mut candidates, mut news) = match inference {
        Some(i) => (Some(i.scorer), Some(i.candidates), Some(i.news)),
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
    // Acks wait in `acks` and enter the client's queue a window at a time.
    let (client, mut events) = AsyncClient::new(opts, acks::CLIENT_QUEUE);
    let acks = Arc::new(Acks::default());
    let mut pre = Preprocessor::new(config.preprocess.clone());
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut beat = tokio::time::interval(crate::health::systemd::BEAT_EVERY);
    // Until when arrivals may be the broker's stored session.
    let mut replay_until: Option<tokio::time::Instant> = None;
    loop {
        probes.live.beat(&probes.live.ingest);
        acks.hand_over(&client);
        metrics
            .acks_pending
            .set(acks.pending.load(Relaxed).min(i64::MAX as u64) as i64);
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = beat.tick() => continue,
            _ = acks.pushed.notified() => continue,
            ev = events.poll() => ev,
            c = recv_opt(&mut candidates) => {
                if let (Some(c), Some(sc)) = (c, scorer.as_mut()) {
                    sc.offer(c);
                }
                continue;
            }
            n = recv_opt(&mut news) => {
                if let (Some(n), Some(sc)) = (n, scorer.as_mut()) {
                    sc.on_news(n);
                }
                continue;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                if ack.session_present {
                    replay_until = Some(tokio::time::Instant::now() + config.ingest.replay_window);
                }
                info!(host = %config.local.host, port = config.local.port, "connected to local broker");
                if let Err(e) = client.try_subscribe(config.local.topic.clone(), QoS::AtLeastOnce) {
                    warn!(error = %e, "cannot queue sensor subscription");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                probes.set_subscribed(true);
                info!(topic = %config.local.topic, "subscribed to sensor topic");
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let replayed = replay_until.is_some_and(|t| tokio::time::Instant::now() < t);
                handle(
                    &config,
                    &acks,
                    &buffer,
                    &metrics,
                    &mut pre,
                    scorer.as_mut(),
                    p,
                    replayed,
                )
                .await;
            }
            Ok(Event::Outgoing(Outgoing::PubAck(_))) => acks.written(),
            Ok(_) => {}
            Err(e) => {
                acks.connection_lost();
                probes.set_subscribed(false);
                let wait = backoff.next_delay();
                warn!(error = %e, retry_in = ?wait, "local broker connection lost");
                let live = &probes.live;
                live.alive_for(&live.ingest, wait + crate::health::systemd::BEAT_GRACE);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
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
    while acks.hand_over(&client) > 0 {
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

#[allow(clippy::too_many_arguments)]
async fn handle(
    config: &Settings,
    acks: &Arc<Acks>,
    buffer: &Buffer,
    metrics: &Arc<Metrics>,
    pre: &mut Preprocessor,
    mut scorer: Option<&mut Scorer>,
    p: Publish,
    replayed: bool,
) {
    let topic = p.topic.clone();
    let parsed = match sensor_id(&config.local.topic, &topic) {
        None => Err(flat::Reject::BadSensorId(topic.clone())),
        Some(sensor) => {
            let cx = flat::Context {
                now_ms: now_ms(),
                max_future_ms: config.ingest.max_future.as_millis() as i64,
                retention_ms: config.ingest.retention.as_millis() as i64,
                max_payload_bytes: config.ingest.max_payload_bytes,
                sensors: &config.sensors,
                reference: config.preprocess.reference(),
            };
            parse_message(sensor, &p.payload, &config.ingest.allow_list, &cx)
        }
    };
    let parsed = parsed.and_then(|mut readings| {
        for reading in &mut readings {
            if reading.flags & FLAG_ARRIVAL_TIME != 0 {
                metrics.arrival_stamped.inc();
                if replayed {
                    reading.flags |= FLAG_REPLAYED;
                }
            }
            preprocess(pre, metrics, reading);
            if let Some(sc) = scorer.as_deref_mut() {
                sc.process(reading);
            }
            crate::buffer::row::check(reading).map_err(|e| flat::Reject::Invalid(e.to_string()))?;
        }
        Ok(readings)
    });
    match parsed {
        Err(reject) => {
            metrics.reject(reject.reason());
            debug!(topic = %topic, reason = reject.reason(), error = %reject, "sensor message rejected");
            acks.push(p.qos, p.pkid);
        }
        Ok(readings) => {
            let n = readings.len() as u64;
            // QoS 0 is never redelivered.
            let delivery = (p.qos != QoS::AtMostOnce)
                .then(|| crate::buffer::Delivery::new(p.pkid, p.dup, &topic, &p.payload));
            let (acks, qos, pkid) = (acks.clone(), p.qos, p.pkid);
            let counts = metrics.clone();
            let on_commit = Box::new(
                move |res: Result<crate::buffer::Appended, &crate::buffer::BufferError>| {
                    match res {
                        Ok(done) => {
                            if !done.redelivered {
                                counts.accepted.inc_by(done.stored);
                            }
                            acks.push(qos, pkid);
                        }
                        // Not acked: the broker delivers it again after a reconnect.
                        Err(_) => {
                            counts.buffer_errors.inc_by(n);
                        }
                    }
                },
            );
            if buffer.append(delivery, readings, on_commit).await.is_err() {
                warn!("buffer closed; reading left with the broker");
            }
        }
    }
}

/// Runs preprocessing on one reading and counts what it found. Closed
/// windows are logged and counted; the disk-budget work will store them.
fn preprocess(pre: &mut Preprocessor, metrics: &Metrics, reading: &mut aeris_wire::Reading) {
    let out = pre.process(reading);
    if reading.flags & FLAG_SPIKE != 0 {
        metrics.flagged("spike");
        debug!(sensor = %reading.sensor, ts_ms = reading.ts_ms, flag = "spike", "reading flagged");
    }
    if reading.flags & FLAG_STUCK != 0 {
        metrics.flagged("stuck");
        debug!(sensor = %reading.sensor, ts_ms = reading.ts_ms, flag = "stuck", "reading flagged");
    }
    metrics.windows_late.inc_by(out.late);
    for a in &out.aggregates {
        metrics.windows_closed.inc();
        debug!(
            sensor = %a.sensor, quantity = %a.quantity, start_ms = a.start_ms, end_ms = a.end_ms,
            mean = a.mean, min = a.min, max = a.max, count = a.count, flagged = a.flagged,
            "aggregation window closed"
        );
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

#[cfg(test)]
mod tests {
    use super::{flat, parse_message, sensor_id};
    use std::collections::BTreeMap;

    #[test]
    fn format_is_chosen_by_content_and_the_allow_list_applies_to_both() {
        let sensors = BTreeMap::new();
        let cx = flat::Context {
            now_ms: 1_700_000_000_000,
            max_future_ms: 300_000,
            retention_ms: 86_400_000,
            max_payload_bytes: 256,
            sensors: &sensors,
            reference: Default::default(),
        };
        let allow = vec!["s1".to_owned()];
        let flat = br#"{"pm25":1,"lat":1,"lon":1}"#;
        let senml = br#"[{"n":"pm25","v":1},{"n":"pm25","v":2,"t":-1},{"n":"lat","v":1},{"n":"lon","v":1}]"#;
        assert_eq!(
            parse_message("s1", flat, &allow, &cx).map(|r| r.len()),
            Ok(1)
        );
        assert_eq!(
            parse_message("s1", senml, &allow, &cx).map(|r| r.len()),
            Ok(2)
        );
        for payload in [&flat[..], &senml[..], b"not json"] {
            let e = parse_message("s2", payload, &allow, &cx).unwrap_err();
            assert_eq!(e.reason(), "unknown_sensor");
        }
        assert_eq!(parse_message("s2", flat, &[], &cx).map(|r| r.len()), Ok(1));
        let e = parse_message("s1", &[b' '; 300], &allow, &cx).unwrap_err();
        assert_eq!(e.reason(), "oversize");
        let e = parse_message("s1", b"7", &allow, &cx).unwrap_err();
        assert_eq!(e.reason(), "not_object");
    }

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
