//! The MQTT source: batches in through a shared subscription, acks out.
//!
//! Invariants: an `Ack` is published only after the sink committed the
//! batch, and never for a seq that holds another reading in the database
//! (a seq collision: the device is asked to renumber instead, see
//! `writer`); a batch that fails decoding or authorization is counted and
//! dropped (never stored, never acked); a failed write is retried with
//! backoff while its acks are held. Several gateways may share the
//! subscription, so nothing here assumes it sees all of a device's batches
//! or sees them in order.

pub mod live;
mod writer;

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use aeris_runtime::Backoff;
use aeris_sink::live::Live;
use aeris_sink::Sink;
use aeris_wire::{
    decode, Batch, Channel, ConfigReport, Event as DeviceEvent, EventKind, Status, Topics,
};
use rumqttc::{AsyncClient, ConnectionError, Event, Outgoing, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::ownership::authorize;
use crate::stats::Stats;
use live::LiveFeed;

/// A decoded, authorized batch and the message it came in.
pub(crate) struct Incoming {
    pub batch: Batch,
    pub publish: Publish,
    /// When it arrived, for the ack-latency histogram.
    pub received: std::time::Instant,
}

/// What the source hands on, besides batches.
enum Accepted {
    Batch(Incoming),
    Status(Status),
    Event(DeviceEvent),
    Config(ConfigReport),
}

/// The sink and live view the source writes to.
pub struct Outputs {
    pub sink: Arc<dyn Sink>,
    pub live: Arc<dyn Live>,
    pub feed: Arc<LiveFeed>,
}

/// Runs until `shutdown`: then stops taking batches, lets the writer
/// finish and its last acks go out, and disconnects.
pub async fn run(
    config: Arc<Config>,
    out: Outputs,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics = Topics::new(&config.broker.prefix)?;
    let client_id = client_id(&config);
    let mut opts = crate::mqtt::options(&config.broker, &client_id)?;
    opts.set_clean_session(true).set_manual_acks(true);
    let (client, mut events) = AsyncClient::new(opts, 4096);
    let writer = writer::Writer {
        client: client.clone(),
        topics: topics.clone(),
        sink: out.sink.clone(),
        feed: out.feed.clone(),
        stats: stats.clone(),
        config: config.writer.clone(),
    };
    let (mut writer, tx) = start_writer(writer, shutdown.clone());
    let status_tx = start_side_channel(out, stats.clone(), (client.clone(), topics.clone()));
    let mut source = Source::new(config, topics, client, client_id, stats, tx, status_tx);
    let mut writer_done = false;
    loop {
        // A sender of its own only while batches wait (the shutdown arm
        // clears `source.forward` while this one may be borrowed).
        let forward = if source.waiting.is_empty() {
            None
        } else {
            source.forward.clone()
        };
        let ev = tokio::select! {
            // On shutdown stop taking batches; keep polling so the writer's
            // last acks still go out, then disconnect.
            _ = shutdown.cancelled(), if source.forward.is_some() => {
                source.forward = None;
                // Never stored, never acked: their devices send them again.
                source.waiting.clear();
                source.waiting_bytes = 0;
                continue;
            }
            // Batches waiting for room in the writer's queue go first.
            permit = reserve(&forward), if !source.waiting.is_empty() => {
                let (Some(permit), Some(incoming)) = (permit, source.waiting.pop_front()) else {
                    continue;
                };
                source.waiting_bytes -= incoming.publish.payload.len();
                permit.send(incoming);
                continue;
            }
            res = &mut writer, if !writer_done => {
                writer_done = true;
                res?;
                if source.client.try_disconnect().is_err() {
                    break;
                }
                continue;
            }
            ev = events.poll() => ev,
        };
        if source.on_event(ev, writer_done).await.is_break() {
            break;
        }
    }
    source.stats.broker_connected.store(false, Relaxed);
    if !writer_done {
        writer.await?;
    }
    Ok(())
}

/// Room for one batch in the writer's queue (`None`: no writer).
async fn reserve(forward: &Option<mpsc::Sender<Incoming>>) -> Option<mpsc::Permit<'_, Incoming>> {
    forward.as_ref()?.reserve().await.ok()
}

/// Most batches the MQTT loop keeps while the writer's queue is full
/// (besides `writer.max_waiting_bytes`). The loop never waits for the
/// writer: the writer's acks leave through this loop, so waiting here for
/// room in the writer's queue while the writer waited for room in the
/// client's request queue stalled both for good (5,000 devices sending at
/// once; tests/tests/burst.rs). Past the limits a batch is released to the
/// broker unstored and counted (`writer_backlog`); its device sends it
/// again after its ack timeout.
const MAX_WAITING: usize = 32_768;

/// Spawns the writer task; returns it and where batches go.
fn start_writer(
    writer: writer::Writer,
    shutdown: CancellationToken,
) -> (JoinHandle<()>, mpsc::Sender<Incoming>) {
    let (tx, rx) = mpsc::channel::<Incoming>(1024);
    (tokio::spawn(writer::run(writer, rx, shutdown)), tx)
}

