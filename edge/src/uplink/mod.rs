//! Uplink to the cloud broker: batches out, acks in.
//!
//! The MQTT event loop runs in its own task and reports connection changes,
//! acks and commands over a channel; this module's loop reads contiguous runs
//! of held readings from the buffer, publishes them as [`Batch`]es at QoS 1,
//! and deletes what each [`Ack`] covers. [`outbox::Outbox`] holds the
//! bookkeeping. A batch is closed when it is full, when the run ends at a
//! gap, or when its first reading has waited `batch_max_age`.
//!
//! Live first: at every (re)connect the newest `batch_max_readings` held
//! readings and everything after them form the live lane, sent first; the
//! older backlog drains behind it in seq order, holding at most
//! `uplink.backlog_share` of the in-flight window, so the map is current
//! within one round trip of reconnecting. Batches go out in the columnar
//! layout (`aeris_wire::columnar`) unless `uplink.encoding = "postcard"`.

pub mod config;
pub mod drain;
pub mod metrics;
pub mod outbox;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aeris_runtime::Backoff;
use aeris_wire::{
    decode, encode, now_ms, Ack, Batch, Channel, Command, CommandKind, DeviceState,
    Event as WireEvent, Loss, ModelVersion, Reading, Status, Topics,
};
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use std::collections::VecDeque;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::buffer::{Buffer, Snapshot};
use crate::health::Probes;
pub use config::{BatchEncoding, CloudConfig, TlsConfig, UplinkConfig};
use drain::DrainRate;
pub use metrics::Metrics;
use outbox::{run_len, Lane, Outbox};

enum Link {
    Up,
    Down,
    Ack(Ack),
    Resend(u64),
    /// The cloud holds other readings under these seqs (see
    /// `CommandKind::Renumber`).
    Renumber {
        id: u64,
        first: u64,
        last: u64,
        next_seq: u64,
    },
}

/// Where the `down/cmd` commands the uplink does not act on itself go
/// (everything but `Resend` and `Renumber`): the agent routes them.
pub type Commands = mpsc::UnboundedSender<Command>;

/// What the uplink is built from: its own sections and the agent's id and
/// shutdown grace.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This device's id: client id and topic level.
    pub device_id: String,
    pub cloud: CloudConfig,
    pub uplink: UplinkConfig,
    /// How long a shutdown may spend getting held readings acked.
    pub shutdown_grace: Duration,
}

/// Identity of this agent run, for the status heartbeat.
#[derive(Debug, Clone)]
pub struct Identity {
    pub boot_id: u64,
    pub agent_version: String,
}

pub struct Uplink {
    config: Arc<Settings>,
    topics: Topics,
    buffer: Buffer,
    cx: Context,
    identity: Identity,
    client: AsyncClient,
    outbox: Outbox,
    connected: bool,
    /// When the run at `next_send` was first seen not full.
    pending_since: Option<Instant>,
    /// Live readings read while their batch fills, and the seq they were
    /// read from; dropped when the live lane moves elsewhere.
    live_rows: Option<(u64, Vec<(u64, Reading)>)>,
    /// Acked seq ranges not yet recorded in the buffer, adjacent ones merged.
    acks: Vec<(u64, u64)>,
    /// Events waiting for a connection, oldest first, bounded.
    unsent_events: VecDeque<WireEvent>,
    drain: DrainRate,
}

/// What the uplink reports into and reads from beside the buffer.
#[derive(Clone)]
pub struct Context {
    pub metrics: Arc<Metrics>,
    /// Where the uplink loop proves it is alive.
    pub probes: Arc<Probes>,
    /// The active models, for the status heartbeat.
    pub models: Arc<dyn Fn() -> Vec<ModelVersion> + Send + Sync>,
}

/// Events kept while offline; older ones are dropped (and counted) first.
const MAX_UNSENT_EVENTS: usize = 256;

