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
mod connection;
pub mod flat;
mod message;
pub mod metrics;
pub mod senml;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use aeris_runtime::Backoff;
use rumqttc::{AsyncClient, ConnectionError, Event, Outgoing, Packet};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::buffer::Buffer;
use crate::health::Probes;
use crate::infer::models_dir::{Candidate, LoaderNews as News};
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
    match flat::Payload::parse(payload).map_err(|e| flat::Reject::NotJson(e.to_string()))? {
        flat::Payload::Object(fields) => Ok(vec![flat::from_fields(sensor, &fields, cx)?]),
        flat::Payload::Array(records) => senml::from_pack(sensor, &records, cx),
        flat::Payload::Other => Err(flat::Reject::NotObject),
    }
}

/// What ingest is built from: its own sections, `[preprocess]` for the
/// preprocessor it runs on each reading, and the models' cadence for the
/// scorer. Handed over on a `watch`: a new value applies from the next
/// message on (the local connection's keys only at the next start).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// This device's id; the local client id is `<device_id>-ingest`.
    pub device_id: String,
    pub local: LocalConfig,
    pub ingest: IngestConfig,
    /// Fixed positions of sensors without GPS, by sensor id.
    pub sensors: BTreeMap<String, SensorConfig>,
    pub preprocess: PreprocessConfig,
    /// Spacing of each model's input series, in ms, by model name.
    pub cadence_ms: BTreeMap<String, i64>,
}

/// Runs until `shutdown`; then disconnects, leaving uncommitted messages
/// unacknowledged for the broker to deliver again.
pub async fn run(
    mut live: watch::Receiver<Arc<Settings>>,
    buffer: Buffer,
    metrics: Arc<Metrics>,
    probes: Arc<Probes>,
    shutdown: CancellationToken,
    inference: Option<Inference>,
    alerts: Option<mpsc::UnboundedSender<aeris_wire::Event>>,
) {
    let config = live.borrow_and_update().clone();
    // Acks wait in `acks` and enter the client's queue a window at a time.
    let (client, mut events) = AsyncClient::new(connection::options(&config), acks::CLIENT_QUEUE);
    let mut ingest = Ingest {
        pre: match alerts {
            Some(tx) => Preprocessor::new(config.preprocess.clone())
                .with_alerts(config.device_id.clone(), tx),
            None => Preprocessor::new(config.preprocess.clone()),
        },
        config,
        buffer,
        metrics,
        probes,
        client,
        acks: Arc::new(Acks::default()),
        models: Models::from(inference),
        backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
        replay_until: None,
    };
    let mut beat = tokio::time::interval(crate::health::systemd::BEAT_EVERY);
    loop {
        ingest.tick();
        // Also here, not only in the select below: a message that arrives
        // with the change is handled with the new settings.
        if live.has_changed().unwrap_or(false) {
            ingest.reconfigure(live.borrow_and_update().clone());
        }
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = beat.tick() => continue,
            _ = ingest.acks.pushed.notified() => continue,
            ev = events.poll() => ev,
            _ = ingest.models.update() => continue,
            Ok(()) = live.changed() => {
                ingest.reconfigure(live.borrow_and_update().clone());
                continue;
            }
        };
        if let Some(wait) = ingest.on_event(event).await {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
    connection::close(&ingest.buffer, &ingest.acks, &ingest.client, &mut events).await;
}

/// The ingest loop's state beside the MQTT event loop.
struct Ingest {
    config: Arc<Settings>,
    buffer: Buffer,
    metrics: Arc<Metrics>,
    probes: Arc<Probes>,
    client: AsyncClient,
    acks: Arc<Acks>,
    pre: Preprocessor,
    models: Models,
    backoff: Backoff,
    /// Until when arrivals may be the broker's stored session.
    replay_until: Option<tokio::time::Instant>,
}

impl Ingest {
    /// Every turn of the loop: proves it alive and hands the client the
    /// acks earned since.
    fn tick(&self) {
        self.probes.live.beat(&self.probes.live.ingest);
        self.acks.hand_over(&self.client);
        self.metrics
            .acks_pending
            .set(self.acks.pending.load(Relaxed).min(i64::MAX as u64) as i64);
    }

    /// New settings, from the next message on. The preprocessor and the
    /// scorer keep their history: a spike is still judged against the
    /// readings before the change.
    fn reconfigure(&mut self, next: Arc<Settings>) {
        if next.preprocess != self.config.preprocess {
            self.pre.reconfigure(next.preprocess.clone());
        }
        if next.cadence_ms != self.config.cadence_ms {
            if let Some(scorer) = self.models.scorer.as_mut() {
                scorer.engine.set_cadence(next.cadence_ms.clone());
            }
        }
        info!("ingest settings changed; they apply from the next message");
        self.config = next;
    }

    /// Acts on one event of the MQTT event loop; after a lost connection,
    /// returns how long to wait before the next attempt.
    async fn on_event(&mut self, event: Result<Event, ConnectionError>) -> Option<Duration> {
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                self.backoff.reset();
                if ack.session_present {
                    self.replay_until =
                        Some(tokio::time::Instant::now() + self.config.ingest.replay_window);
                }
                connection::subscribe(&self.config, &self.client);
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                self.probes.set_subscribed(true);
                info!(topic = %self.config.local.topic, "subscribed to sensor topic");
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let replayed = self
                    .replay_until
                    .is_some_and(|t| tokio::time::Instant::now() < t);
                let (config, acks, buffer) = (&self.config, &self.acks, &self.buffer);
                let scorer = self.models.scorer.as_mut();
                message::handle(
                    config,
                    acks,
                    buffer,
                    &self.metrics,
                    &mut self.pre,
                    scorer,
                    p,
                    replayed,
                )
                .await;
            }
            Ok(Event::Outgoing(Outgoing::PubAck(_))) => self.acks.written(),
            Ok(_) => {}
            Err(e) => {
                let wait = self.backoff.next_delay();
                connection::lost(&e, &self.acks, &self.probes, wait);
                return Some(wait);
            }
        }
        None
    }
}

/// The scorer and the channels that bring it candidate models and news;
/// all `None` without inference.
struct Models {
    scorer: Option<Scorer>,
    candidates: Option<mpsc::Receiver<Candidate>>,
    news: Option<mpsc::Receiver<News>>,
}

impl From<Option<Inference>> for Models {
    fn from(inference: Option<Inference>) -> Models {
        match inference {
            Some(i) => Models {
                scorer: Some(i.scorer),
                candidates: Some(i.candidates),
                news: Some(i.news),
            },
            None => Models {
                scorer: None,
                candidates: None,
                news: None,
            },
        }
    }
}

impl Models {
    /// Waits for the next candidate model or news and hands it to the
    /// scorer; pends forever once both channels are closed or absent.
    async fn update(&mut self) {
        tokio::select! {
            c = recv_opt(&mut self.candidates) => {
                if let (Some(c), Some(sc)) = (c, self.scorer.as_mut()) {
                    sc.offer(c);
                }
            }
            n = recv_opt(&mut self.news) => {
                if let (Some(n), Some(sc)) = (n, self.scorer.as_mut()) {
                    sc.on_news(n);
                }
            }
        }
    }
}

/// The next item of an optional channel; pends forever once it is closed
/// or absent.
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
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
