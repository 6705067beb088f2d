//! One sensor message through ingest: parsed into readings, each stamped,
//! preprocessed, scored and checked, then appended to the buffer with an
//! ack that fires on commit; a rejected message is acked at once.

use std::sync::Arc;

use aeris_wire::correction::Outcome;
use aeris_wire::flags::{FLAG_SPIKE, FLAG_STUCK};
use aeris_wire::Reading;
use rumqttc::{Publish, QoS};
use tracing::{debug, warn};

use super::acks::Acks;
use super::{flat, now_ms, parse_message, sensor_id, Metrics, Settings};
use super::{FLAG_ARRIVAL_TIME, FLAG_REPLAYED};
use crate::buffer::{Appended, Buffer, BufferError, Delivery};
use crate::infer::scorer::Scorer;
use crate::preprocess::Preprocessor;

/// Handles one sensor message; `replayed` if it arrived within the replay
/// window of a reconnect to a kept session.
#[allow(clippy::too_many_arguments)]
pub(super) async fn handle(
    config: &Settings,
    acks: &Arc<Acks>,
    buffer: &Buffer,
    metrics: &Arc<Metrics>,
    pre: &mut Preprocessor,
    scorer: Option<&mut Scorer>,
    p: Publish,
    replayed: bool,
) {
    let topic = p.topic.as_str();
    let parsed = parse(config, topic, &p.payload)
        .and_then(|readings| prepare(readings, metrics, pre, scorer, replayed));
    match parsed {
        Err(reject) => {
            metrics.reject(reject.reason());
            debug!(topic = %topic, reason = reject.reason(), error = %reject, "sensor message rejected");
            acks.push(p.qos, p.pkid);
        }
        Ok(readings) => append(buffer, acks, metrics, &p, readings).await,
    }
}

/// The readings of a message on `topic`, checked against the ingest limits.
fn parse(config: &Settings, topic: &str, payload: &[u8]) -> Result<Vec<Reading>, flat::Reject> {
    let Some(sensor) = sensor_id(&config.local.topic, topic) else {
        return Err(flat::Reject::BadSensorId(topic.to_owned()));
    };
    let cx = flat::Context {
        now_ms: now_ms(),
        max_future_ms: config.ingest.max_future.as_millis() as i64,
        retention_ms: config.ingest.retention.as_millis() as i64,
        max_payload_bytes: config.ingest.max_payload_bytes,
        sensors: &config.sensors,
        reference: config.preprocess.reference(),
    };
    parse_message(sensor, payload, &config.ingest.allow_list, &cx)
}

/// Flags, preprocesses and scores each reading, and checks it as the
/// buffer will read it back; one failing check rejects the message.
fn prepare(
    mut readings: Vec<Reading>,
    metrics: &Metrics,
    pre: &mut Preprocessor,
    mut scorer: Option<&mut Scorer>,
    replayed: bool,
) -> Result<Vec<Reading>, flat::Reject> {
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
}

/// Hands the message's readings to the buffer; its ack is pushed once
/// they are committed, never if they are not.
async fn append(
    buffer: &Buffer,
    acks: &Arc<Acks>,
    metrics: &Arc<Metrics>,
    p: &Publish,
    readings: Vec<Reading>,
) {
    let topic = p.topic.as_str();
    let n = readings.len() as u64;
    // QoS 0 is never redelivered.
    let delivery =
        (p.qos != QoS::AtMostOnce).then(|| Delivery::new(p.pkid, p.dup, topic, &p.payload));
    let (acks, qos, pkid) = (acks.clone(), p.qos, p.pkid);
    let counts = metrics.clone();
    let on_commit = Box::new(move |res: Result<Appended, &BufferError>| {
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
    });
    if buffer.append(delivery, readings, on_commit).await.is_err() {
        warn!("buffer closed; reading left with the broker");
    }
}

/// Runs preprocessing on one reading and counts what it flagged.
fn preprocess(pre: &mut Preprocessor, metrics: &Metrics, reading: &mut Reading) {
    let processed = pre.process(reading);
    if let Some(hour) = &processed.hour {
        metrics.local_aqi(hour);
    }
    match processed.correction {
        Some(Outcome::Corrected { .. }) => metrics.corrected("corrected"),
        Some(Outcome::Withheld(why)) => {
            metrics.corrected(why.reason());
            debug!(sensor = %reading.sensor, ts_ms = reading.ts_ms, reason = why.reason(), "correction withheld");
        }
        _ => {}
    }
    if reading.flags & FLAG_SPIKE != 0 {
        metrics.flagged("spike");
        debug!(sensor = %reading.sensor, ts_ms = reading.ts_ms, flag = "spike", "reading flagged");
    }
    if reading.flags & FLAG_STUCK != 0 {
        metrics.flagged("stuck");
        debug!(sensor = %reading.sensor, ts_ms = reading.ts_ms, flag = "stuck", "reading flagged");
    }
}