/// Spawns [`side_channel`]; returns where statuses and events go.
fn start_side_channel(
    out: Outputs,
    stats: Arc<Stats>,
    commands: (AsyncClient, Topics),
) -> mpsc::Sender<Accepted> {
    let (status_tx, status_rx) = mpsc::channel::<Accepted>(1024);
    tokio::spawn(side_channel(status_rx, out.sink, out.live, stats, commands));
    status_tx
}

/// The configured client id, or a random one.
fn client_id(config: &Config) -> String {
    if config.broker.client_id.is_empty() {
        format!("aeris-gateway-{:08x}", crate::mqtt::random_suffix())
    } else {
        config.broker.client_id.clone()
    }
}

/// The source's side of the broker connection and where it hands what
/// arrives.
struct Source {
    config: Arc<Config>,
    topics: Topics,
    client: AsyncClient,
    client_id: String,
    /// The shared subscriptions: batches, statuses, events, config reports.
    filters: [String; 4],
    stats: Arc<Stats>,
    /// Batches to the writer; `None` once shutting down.
    forward: Option<mpsc::Sender<Incoming>>,
    /// Statuses and events to [`side_channel`].
    side: mpsc::Sender<Accepted>,
    backoff: Backoff,
    /// Batches waiting for room in the writer's queue, oldest first
    /// ([`MAX_WAITING`]), and their payloads' size.
    waiting: VecDeque<Incoming>,
    waiting_bytes: usize,
}

impl Source {
    fn new(
        config: Arc<Config>,
        topics: Topics,
        client: AsyncClient,
        client_id: String,
        stats: Arc<Stats>,
        forward: mpsc::Sender<Incoming>,
        side: mpsc::Sender<Accepted>,
    ) -> Source {
        let group = &config.broker.share_group;
        let filters = [
            Channel::UpBatch,
            Channel::UpStatus,
            Channel::UpEvent,
            Channel::UpConfig,
        ]
        .map(|c| topics.shared(group, c));
        Source {
            config,
            topics,
            client,
            client_id,
            filters,
            stats,
            forward: Some(forward),
            side,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
            waiting: VecDeque::new(),
            waiting_bytes: 0,
        }
    }

    /// Acts on one event of the MQTT event loop (after an error, waits out
    /// the backoff); `Break` ends the loop.
    async fn on_event(
        &mut self,
        ev: Result<Event, ConnectionError>,
        writer_done: bool,
    ) -> ControlFlow<()> {
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                self.backoff.reset();
                self.subscribe();
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                // Ready only once the broker confirmed the subscriptions.
                self.stats.broker_connected.store(true, Relaxed);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => return self.hand_on(&p),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return ControlFlow::Break(()),
            Ok(_) => {}
            Err(e) => {
                let was_connected = self.stats.broker_connected.swap(false, Relaxed);
                if writer_done {
                    return ControlFlow::Break(());
                }
                let reason = crate::mqtt::failure_reason(&e);
                let backoff = self.backoff.next_delay();
                self.report_failure(&e, reason, was_connected, backoff);
                tokio::time::sleep(backoff).await;
            }
        }
        ControlFlow::Continue(())
    }

    fn subscribe(&self) {
        info!(client_id = %self.client_id, filter = %self.filters[0], "connected to broker");
        for f in &self.filters {
            if let Err(e) = self.client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                warn!(error = %e, "cannot queue subscription");
            }
        }
    }

    /// Batches go to the writer, which acks them after the commit;
    /// statuses, events and rejected messages are acked at once. `Break`
    /// when the writer is gone.
    fn hand_on(&mut self, p: &Publish) -> ControlFlow<()> {
        // Without a forward (shutting down) the message stays unacked: the
        // broker forgets it with the clean session, and the device sends it
        // again after its ack timeout.
        let Some(tx) = self.forward.clone() else {
            return ControlFlow::Continue(());
        };
        match accept(&self.topics, &self.stats, p) {
            Some(Accepted::Batch(incoming)) => {
                if !self.waiting.is_empty() {
                    self.wait(incoming);
                    return ControlFlow::Continue(());
                }
                match tx.try_send(incoming) {
                    Ok(()) => {}
                    Err(TrySendError::Full(incoming)) => self.wait(incoming),
                    Err(TrySendError::Closed(_)) => return ControlFlow::Break(()),
                }
            }
            Some(other) => {
                // Status and events are not on the ack path: acked to the
                // broker at once, handled on the side.
                if self.side.try_send(other).is_err() {
                    self.stats.reject("side_channel_full");
                }
                let _ = self.client.try_ack(p);
            }
            None => {
                let _ = self.client.try_ack(p);
            }
        }
        ControlFlow::Continue(())
    }

    /// Keeps `incoming` until the writer has room, or past the limits
    /// releases it to the broker unstored ([`MAX_WAITING`]).
    fn wait(&mut self, incoming: Incoming) {
        let size = incoming.publish.payload.len();
        let max_bytes = self.config.writer.max_waiting_bytes;
        if self.waiting.len() >= MAX_WAITING || self.waiting_bytes + size > max_bytes {
            self.stats.reject("writer_backlog");
            debug!(device = %incoming.batch.device, "writer backlog full: batch not taken; the device sends it again");
            let _ = self.client.try_ack(&incoming.publish);
            return;
        }
        self.waiting_bytes += size;
        self.waiting.push_back(incoming);
    }

    /// Logs a lost connection, or counts and logs a failed attempt.
    fn report_failure(
        &self,
        e: &ConnectionError,
        reason: &'static str,
        was_connected: bool,
        backoff: Duration,
    ) {
        if was_connected {
            warn!(error = %e, reason, retry_in = ?backoff, "broker connection lost");
            return;
        }
        self.stats.broker_connect_failure(reason);
        let broker = &self.config.broker;
        if reason == "tls" {
            error!(error = %e, reason, broker = %format!("{}:{}", broker.host, broker.port),
                retry_in = ?backoff, "TLS with the broker failed: check broker.tls (CA, certificate, key) and broker.host against the broker's certificate");
        } else {
            warn!(error = %e, reason, retry_in = ?backoff, "cannot connect to the broker");
        }
    }
}

