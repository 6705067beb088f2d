//! Fleet re-send after a database restore: ask every known device to send
//! again what the database lacks.
//!
//! Which devices: every device the restored database knows (a status or a
//! reading), plus every device with a retained `up/status` on the broker,
//! which also knows the devices that first reported after the backup was
//! taken. From where: the lowest seq the database lacks for the device (its
//! first hole, else the seq after its highest; 1 for a device the database
//! does not know), see [`aeris_sink::ops::ResendPoint`]. Edges keep acked
//! readings for `buffer.acked_grace`, so everything acked within that window
//! comes back; the `(device_id, seq)` key stores each reading once.
//!
//! Each device gets one `Resend { from_seq }` command on `{p}/{device}/down/cmd`
//! (QoS 1, not retained: an old re-send must not replay on a later connect).

use std::collections::BTreeMap;
use std::time::Duration;

use aeris_sink::Sink;
use aeris_wire::{encode, Channel, Command, CommandKind, Topics};
use rumqttc::{Event, Packet, QoS};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::Config;

/// One device asked to re-send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub device: String,
    pub from_seq: u64,
    /// Readings the database holds for the device.
    pub stored: u64,
    /// `database`, or `broker` for a device only the broker knows.
    pub source: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Id of the commands sent (devices echo it in their events).
    pub command_id: u64,
    pub targets: Vec<Target>,
    /// Commands the broker acknowledged.
    pub published: usize,
}

/// How long the broker's retained statuses may take to arrive.
const RETAINED_QUIET: Duration = Duration::from_millis(700);
const RETAINED_MAX: Duration = Duration::from_secs(10);

/// Works out the targets and publishes the commands.
pub async fn run(config: &Config, sink: &dyn Sink) -> Result<Report, String> {
    let topics = Topics::new(&config.broker.prefix).map_err(|e| e.to_string())?;
    let points = sink
        .resend_points()
        .await
        .map_err(|e| format!("cannot read what the database holds: {e}"))?;
    let client_id = format!("aeris-resend-{:08x}", crate::mqtt::random_suffix());
    let (client, mut events) =
        crate::mqtt::connect(&config.broker, &client_id, Duration::from_secs(10)).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let poller = tokio::spawn(async move {
        loop {
            let seen = match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => Seen::Subscribed,
                Ok(Event::Incoming(Packet::Publish(p))) => Seen::Status(p.topic),
                Ok(Event::Incoming(Packet::PubAck(_))) => Seen::PubAck,
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => continue,
                Err(e) => Seen::Lost(e.to_string()),
            };
            let lost = matches!(seen, Seen::Lost(_));
            if tx.send(seen).is_err() || lost {
                return;
            }
        }
    });
    client
        .subscribe(topics.all_devices(Channel::UpStatus), QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    let on_broker = retained_devices(&topics, &mut rx).await?;
    let targets = targets(points, on_broker);
    let command_id = u64::try_from(aeris_wire::now_ms()).unwrap_or(0);
    for t in &targets {
        let cmd = Command {
            id: command_id,
            kind: CommandKind::Resend {
                from_seq: t.from_seq,
            },
        };
        client
            .publish(topics.cmd(&t.device), QoS::AtLeastOnce, false, encode(&cmd))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut published = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while published < targets.len() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Seen::PubAck)) => published += 1,
            Ok(Some(Seen::Lost(e))) => return Err(format!("broker connection lost: {e}")),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    if published < targets.len() {
        return Err(format!(
            "the broker acknowledged {published} of {} re-send commands",
            targets.len()
        ));
    }
    Ok(Report {
        command_id,
        targets,
        published,
    })
}

enum Seen {
    Subscribed,
    Status(String),
    PubAck,
    Lost(String),
}

/// Devices with a retained status: collected until the broker has been
/// quiet for a moment after the subscription was confirmed.
async fn retained_devices(
    topics: &Topics,
    rx: &mut mpsc::UnboundedReceiver<Seen>,
) -> Result<Vec<String>, String> {
    let mut devices = Vec::new();
    let mut subscribed = false;
    let end = tokio::time::Instant::now() + RETAINED_MAX;
    loop {
        let wait = if subscribed {
            RETAINED_QUIET
        } else {
            Duration::from_secs(10)
        };
        let next = tokio::time::timeout(wait, rx.recv()).await;
        match next {
            Ok(Some(Seen::Subscribed)) => subscribed = true,
            Ok(Some(Seen::Status(topic))) => {
                if let Ok((device, Channel::UpStatus)) = topics.parse(&topic) {
                    devices.push(device.to_owned());
                }
            }
            Ok(Some(Seen::Lost(e))) => return Err(format!("broker connection lost: {e}")),
            Ok(Some(Seen::PubAck)) => {}
            Ok(None) => return Err("broker connection closed".into()),
            Err(_) if subscribed => return Ok(devices),
            Err(_) => return Err("the broker did not confirm the status subscription".into()),
        }
        if tokio::time::Instant::now() > end {
            return Ok(devices);
        }
    }
}

/// The database's points, plus the broker's devices it does not know
/// (from seq 1), one per device.
fn targets(points: Vec<aeris_sink::ops::ResendPoint>, on_broker: Vec<String>) -> Vec<Target> {
    let mut all: BTreeMap<String, Target> = points
        .into_iter()
        .map(|p| {
            (
                p.device.clone(),
                Target {
                    device: p.device,
                    from_seq: p.from_seq,
                    stored: p.stored,
                    source: "database",
                },
            )
        })
        .collect();
    for device in on_broker {
        all.entry(device.clone()).or_insert(Target {
            device,
            from_seq: 1,
            stored: 0,
            source: "broker",
        });
    }
    all.into_values().collect()
}

/// The report as a table for the terminal.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "re-send command {} sent to {} devices\n{:<40} {:>12} {:>12}  {}\n",
        r.command_id, r.published, "DEVICE", "FROM_SEQ", "STORED", "KNOWN FROM"
    );
    for t in &r.targets {
        out += &format!(
            "{:<40} {:>12} {:>12}  {}\n",
            t.device, t.from_seq, t.stored, t.source
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aeris_sink::ops::ResendPoint;

    #[test]
    fn broker_only_devices_start_at_one_and_database_points_win() {
        let t = targets(
            vec![ResendPoint {
                device: "a".into(),
                from_seq: 7,
                stored: 5,
            }],
            vec!["b".into(), "a".into()],
        );
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].device.as_str(), t[0].from_seq, t[0].source),
            ("a", 7, "database")
        );
        assert_eq!(
            (t[1].device.as_str(), t[1].from_seq, t[1].source),
            ("b", 1, "broker")
        );
    }
}
