//! The desired-configuration exchange from the outside (issue 18): send a
//! device a `Configure` command on its `down/cmd`, follow its retained
//! `up/config` report.

use std::time::Duration;

use aeris_wire::{decode, encode, Command, CommandKind, ConfigReport, Topics};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::watch;

/// Publishes `Configure { version, fragment }` to `device` at QoS 1 and
/// returns once the broker acknowledged it.
pub async fn send_configure(port: u16, device: &str, version: u64, fragment: &str) {
    let cmd = Command {
        id: version,
        kind: CommandKind::Configure {
            version,
            fragment: fragment.to_owned(),
        },
    };
    publish(port, &Topics::default().cmd(device), encode(&cmd)).await;
}

/// Publishes one message at QoS 1 and waits for its PUBACK (10 s at most).
pub async fn publish(port: u16, topic: &str, payload: Vec<u8>) {
    let mut opts = MqttOptions::new(format!("cmd-{:08x}", fastrand::u32(..)), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 16);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .expect("queue publish");
    let acked = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), acked)
        .await
        .expect("PUBACK within 10 s");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while !matches!(
            events.poll().await,
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
        ) {}
    })
    .await;
}

/// Follows `device`'s retained config report.
pub async fn watch_reports(port: u16, device: &str) -> watch::Receiver<Option<ConfigReport>> {
    let (tx, rx) = watch::channel(None);
    let client = crate::subscriber::subscribe(port, &Topics::default().config(device), move |p| {
        if let Ok(r) = decode::<ConfigReport>(&p.payload) {
            let _ = tx.send(Some(r));
        }
    })
    .await;
    // The subscriber lives as long as the test process: its task holds the
    // event loop, the client only sends.
    std::mem::forget(client);
    rx
}

/// Waits until the newest report satisfies `ok` (or panics after
/// `timeout`, showing the last report and `logs()`).
pub async fn wait_report(
    rx: &mut watch::Receiver<Option<ConfigReport>>,
    timeout: Duration,
    ok: impl Fn(&ConfigReport) -> bool,
    logs: impl Fn() -> String,
) -> ConfigReport {
    let found = tokio::time::timeout(timeout, async {
        loop {
            if let Some(r) = rx.borrow_and_update().as_ref().filter(|r| ok(r)) {
                return r.clone();
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    })
    .await;
    match found {
        Ok(r) => r,
        Err(_) => panic!(
            "no matching config report in {timeout:?}; last: {:?}\n{}",
            rx.borrow(),
            logs()
        ),
    }
}
