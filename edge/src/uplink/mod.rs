//! Uplink to the cloud broker: batches out, acks in.
//!
//! The MQTT event loop runs in its own task (`link.rs`) and reports
//! connection changes, acks and commands over a channel; this module's loop
//! reads contiguous runs of held readings from the buffer, publishes them
//! as [`Batch`](aeris_wire::Batch)es at QoS 1 (`send.rs`), and deletes what
//! each [`Ack`](aeris_wire::Ack) covers (`incoming.rs`). [`outbox::Outbox`]
//! holds the bookkeeping. A batch is closed when it is full, when the run
//! ends at a gap, or when its first reading has waited `batch_max_age`.
//!
//! Live first: at every (re)connect the newest `batch_max_readings` held
//! readings and everything after them form the live lane, sent first; the
//! older backlog drains behind it in seq order, holding at most
//! `uplink.backlog_share` of the in-flight window, so the map is current
//! within one round trip of reconnecting. Batches go out in the columnar
//! layout (`aeris_wire::columnar`) unless `uplink.encoding = "postcard"`.

pub mod config;
mod config_report;
pub mod drain;
mod events;
mod incoming;
mod link;
pub mod metrics;
pub mod outbox;
mod send;
mod status;
pub mod tls;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aeris_wire::{Command, DeviceState, Event as WireEvent, ModelVersion, Topics};
use rumqttc::AsyncClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::buffer::Buffer;
use crate::health::Probes;
pub use config::{BatchEncoding, CloudConfig, TlsConfig, UplinkConfig};
pub use config_report::ConfigState;
use drain::DrainRate;
use link::Link;
pub use metrics::Metrics;
use outbox::Outbox;

/// Where the `down/cmd` commands the uplink does not act on itself go
/// (everything but `Resend` and `Renumber`): the agent routes them.
pub type Commands = mpsc::UnboundedSender<Command>;

/// What the uplink is built from: its own sections and the agent's id and
/// shutdown grace. A new value on [`Context::settings`] applies from the
/// next tick (batch size and age, status interval); the connection's keys
/// only at the next start.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// This device's id: client id and topic level.
    pub device_id: String,
    /// Its fleet groups, named in its config report.
    pub groups: Vec<String>,
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
    live_rows: Option<(u64, crate::buffer::Columns)>,
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
    /// What the agent runs of the cloud's desired configuration; published
    /// on `up/config` at connect and on every change.
    pub config_state: tokio::sync::watch::Receiver<ConfigState>,
    /// This uplink's settings as they change while it runs.
    pub settings: tokio::sync::watch::Receiver<Arc<Settings>>,
}

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
    let opts = link::options(&config, &topics, &identity, tls);
    let (client, events) = AsyncClient::new(opts, 256);
    let (link_tx, link_rx) = mpsc::unbounded_channel();
    let link_stop = CancellationToken::new();
    let link = tokio::spawn(link::drive(
        events,
        client.clone(),
        topics.clone(),
        config.device_id.clone(),
        link_tx,
        cx.metrics.clone(),
        commands,
        link_stop.clone(),
    ));
    let mut up = Uplink::new(config, topics, buffer, cx, identity, client);
    let result = up.serve(link_rx, event_rx, stop).await;
    let _ = up.publish_status(DeviceState::Offline).await;
    let _ = up.client.disconnect().await;
    // Give the event loop a moment to write the offline status and DISCONNECT.
    let _ = tokio::time::timeout(Duration::from_secs(1), link).await;
    link_stop.cancel();
    result
}

impl Uplink {
    fn new(
        config: Arc<Settings>,
        topics: Topics,
        buffer: Buffer,
        cx: Context,
        identity: Identity,
        client: AsyncClient,
    ) -> Uplink {
        Uplink {
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
        }
    }

    /// The state loop: sends what is ready, then waits for the next thing
    /// to act on. Ends when the link task ends, or once a shutdown has got
    /// everything acked or run out of grace.
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
                // Events sent before the stop (an update's "installed" just
                // before its trial) leave before the offline status.
                while let Ok(ev) = events.try_recv() {
                    self.queue_event(ev);
                }
                if self.shutdown_done(until).await {
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
                    Some(ev) => self.on_link_burst(ev, &mut link).await?,
                    None => return Ok(()),
                },
                _ = sleep_until_opt(deadline) => {
                    if self.outbox.expire(Instant::now()) {
                        debug!("ack timeout; sending held readings again");
                    }
                }
                Ok(()) = self.cx.config_state.changed() => {
                    if self.connected {
                        self.publish_config_report().await?;
                    }
                }
                Ok(()) = self.cx.settings.changed() => {
                    let next = self.cx.settings.borrow_and_update().clone();
                    if next.cloud.status_interval != self.config.cloud.status_interval {
                        heartbeat = tokio::time::interval(next.cloud.status_interval);
                    }
                    info!("uplink settings changed; they apply from now on");
                    self.config = next;
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

    /// Whether a shutdown draining until `until` is over: nothing is held
    /// any more, the grace has run out, or the buffer is closed.
    async fn shutdown_done(&self, until: tokio::time::Instant) -> bool {
        let held = match self.buffer.snapshot().await {
            Ok(s) => s.depth.readings,
            Err(crate::buffer::BufferError::Closed) => return true,
            Err(_) => 1,
        };
        if held == 0 || tokio::time::Instant::now() >= until {
            if held > 0 {
                warn!(
                    held,
                    "shutdown grace over; readings stay buffered for the next start"
                );
            }
            return true;
        }
        false
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
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