/// Runs until `stop` is cancelled, then tries for up to `shutdown_grace` to
/// get everything held acked, publishes the offline status and disconnects.
/// `tls` (from [`tls::client_config`]) puts the link on TLS.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: Arc<Settings>,
    tls: Option<Arc<rustls::ClientConfig>>,
    buffer: Buffer,
    cx: Context,
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
    let will = status(
        &config.device_id,
        &identity,
        DeviceState::Offline,
        None,
        Vec::new(),
        None,
    );
    opts.set_keep_alive(config.cloud.keep_alive)
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 16 << 20)
        .set_last_will(LastWill::new(
            topics.status(&config.device_id),
            encode(&will),
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(tls) = tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    }
    let (client, events) = AsyncClient::new(opts, 256);
    let (link_tx, link_rx) = mpsc::unbounded_channel();
    let link_stop = CancellationToken::new();
    let link = tokio::spawn(drive(
        events,
        client.clone(),
        topics.clone(),
        config.device_id.clone(),
        link_tx,
        cx.metrics.clone(),
        commands,
        link_stop.clone(),
    ));
    let mut up = Uplink {
        outbox: Outbox::new(
            config.uplink.max_inflight_batches,
            config.uplink.backlog_share,
            config.uplink.ack_timeout,
        ),
        config,
        topics,
        buffer,
        cx,
        identity,
        client,
        connected: false,
        pending_since: None,
        live_rows: None,
        acks: Vec::new(),
        unsent_events: VecDeque::new(),
        drain: DrainRate::default(),
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
    snapshot: Option<&Snapshot>,
    models: Vec<ModelVersion>,
    drain_eta_s: Option<u64>,
) -> Status {
    let s = snapshot.cloned().unwrap_or_default();
    Status {
        device: device.to_owned(),
        boot_id: id.boot_id,
        ts_ms: now_ms(),
        state,
        agent_version: id.agent_version.clone(),
        last_seq: s.next_seq.saturating_sub(1),
        queued_readings: s.depth.readings,
        queued_bytes: s.depth.bytes,
        oldest_unsent_ms: s.depth.oldest_ts_ms,
        losses: s
            .losses
            .into_iter()
            .map(|(reason, count)| Loss { reason, count })
            .collect(),
        models,
        drain_eta_s,
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
            self.cx.probes.live.beat(&self.cx.probes.live.uplink);
            if self.connected {
                self.send_ready(drain_until.is_some()).await?;
            }
            if let Some(until) = drain_until {
                let held = match self.buffer.snapshot().await {
                    Ok(s) => s.depth.readings,
                    Err(crate::buffer::BufferError::Closed) => return Ok(()),
                    Err(_) => 1,
                };
                if held == 0 || tokio::time::Instant::now() >= until {
                    if held > 0 {
                        warn!(
                            held,
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
                Some(ev) = events.recv() => self.queue_event(ev),
                ev = link.recv() => match ev {
                    Some(ev) => {
                        // Acks come in bursts (one per batch of a gateway
                        // commit): take what is queued, then record the
                        // acked ranges in as few buffer transactions as
                        // possible.
                        self.on_link(ev).await?;
                        for _ in 0..1024 {
                            let Ok(ev) = link.try_recv() else { break };
                            self.on_link(ev).await?;
                        }
                        self.record_acks().await;
                    }
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
                // The newest full batch and what comes after it are live.
                let next_seq = match self.buffer.snapshot().await {
                    Ok(s) => s.next_seq,
                    Err(_) => self.buffer.last_snapshot().next_seq,
                };
                let batch = self.config.uplink.batch_max_readings as u64;
                self.outbox.reset(next_seq.saturating_sub(batch));
                self.pending_since = None;
                self.live_rows = None;
                self.cx.metrics.connects.inc();
                self.publish_status(DeviceState::Online).await?;
                self.flush_events();
            }
            Link::Down => self.connected = false,
            Link::Ack(ack) => {
                for sent_at in self.outbox.acked(ack.first_seq, ack.last_seq) {
                    self.cx
                        .metrics
                        .ack_latency
                        .observe(sent_at.elapsed().as_secs_f64());
                }
                match self.acks.last_mut() {
                    Some(run) if run.1.checked_add(1) == Some(ack.first_seq) => {
                        run.1 = ack.last_seq
                    }
                    _ => self.acks.push((ack.first_seq, ack.last_seq)),
                }
            }
            Link::Resend(from) => {
                self.record_acks().await;
                match self.buffer.unack_from(from).await {
                    Ok(n) => info!(
                        from_seq = from,
                        acked_again_unsent = n,
                        "cloud asked to re-send"
                    ),
                    Err(e) => {
                        warn!(error = %e, from_seq = from, "cannot mark readings for re-send")
                    }
                }
                self.outbox.rewind_to(from);
            }
            Link::Renumber {
                id,
                first,
                last,
                next_seq,
            } => self.renumber(id, first, last, next_seq).await?,
        }
        Ok(())
    }

    /// Moves the readings the cloud cannot take under their seqs to new
    /// ones, then sends everything held again from the new live mark.
    async fn renumber(
        &mut self,
        id: u64,
        first: u64,
        last: u64,
        next_seq: u64,
    ) -> anyhow::Result<()> {
        self.record_acks().await;
        match self.buffer.renumber(first, last, next_seq).await {
            Ok(done) => {
                if done.moved > 0 {
                    warn!(
                        first_seq = first,
                        last_seq = last,
                        moved = done.moved,
                        first_new_seq = done.first_new,
                        "the cloud holds other readings under these seqs (buffer lost or restored?); readings renumbered"
                    );
                    self.queue_event(WireEvent {
                        device: self.config.device_id.clone(),
                        ts_ms: now_ms(),
                        kind: aeris_wire::EventKind::Agent,
                        message: format!(
                            "renumber {id}: seqs {first}..={last} are held in the cloud by other readings; {} readings moved to seqs from {}",
                            done.moved, done.first_new
                        ),
                    });
                }
                let batch = self.config.uplink.batch_max_readings as u64;
                self.outbox.reset(done.next_seq.saturating_sub(batch));
                self.pending_since = None;
                self.live_rows = None;
            }
            Err(e) => {
                warn!(error = %e, first_seq = first, last_seq = last, "cannot renumber readings")
            }
        }
        Ok(())
    }

    /// Records the acked ranges gathered by [`Uplink::on_link`] in the buffer.
    async fn record_acks(&mut self) {
        for (first, last) in std::mem::take(&mut self.acks) {
            match self.buffer.ack(first, last).await {
                Ok(n) => {
                    self.cx.metrics.readings_acked.inc_by(n as u64);
                }
                // The readings stay unsent and go again after the next ack
                // timeout; the cloud stores them once.
                Err(e) => {
                    warn!(error = %e, first_seq = first, last_seq = last, "cannot record an ack in the buffer")
                }
            }
        }
    }

    /// Publishes every batch that is ready while the outbox has room: the
    /// live lane first, then the backlog within its share.
    async fn send_ready(&mut self, flush: bool) -> anyhow::Result<()> {
        loop {
            if self.outbox.has_room(Lane::Live) && self.send_next(Lane::Live, flush).await? {
                continue;
            }
            if self.outbox.has_room(Lane::Backlog) && self.send_next(Lane::Backlog, true).await? {
                continue;
            }
            return Ok(());
        }
    }

    /// Up to `max` held readings from `from` on; `None` when the buffer
    /// cannot answer now (tried again on the next event).
    async fn read(&self, from: u64, max: usize) -> Option<Vec<(u64, Reading)>> {
        let (rows, corrupt) = match self.buffer.read_from(from, max).await {
            Ok(held) => held,
            Err(crate::buffer::BufferError::Closed) => return None,
            Err(e) => {
                warn!(error = %e, "cannot read the buffer; trying again on the next event");
                return None;
            }
        };
        if !corrupt.is_empty() {
            warn!(count = corrupt.len(), first_seq = corrupt[0].seq, error = %corrupt[0].error, "corrupt buffered readings removed");
        }
        Some(rows)
    }

    /// Publishes the next batch of `lane` if one is ready; returns whether
    /// it did.
    async fn send_next(&mut self, lane: Lane, flush: bool) -> anyhow::Result<bool> {
        let max = self.config.uplink.batch_max_readings;
        let (from, end) = self.outbox.next_send(lane);
        let mut rows = match lane {
            // A live batch fills over several commits: keep what was read
            // and read only what came after it.
            Lane::Live => {
                let mut rows = match self.live_rows.take() {
                    Some((f, rows)) if f == from => rows,
                    _ => Vec::new(),
                };
                if rows.len() < max {
                    let next = rows.last().map(|r| r.0 + 1).unwrap_or(from);
                    match self.read(next, max - rows.len()).await {
                        Some(more) => rows.extend(more),
                        None => {
                            self.live_rows = Some((from, rows));
                            return Ok(false);
                        }
                    }
                }
                rows
            }
            Lane::Backlog => match self.read(from, max).await {
                Some(rows) => rows,
                None => return Ok(false),
            },
        };
        // The backlog stops at the live mark; a run cut there is complete.
        let reached_end = rows.last().is_some_and(|(seq, _)| *seq >= end);
        rows.retain(|(seq, _)| *seq < end);
        let Some(first) = rows.first().map(|r| r.0) else {
            match lane {
                Lane::Live => self.pending_since = None,
                Lane::Backlog => self.outbox.backlog_sent(),
            }
            return Ok(false);
        };
        let run = run_len(&rows);
        let full = run >= max || run < rows.len() || reached_end;
        if lane == Lane::Live {
            let waited = *self.pending_since.get_or_insert_with(Instant::now);
            if !full && !flush && waited.elapsed() < self.config.uplink.batch_max_age {
                self.live_rows = Some((from, rows));
                return Ok(false);
            }
            self.pending_since = None;
        }
        let readings: Vec<Reading> = rows.into_iter().take(run).map(|(_, r)| r).collect();
        let mut batch = Batch {
            device: self.config.device_id.clone(),
            first_seq: first,
            readings,
        };
        // The gateway refuses a batch that would decode into more than
        // this (many long-named values per reading); the rest goes next.
        while batch.readings.len() > 1
            && aeris_wire::columnar::decoded_bytes(&batch) > aeris_wire::columnar::MAX_DECODED_BYTES
        {
            batch.readings.truncate(batch.readings.len() / 2);
            self.live_rows = None;
        }
        let n = batch.readings.len() as u64;
        let bytes = match self.config.uplink.encoding {
            BatchEncoding::Columnar => aeris_wire::columnar::encode(&batch),
            BatchEncoding::Postcard => encode(&batch),
        };
        let size = bytes.len() as u64;
        let last = first + n - 1;
        // Marked before it leaves (the buffer applies queued marks before
        // any disk-budget work): from now on the cloud may hold these rows,
        // so the budget must not fold them into aggregates.
        if let Err(e) = self.buffer.mark_sent_queued(first, last).await {
            warn!(error = %e, first_seq = first, "cannot mark a batch as sent; trying again on the next event");
            return Ok(false);
        }
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
        self.outbox.sent(first, last, Instant::now());
        let m = &self.cx.metrics;
        m.batches_sent.inc();
        m.readings_sent.inc_by(n);
        m.bytes_sent.inc_by(size);
        if lane == Lane::Backlog {
            m.backlog_batches_sent.inc();
        }
        Ok(true)
    }

    /// Holds `ev` for publishing (bounded; the oldest go first) and
    /// publishes what it can.
    fn queue_event(&mut self, ev: WireEvent) {
        self.unsent_events.push_back(ev);
        if self.unsent_events.len() > MAX_UNSENT_EVENTS {
            self.unsent_events.pop_front();
            self.cx.metrics.events_dropped.inc();
        }
        self.flush_events();
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

    async fn publish_status(&mut self, state: DeviceState) -> anyhow::Result<()> {
        let snapshot = match self.buffer.snapshot().await {
            Ok(s) => s,
            // The last known state, when the buffer cannot answer.
            Err(_) => self.buffer.last_snapshot(),
        };
        let eta = self.drain.observe(Instant::now(), snapshot.depth.readings);
        let s = status(
            &self.config.device_id,
            &self.identity,
            state,
            Some(&snapshot),
            (self.cx.models)(),
            eta,
        );
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
#[allow(clippy::too_many_arguments)]
async fn drive(
    mut events: EventLoop,
    client: AsyncClient,
    topics: Topics,
    device: String,
    tx: mpsc::UnboundedSender<Link>,
    metrics: Arc<Metrics>,
    commands: Commands,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut connected = false;
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                connected = true;
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
                                CommandKind::Renumber {
                                    first_seq,
                                    last_seq,
                                    next_seq,
                                },
                        }) => {
                            let _ = tx.send(Link::Renumber {
                                id,
                                first: first_seq,
                                last: last_seq,
                                next_seq,
                            });
                        }
                        // Model and agent updates, and commands this
                        // version does not know, are the agent's to route.
                        Ok(cmd) => {
                            let _ = commands.send(cmd);
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
                if std::mem::take(&mut connected) {
                    metrics.disconnects.inc();
                    warn!(error = %e, retry_in = ?wait, "cloud broker connection lost");
                } else {
                    let reason = tls::failure_reason(&e);
                    metrics.connect_failed(reason);
                    warn!(reason, error = %e, retry_in = ?wait, "cannot connect to the cloud broker");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
