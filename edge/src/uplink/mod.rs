//! Uplink to the cloud broker: batches out, acks in.
//!
//! The MQTT event loop runs in its own task and reports connection changes,
//! acks and commands over a channel; this module's loop reads contiguous runs
//! of held readings from the buffer, publishes them as [`Batch`]es at QoS 1,
//! and deletes what each [`Ack`] covers. [`outbox::Outbox`] holds the
//! bookkeeping. A batch is closed when it is full, when the run ends at a
//! gap, or when its first reading has waited `batch_max_age`.

pub mod backoff;
pub mod outbox;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aeris_wire::{
    decode, encode, Ack, Batch, Channel, Command, CommandKind, DeviceState, Event as WireEvent,
    Loss, Status, Topics,
};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use std::collections::VecDeque;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::buffer::Buffer;
use crate::config::Config;
use crate::health::Stats;
use crate::infer::store::ModelCommand;
use crate::ingest::now_ms;
use backoff::Backoff;
use outbox::{leading_run, Outbox};

enum Link {
    Up,
    Down,
    Ack(Ack),
    Resend(u64),
}

/// Where `down/cmd` commands go: the model loader (when inference runs)
/// and the OTA installer.
pub struct Commands {
    pub models: Option<mpsc::Sender<ModelCommand>>,
    pub ota: mpsc::Sender<crate::ota::OtaCommand>,
}

/// Identity of this agent run, for the status heartbeat.
#[derive(Debug, Clone)]
pub struct Identity {
    pub boot_id: u64,
    pub agent_version: String,
}

pub struct Uplink {
    config: Arc<Config>,
    topics: Topics,
    buffer: Buffer,
    stats: Arc<Stats>,
    identity: Identity,
    client: AsyncClient,
    outbox: Outbox,
    connected: bool,
    /// When the run at `next_send` was first seen not full.
    pending_since: Option<Instant>,
    /// Events waiting for a connection, oldest first, bounded.
    unsent_events: VecDeque<WireEvent>,
}

/// Events kept while offline; older ones are dropped (and counted) first.
const MAX_UNSENT_EVENTS: usize = 256;

/// Runs until `stop` is cancelled, then tries for up to `shutdown_grace` to
/// get everything held acked, publishes the offline status and disconnects.
pub async fn run(
    config: Arc<Config>,
    buffer: Buffer,
    stats: Arc<Stats>,
    identity: Identity,
    stop: CancellationToken,
    event_rx: mpsc::UnboundedReceiver<WireEvent>,
    commands: Commands,
) -> anyhow::Result<()> {
    let topics = Topics::new(&config.cloud.prefix)?;
    let mut opts = MqttOptions::new(
        config.device_id.clone(),
        config.cloud.host.clone(),
        config.cloud.port,
    );
    let will = status(&config.device_id, &identity, DeviceState::Offline, None);
    opts.set_keep_alive(config.cloud.keep_alive)
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 16 << 20)
        .set_last_will(LastWill::new(
            topics.status(&config.device_id),
            encode(&will),
            QoS::AtLeastOnce,
            true,
        ));
    let (client, events) = AsyncClient::new(opts, 256);
    let (link_tx, link_rx) = mpsc::unbounded_channel();
    let link_stop = CancellationToken::new();
    let link = tokio::spawn(drive(
        events,
        client.clone(),
        topics.clone(),
        config.device_id.clone(),
        link_tx,
        commands,
        link_stop.clone(),
    ));
    let mut up = Uplink {
        outbox: Outbox::new(
            config.uplink.max_inflight_batches,
            config.uplink.ack_timeout,
        ),
        config,
        topics,
        buffer,
        stats,
        identity,
        client,
        connected: false,
        pending_since: None,
        unsent_events: VecDeque::new(),
    };
    let result = up.serve(link_rx, event_rx, stop).await;
    let _ = up.publish_status(DeviceState::Offline).await;
    let _ = up.client.disconnect().await;
    // Give the event loop a moment to write the offline status and DISCONNECT.
    let _ = tokio::time::timeout(Duration::from_secs(1), link).await;
    link_stop.cancel();
    result
}

