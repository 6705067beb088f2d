//! Staged rollout of an agent update: publishes the signed update (the
//! payload of `CommandKind::Ota`, see the edge's `ota::update`) to each
//! device's `down/cmd`, canary devices first, follows their `up/event`
//! outcomes, and halts when failures pass the threshold ([`plan`]).
//! Used by `aeris-gateway rollout`.

pub mod plan;

use std::time::{Duration, Instant};

use aeris_wire::{decode, encode, Channel, Command, CommandKind, Event, EventKind, Topics};
use rumqttc::{AsyncClient, Event as MqttEvent, Packet, QoS};
use tracing::{info, warn};

use crate::config::BrokerConfig;
pub use plan::{select, DeviceOutcome, Plan, Summary};

/// Runs `plan` to its end (or `give_up` overall) through the broker;
/// `on_change` sees each new summary. Returns the final summary.
pub async fn run(
    broker: &BrokerConfig,
    payload: Vec<u8>,
    mut plan: Plan,
    give_up: Duration,
    mut on_change: impl FnMut(&Summary),
) -> anyhow::Result<Summary> {
    let topics = Topics::new(&broker.prefix)?;
    let mut opts = crate::mqtt::options(
        broker,
        &format!("aeris-rollout-{:08x}", crate::mqtt::random_suffix()),
    )?;
    opts.set_clean_session(true)
        .set_max_packet_size(32 << 20, 32 << 20);
    let (client, mut events) = AsyncClient::new(opts, 1024);
    let command_id = plan.summary().command_id;
    let end = tokio::time::Instant::now() + give_up;
    let mut subscribed = false;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last = plan.summary();
    on_change(&last);
    loop {
        tokio::select! {
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
                }
                Ok(_) => {}
                Err(e) => {
                    subscribed = false;
                    warn!(error = %e, "broker connection lost; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
        }
        if !subscribed {
            continue;
        }
        plan.expire(Instant::now());
        for device in plan.to_send(Instant::now()) {
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
        let now = plan.summary();
        if now != last {
            on_change(&now);
            last = now;
        }
        if last.done {
            let _ = client.disconnect().await;
            return Ok(last);
        }
    }
}
