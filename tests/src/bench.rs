//! What the benchmark commands (`src/bin/aeris-bench-*`) share: a QoS 1
//! MQTT client with its event loop in a task, and a process's memory and
//! CPU read from `/proc`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// A QoS 1 client on `port`, subscribed to `subscribe` if given, that
/// hands every publish it receives to `on_publish` (topic, payload) and
/// counts them. Returns once connected (and subscribed), or after 10 s.
pub async fn client(
    port: u16,
    subscribe: Option<&str>,
    mut on_publish: impl FnMut(&str, &[u8]) + Send + 'static,
) -> (AsyncClient, Arc<AtomicU64>) {
    let mut opts = MqttOptions::new(
        format!("bench-{:08x}", fastrand::u32(..)),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(60))
        .set_max_packet_size(32 << 20, 32 << 20)
        .set_inflight(1000);
    let (client, mut events) = AsyncClient::new(opts, 10_000);
    let received = Arc::new(AtomicU64::new(0));
    let (count, c, topic) = (
        received.clone(),
        client.clone(),
        subscribe.map(str::to_owned),
    );
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => match &topic {
                    Some(t) => {
                        let _ = c.subscribe(t.clone(), QoS::AtLeastOnce).await;
                    }
                    None => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                },
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    count.fetch_add(1, Relaxed);
                    on_publish(&p.topic, &p.payload);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(10), ready_rx).await;
    (client, received)
}

/// Memory and CPU of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Peak resident set (VmHWM).
    pub peak: u64,
    /// Resident now: anonymous (heap, stacks) and file-backed (the binary's
    /// and libraries' pages).
    pub anon: u64,
    pub file: u64,
    /// User + system CPU time.
    pub cpu_s: f64,
    /// The system (kernel) part of `cpu_s`.
    pub system_s: f64,
}

pub fn proc_usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let bytes = |field: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields, in clock ticks (100 per second on Linux).
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let (user, system) = (field(11), field(12));
    Usage {
        peak: bytes("VmHWM:"),
        anon: bytes("RssAnon:"),
        file: bytes("RssFile:"),
        cpu_s: (user + system) as f64 / 100.0,
        system_s: system as f64 / 100.0,
    }
}

/// Takes `--agent PATH` out of `args`: the agent binary to run, or the
/// release one beside the bench when absent.
pub fn agent_arg(args: &mut Vec<String>) -> anyhow::Result<PathBuf> {
    let Some(i) = args.iter().position(|a| a == "--agent") else {
        return Ok(crate::process::binary("aeris-edge"));
    };
    anyhow::ensure!(
        i + 1 < args.len(),
        "--agent needs the path of an agent binary"
    );
    let path = PathBuf::from(args.remove(i + 1));
    args.remove(i);
    anyhow::ensure!(path.is_file(), "no agent binary at {}", path.display());
    Ok(path)
}

/// A running process's id, or an error naming it (it exited already).
pub fn pid_of(p: &crate::process::Proc) -> anyhow::Result<u32> {
    p.pid()
        .ok_or_else(|| anyhow::anyhow!("the agent is not running:\n{}", p.log()))
}
