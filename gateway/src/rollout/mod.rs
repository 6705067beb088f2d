//! Staged rollout of an agent update: publishes the signed update (the
//! payload of `CommandKind::Ota`, see the edge's `ota::update`) to each
//! device's `down/cmd`, canary devices first, follows their `up/event`
//! outcomes, and halts when failures pass the threshold ([`plan`]).
//! Used by `aeris-gateway rollout` and, through [`driver`], by
//! `POST /api/rollouts`, whose rollouts are stored ([`store`]) and resume
//! after a gateway restart.
//!
//! Invariants: a change of the plan is handed to `on_change` (which stores
//! it) before the updates it decided are published and before the events
//! that caused it are acked to the broker, so a crash at any point
//! re-sends nothing already recorded as sent and loses no outcome the
//! broker delivered: with [`Session::Persistent`] the broker keeps the
//! rollout's subscription, and the events devices send meanwhile, while
//! the gateway is away.

pub mod driver;
pub mod plan;
pub mod store;

use std::future::Future;
use std::time::{Duration, Instant};

use aeris_wire::{decode, encode, Channel, Command, CommandKind, Event, EventKind, Topics};
use rumqttc::{AsyncClient, Event as MqttEvent, Packet, QoS};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::BrokerConfig;
pub use driver::{ConfigRunner, Driver, Metrics, Save};
pub use plan::{select, DeviceOutcome, Plan, Summary};

/// The broker session a rollout follows events with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// A random client id and a clean session (the one-shot CLI).
    Clean,
    /// Client id `aeris-rollout-<command id>` with a kept session, so a
    /// gateway that resumes the rollout gets the events sent while it was
    /// away; the session is dropped when the rollout finishes.
    Persistent,
}

/// Runs `plan` to its end (or `give_up` overall, or until `stop`) through
/// the broker; `on_change` gets each new summary and must have stored it
/// when its future returns `Ok` (an `Err` stops the run). Returns the
/// final summary.
pub async fn run<F, Fut>(
    broker: &BrokerConfig,
    payload: Vec<u8>,
    mut plan: Plan,
    give_up: Duration,
    session: Session,
    stop: CancellationToken,
    mut on_change: F,
) -> anyhow::Result<Summary>
where
    F: FnMut(Summary) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let topics = Topics::new(&broker.prefix)?;
    let command_id = plan.summary().command_id;
    let client_id = match session {
        Session::Clean => format!("aeris-rollout-{:08x}", crate::mqtt::random_suffix()),
        Session::Persistent => format!("aeris-rollout-{command_id}"),
    };
    let mut opts = crate::mqtt::options(broker, &client_id)?;
    opts.set_clean_session(session == Session::Clean)
        .set_manual_acks(true)
        .set_max_packet_size(32 << 20, 32 << 20);
    let (client, mut events) = AsyncClient::new(opts, 1024);
    let end = tokio::time::Instant::now() + give_up;
    let mut subscribed = false;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last = plan.summary();
    on_change(last.clone()).await?;
    let mut to_ack = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                anyhow::bail!("rollout {command_id} stopped before it finished");
            }
            _ = tokio::time::sleep_until(end) => {
                anyhow::bail!("rollout {command_id} did not finish within {}", humantime::format_duration(give_up));
            }
            _ = tick.tick() => {}
            ev = events.poll() => match ev {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    client.subscribe(topics.all_devices(Channel::UpEvent), QoS::AtLeastOnce).await?;
                }
                Ok(MqttEvent::Incoming(Packet::SubAck(_))) => subscribed = true,
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    match (topics.parse(&p.topic), decode::<Event>(&p.payload)) {
                        (Ok((device, Channel::UpEvent)), Ok(e)) if e.kind == EventKind::Ota => {
                            info!(%device, message = %e.message, "update event");
                            plan.on_event(device, &e.message);
                        }
                        (_, Err(e)) => warn!(topic = %p.topic, error = %e, "bad event ignored"),
                        _ => {}
                    }
                    to_ack.push(p);
                }
                Ok(_) => {}
                Err(e) => {
                    subscribed = false;
                    to_ack.clear();
                    warn!(error = %e, "broker connection lost; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
        }
        let mut send = Vec::new();
        if subscribed {
            plan.expire(Instant::now());
            send = plan.to_send(Instant::now());
        }
        let now = plan.summary();
        if now != last {
            on_change(now.clone()).await?;
            last = now;
        }
        for p in to_ack.drain(..) {
            client.ack(&p).await?;
        }
        for device in send {
            let cmd = Command {
                id: command_id,
                kind: CommandKind::Ota {
                    manifest: payload.clone(),
                },
            };
            info!(%device, command_id, "update sent");
            client
                .publish(topics.cmd(&device), QoS::AtLeastOnce, false, encode(&cmd))
                .await?;
        }
        if last.done {
            let _ = client.disconnect().await;
            // Let the queued acks and the disconnect leave.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while events.poll().await.is_ok() {}
            })
            .await;
            if session == Session::Persistent {
                forget_session(broker, &client_id).await;
            }
            return Ok(last);
        }
    }
}

/// Drops the broker's session of `client_id` (connects with a clean
/// session and leaves), so the broker stops queueing events for a rollout
/// that is over. A failure leaves the session to the broker's expiry.
async fn forget_session(broker: &BrokerConfig, client_id: &str) {
    let Ok(mut opts) = crate::mqtt::options(broker, client_id) else {
        return;
    };
    opts.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(opts, 8);
    let done = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.disconnect().await;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    if done.is_err() {
        warn!(client_id, "could not drop the rollout's broker session");
    }
}