fn status(
    device: &str,
    id: &Identity,
    state: DeviceState,
    depth: Option<(crate::buffer::Depth, u64)>,
) -> Status {
    let (d, next_seq) = depth.unwrap_or_default();
    Status {
        device: device.to_owned(),
        boot_id: id.boot_id,
        ts_ms: now_ms(),
        state,
        agent_version: id.agent_version.clone(),
        last_seq: next_seq.saturating_sub(1),
        queued_readings: d.readings,
        queued_bytes: d.bytes,
        oldest_unsent_ms: d.oldest_ts_ms,
        losses: Vec::<Loss>::new(),
    }
}

impl Uplink {
    async fn serve(
        &mut self,
        mut link: mpsc::UnboundedReceiver<Link>,
        mut events: mpsc::UnboundedReceiver<WireEvent>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut heartbeat = tokio::time::interval(self.config.cloud.status_interval);
        let mut drain_until: Option<tokio::time::Instant> = None;
        let mut beat = tokio::time::interval(crate::health::systemd::BEAT_EVERY);
        loop {
            self.stats.live.beat(&self.stats.live.uplink);
            if self.connected {
                self.send_ready(drain_until.is_some()).await?;
            }
            if let Some(until) = drain_until {
                let (depth, _) = self.buffer.depth().await?;
                if depth.readings == 0 || tokio::time::Instant::now() >= until {
                    if depth.readings > 0 {
                        warn!(
                            held = depth.readings,
                            "shutdown grace over; readings stay buffered for the next start"
                        );
                    }
                    return Ok(());
                }
            }
            let deadline = self.next_deadline();
            tokio::select! {
                _ = stop.cancelled(), if drain_until.is_none() => {
                    drain_until = Some(tokio::time::Instant::now() + self.config.shutdown_grace);
                }
                _ = self.buffer.appended.notified() => {}
                Some(ev) = events.recv() => {
                    self.unsent_events.push_back(ev);
                    if self.unsent_events.len() > MAX_UNSENT_EVENTS {
                        self.unsent_events.pop_front();
                        self.stats.events_dropped.fetch_add(1, Relaxed);
                    }
                    self.flush_events();
                }
                ev = link.recv() => match ev {
                    Some(ev) => self.on_link(ev).await?,
                    None => return Ok(()),
                },
                _ = sleep_until_opt(deadline) => {
                    if self.outbox.expire(Instant::now()) {
                        debug!("ack timeout; sending held readings again");
                    }
                }
                _ = heartbeat.tick() => {
                    if self.connected {
                        self.publish_status(DeviceState::Online).await?;
                    }
                }
                _ = sleep_until_opt(drain_until.map(|d| d.into_std())) => {}
                _ = beat.tick() => {}
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let age = self
            .pending_since
            .map(|t| t + self.config.uplink.batch_max_age);
        match (age, self.outbox.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn on_link(&mut self, ev: Link) -> anyhow::Result<()> {
        match ev {
            Link::Up => {
                self.connected = true;
                self.outbox.reset();
                self.stats.uplink_connects.fetch_add(1, Relaxed);
                self.publish_status(DeviceState::Online).await?;
                self.flush_events();
            }
            Link::Down => self.connected = false,
            Link::Ack(ack) => {
                let deleted = self.buffer.delete(ack.first_seq, ack.last_seq).await?;
                self.outbox.acked(ack.first_seq, ack.last_seq);
                self.stats.readings_acked.fetch_add(deleted as u64, Relaxed);
            }
            Link::Resend(from) => {
                info!(from_seq = from, "cloud asked to re-send");
                self.outbox.rewind_to(from);
            }
        }
        Ok(())
    }

    /// Publishes every batch that is ready while the outbox has room.
    async fn send_ready(&mut self, flush: bool) -> anyhow::Result<()> {
        let max = self.config.uplink.batch_max_readings;
        while self.outbox.has_room() {
            let (rows, corrupt) = self.buffer.read_from(self.outbox.next_send(), max).await?;
            if !corrupt.is_empty() {
                self.stats
                    .lost_corrupt
                    .fetch_add(corrupt.len() as u64, Relaxed);
                warn!(count = corrupt.len(), first_seq = corrupt[0].seq, error = %corrupt[0].error, "corrupt buffered readings removed");
            }
            let Some((first, readings, ended_at_gap)) = leading_run(rows) else {
                self.pending_since = None;
                return Ok(());
            };
            let full = readings.len() >= max || ended_at_gap;
            let waited = *self.pending_since.get_or_insert_with(Instant::now);
            if !full && !flush && waited.elapsed() < self.config.uplink.batch_max_age {
                return Ok(());
            }
            let n = readings.len() as u64;
            let batch = Batch {
                device: self.config.device_id.clone(),
                first_seq: first,
                readings,
            };
            let bytes = encode(&batch);
            // `publish` only queues for the event loop; a lost connection
            // shows up as Link::Down and the outbox resends after reconnect.
            self.client
                .publish(
                    self.topics.batch(&self.config.device_id),
                    QoS::AtLeastOnce,
                    false,
                    bytes,
                )
                .await?;
            self.outbox.sent(first, first + n - 1, Instant::now());
            self.pending_since = None;
            self.stats.batches_sent.fetch_add(1, Relaxed);
            self.stats.readings_sent.fetch_add(n, Relaxed);
        }
        Ok(())
    }

    /// Queues held events for publishing while connected; one that cannot be
    /// queued stays for the next try.
    fn flush_events(&mut self) {
        if !self.connected {
            return;
        }
        while let Some(ev) = self.unsent_events.pop_front() {
            let topic = self.topics.event(&self.config.device_id);
            if self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, encode(&ev))
                .is_err()
            {
                self.unsent_events.push_front(ev);
                return;
            }
        }
    }

    async fn publish_status(&self, state: DeviceState) -> anyhow::Result<()> {
        let depth = self.buffer.depth().await?;
        self.stats.buffered.store(depth.0.readings, Relaxed);
        let s = status(&self.config.device_id, &self.identity, state, Some(depth));
        self.client
            .publish(
                self.topics.status(&self.config.device_id),
                QoS::AtLeastOnce,
                true,
                encode(&s),
            )
            .await?;
        Ok(())
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Polls the MQTT event loop, reconnecting with backoff, and turns what
/// arrives into [`Link`] events.
async fn drive(
    mut events: EventLoop,
    client: AsyncClient,
    topics: Topics,
    device: String,
    tx: mpsc::UnboundedSender<Link>,
    commands: Commands,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                info!("connected to cloud broker");
                for ch in [Channel::DownAck, Channel::DownCmd] {
                    if let Err(e) =
                        client.try_subscribe(topics.topic(&device, ch), QoS::AtLeastOnce)
                    {
                        warn!(error = %e, "cannot queue subscription");
                    }
                }
                let _ = tx.send(Link::Up);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = p.topic.as_str();
                match topics.parse(topic) {
                    Ok((d, Channel::DownAck)) if d == device => match decode::<Ack>(&p.payload) {
                        Ok(ack) if ack.device == device => {
                            let _ = tx.send(Link::Ack(ack));
                        }
                        Ok(_) => warn!("ack for another device ignored"),
                        Err(e) => warn!(reason = e.reason(), error = %e, "bad ack ignored"),
                    },
                    Ok((d, Channel::DownCmd)) if d == device => match decode::<Command>(&p.payload)
                    {
                        Ok(Command {
                            kind: CommandKind::Resend { from_seq },
                            ..
                        }) => {
                            let _ = tx.send(Link::Resend(from_seq));
                        }
                        Ok(Command {
                            id,
                            kind:
                                CommandKind::Model {
                                    name,
                                    version,
                                    url,
                                    sha256,
                                    signature,
                                    force,
                                },
                        }) => match &commands.models {
                            Some(tx) => {
                                info!(id, model = %name, %version, "model update requested");
                                let cmd = ModelCommand {
                                    id,
                                    name,
                                    version,
                                    url,
                                    sha256,
                                    signature,
                                    force,
                                };
                                if tx.try_send(cmd).is_err() {
                                    warn!(id, "model loader busy; update dropped, the cloud may send it again");
                                }
                            }
                            None => warn!(id, "model update ignored: inference is disabled"),
                        },
                        Ok(Command {
                            id,
                            kind: CommandKind::Ota { manifest },
                        }) => {
                            info!(id, "agent update offered");
                            let cmd = crate::ota::OtaCommand {
                                id,
                                payload: manifest,
                            };
                            if commands.ota.try_send(cmd).is_err() {
                                warn!(id, "an update is in progress; this one is dropped");
                            }
                        }
                        Ok(cmd) => {
                            warn!(id = cmd.id, "command not supported by this agent version")
                        }
                        Err(e) => warn!(reason = e.reason(), error = %e, "bad command ignored"),
                    },
                    _ => debug!(topic = %topic, "unexpected message ignored"),
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Link::Down);
                let wait = backoff.next_delay();
                warn!(error = %e, retry_in = ?wait, "cloud broker connection lost");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
