//! The patched rumqttc (vendor/README.md): requests queued together leave
//! in one write. A bare MQTT server in this process sends 200 QoS 1
//! messages; the client queues its 200 acks before its event loop runs
//! again, and the process's own count of write system calls
//! (`syscw` in `/proc/self/io`) while they go out shows how many writes
//! carried them. Upstream rumqttc makes one write per ack (200 or more);
//! with a batch of 64 it takes 4. The server also checks that every ack
//! arrived, once, in order.
//!
//! One test in its own binary: other tests' writes would count too.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MESSAGES: u16 = 200;

/// Write system calls this process has made so far.
fn write_syscalls() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("read /proc/self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("syscw in /proc/self/io")
}

/// A PUBLISH at QoS 1 with packet id `pkid` on topic `t`, payload `x`.
fn publish(pkid: u16) -> Vec<u8> {
    let mut body = vec![0, 1, b't'];
    body.extend_from_slice(&pkid.to_be_bytes());
    body.push(b'x');
    let mut p = vec![0x32, body.len() as u8];
    p.extend_from_slice(&body);
    p
}

/// Accepts one client, answers its CONNECT, sends the messages, and
/// returns the packet ids of the PUBACKs it reads, in order.
async fn server(listener: TcpListener) -> Vec<u16> {
    let (mut sock, _) = listener.accept().await.expect("accept");
    let mut buf = vec![0u8; 1024];
    // CONNECT: fixed header, then the rest; small enough for one read.
    let n = sock.read(&mut buf).await.expect("read connect");
    assert!(
        n >= 2 && buf[0] == 0x10,
        "expected CONNECT, got {:?}",
        &buf[..n]
    );
    sock.write_all(&[0x20, 2, 0, 0]).await.expect("connack");
    let mut all = Vec::new();
    for pkid in 1..=MESSAGES {
        all.extend_from_slice(&publish(pkid));
    }
    sock.write_all(&all).await.expect("publishes");
    let mut acks = Vec::new();
    let mut pending = Vec::new();
    while acks.len() < MESSAGES as usize {
        let n = sock.read(&mut buf).await.expect("read acks");
        assert!(n > 0, "client closed after {} acks", acks.len());
        pending.extend_from_slice(&buf[..n]);
        while pending.len() >= 4 {
            assert_eq!(&pending[..2], &[0x40, 2], "expected PUBACK");
            acks.push(u16::from_be_bytes([pending[2], pending[3]]));
            pending.drain(..4);
        }
    }
    acks
}

#[tokio::test(flavor = "current_thread")]
async fn vendor_rumqttc_writes_queued_acks_in_one_flush() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(server(listener));

    let mut opts = MqttOptions::new("batching", "127.0.0.1", port);
    opts.set_manual_acks(true).set_max_request_batch(64);
    let (client, mut events) = AsyncClient::new(opts, MESSAGES as usize);

    // Receive every message; ack none yet.
    let mut received = Vec::new();
    while received.len() < MESSAGES as usize {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("message within 10 s")
            .expect("event loop");
        if let Event::Incoming(Packet::Publish(p)) = ev {
            assert_eq!(p.qos, QoS::AtLeastOnce);
            received.push(p);
        }
    }
    // Queue all acks while the event loop is not polled, then let it send
    // them and count the writes.
    for p in &received {
        client.try_ack(p).expect("queue ack");
    }
    let before = write_syscalls();
    let mut written = 0;
    while written < MESSAGES {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("ack written within 10 s")
            .expect("event loop");
        if let Event::Outgoing(Outgoing::PubAck(_)) = ev {
            written += 1;
        }
    }
    let writes = write_syscalls() - before;
    let acks = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server done")
        .expect("server task");
    assert_eq!(
        acks,
        (1..=MESSAGES).collect::<Vec<_>>(),
        "every ack, once, in order"
    );
    // 200 acks in batches of 64: 4 writes; allow a few for the runtime.
    assert!(
        writes <= 10,
        "{writes} write system calls carried {MESSAGES} acks (upstream rumqttc: one each)"
    );
}
