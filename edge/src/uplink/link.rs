//! The MQTT side of the uplink: the connection options (with the offline
//! status as last will) and the task that polls the event loop,
//! reconnecting with backoff, and turns what arrives into [`Link`] events.

use std::sync::Arc;
use std::time::Duration;

use aeris_runtime::Backoff;
use aeris_wire::{decode, encode, Ack, Channel, Command, CommandKind, DeviceState, Topics};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet,
    Publish, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::status::status;
use super::{tls, Commands, Identity, Metrics, Settings};

/// What the link task reports to the uplink loop.
pub(super) enum Link {
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

/// The options for the cloud broker: this device as client id, a clean
/// session, and the offline status as retained last will.
pub(super) fn options(
    config: &Settings,
    topics: &Topics,
    identity: &Identity,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> MqttOptions {
    let mut opts = MqttOptions::new(
        config.device_id.clone(),
        config.cloud.host.clone(),
        config.cloud.port,
    );
    let will = status(
        &config.device_id,
        identity,
        DeviceState::Offline,
        None,
        Vec::new(),
        None,
    );
    opts.set_keep_alive(config.cloud.keep_alive)
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 16 << 20)
        // Requests queued together leave in one write (the patched
        // rumqttc, vendor/README.md).
        .set_max_request_batch(64)
        .set_last_will(LastWill::new(
            topics.status(&config.device_id),
            encode(&will),
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(tls) = tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    }
    opts
}

/// Polls the MQTT event loop, reconnecting with backoff, and turns what
/// arrives into [`Link`] events.
#[allow(clippy::too_many_arguments)]
pub(super) async fn drive(
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
                subscribe(&client, &topics, &device);
                let _ = tx.send(Link::Up);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                route(&p, &topics, &device, &tx, &commands);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Link::Down);
                let wait = backoff.next_delay();
                let was_connected = std::mem::take(&mut connected);
                report_failure(&e, was_connected, wait, &metrics);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Queues the subscriptions to this device's acks and commands.
fn subscribe(client: &AsyncClient, topics: &Topics, device: &str) {
    for ch in [Channel::DownAck, Channel::DownCmd] {
        if let Err(e) = client.try_subscribe(topics.topic(device, ch), QoS::AtLeastOnce) {
            warn!(error = %e, "cannot queue subscription");
        }
    }
}

/// Counts and logs a lost connection, or a failed attempt to connect.
fn report_failure(e: &ConnectionError, was_connected: bool, wait: Duration, metrics: &Metrics) {
    if was_connected {
        metrics.disconnects.inc();
        warn!(error = %e, retry_in = ?wait, "cloud broker connection lost");
    } else {
        let reason = tls::failure_reason(e);
        metrics.connect_failed(reason);
        warn!(reason, error = %e, retry_in = ?wait, "cannot connect to the cloud broker");
    }
}

/// Hands an incoming message for this device to the uplink (acks, resend
/// and renumber commands) or to the agent (every other command).
fn route(
    p: &Publish,
    topics: &Topics,
    device: &str,
    tx: &mpsc::UnboundedSender<Link>,
    commands: &Commands,
) {
    let topic = p.topic.as_str();
    match topics.parse(topic) {
        Ok((d, Channel::DownAck)) if d == device => match decode::<Ack>(&p.payload) {
            Ok(ack) if ack.device == device => {
                let _ = tx.send(Link::Ack(ack));
            }
            Ok(_) => warn!("ack for another device ignored"),
            Err(e) => warn!(reason = e.reason(), error = %e, "bad ack ignored"),
        },
        Ok((d, Channel::DownCmd)) if d == device => match decode::<Command>(&p.payload) {
            Ok(cmd) => route_command(cmd, tx, commands),
            Err(e) => warn!(reason = e.reason(), error = %e, "bad command ignored"),
        },
        _ => debug!(topic = %topic, "unexpected message ignored"),
    }
}

fn route_command(cmd: Command, tx: &mpsc::UnboundedSender<Link>, commands: &Commands) {
    match cmd {
        Command {
            kind: CommandKind::Resend { from_seq },
            ..
        } => {
            let _ = tx.send(Link::Resend(from_seq));
        }
        Command {
            id,
            kind:
                CommandKind::Renumber {
                    first_seq,
                    last_seq,
                    next_seq,
                },
        } => {
            let _ = tx.send(Link::Renumber {
                id,
                first: first_seq,
                last: last_seq,
                next_seq,
            });
        }
        // Model and agent updates, and commands this version does not
        // know, are the agent's to route.
        cmd => {
            let _ = commands.send(cmd);
        }
    }
}