/// What the gateway checks of a message that arrived on `device`'s topic
/// before it goes anywhere: it decodes (format version, layout, size caps,
/// the message's own validation) and names that device. `Err` holds the
/// metric reason and the error text. Public for the decode fuzzer
/// (`aeris-fuzz-decode` in tests/), which drives exactly this path.
pub fn check<T: aeris_wire::WireMessage>(
    device: &str,
    payload: &[u8],
    named: impl Fn(&T) -> &str,
) -> Result<T, (&'static str, String)> {
    let msg = decode::<T>(payload).map_err(|e| (e.reason(), e.to_string()))?;
    authorize(device, named(&msg)).map_err(|e| (e.reason(), e.to_string()))?;
    Ok(msg)
}

/// Decodes and authorizes one message; a rejected one is counted, logged
/// and dropped (the caller acks it to the broker so it is not redelivered).
fn accept(topics: &Topics, stats: &Stats, p: &Publish) -> Option<Accepted> {
    let verdict = match topics.parse(&p.topic) {
        Ok((device, Channel::UpBatch)) => {
            check::<Batch>(device, &p.payload, |b| &b.device).map(|batch| {
                Accepted::Batch(Incoming {
                    batch,
                    publish: p.clone(),
                    received: std::time::Instant::now(),
                })
            })
        }
        Ok((device, Channel::UpStatus)) => {
            check::<Status>(device, &p.payload, |s| &s.device).map(Accepted::Status)
        }
        Ok((device, Channel::UpEvent)) => {
            check::<DeviceEvent>(device, &p.payload, |e| &e.device).map(Accepted::Event)
        }
        Ok((device, Channel::UpConfig)) => {
            check::<ConfigReport>(device, &p.payload, |r| &r.device).map(Accepted::Config)
        }
        _ => Err(("unexpected_topic", format!("topic {}", p.topic))),
    };
    match verdict {
        Ok(a) => {
            match &a {
                Accepted::Batch(_) => stats.batches_received.inc(),
                Accepted::Status(_) => stats.statuses_received.inc(),
                Accepted::Event(_) | Accepted::Config(_) => 0,
            };
            Some(a)
        }
        Err((reason, error)) => {
            stats.reject(reason);
            warn!(topic = %p.topic, reason, error = %error, "message rejected");
            None
        }
    }
}

/// Statuses go to the database (data debt for the API); alerts to the live
/// view's pub/sub; config reports to the database, and a device that runs
/// another version than its desired one is sent it.
async fn side_channel(
    mut rx: mpsc::Receiver<Accepted>,
    sink: Arc<dyn Sink>,
    live: Arc<dyn Live>,
    stats: Arc<Stats>,
    (client, topics): (AsyncClient, Topics),
) {
    while let Some(msg) = rx.recv().await {
        match msg {
            Accepted::Config(r) => {
                crate::fleet_config::on_report(sink.as_ref(), &stats, &r, |cmd| {
                    crate::fleet_config::send::publish_on(&client, &topics, &r.device, cmd)
                })
                .await
            }
            Accepted::Status(s) => {
                if let Err(e) = sink.record_status(&s).await {
                    stats.reject("status_not_stored");
                    warn!(device = %s.device, error = %e, "device status not stored");
                }
            }
            Accepted::Event(e) if matches!(e.kind, EventKind::Alert | EventKind::SensorFault) => {
                let json = serde_json::json!({
                    "device": e.device, "ts_ms": e.ts_ms,
                    "kind": format!("{:?}", e.kind), "message": e.message,
                })
                .to_string();
                if let Err(err) = live.alert(&json).await {
                    debug!(device = %e.device, error = %err, "alert not published");
                }
            }
            Accepted::Event(_) | Accepted::Batch(_) => {}
        }
    }
}
