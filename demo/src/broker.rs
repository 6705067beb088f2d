//! An in-process MQTT broker (rumqttd) for the zero-setup demo.
//!
//! rumqttd cannot bind port 0, only logs a failed bind, and has no shutdown:
//! we pick a free port, run it on its own thread, probe the port until it
//! accepts, and let it end with the process.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Starts the broker on 127.0.0.1 and returns its port once it accepts.
pub fn start() -> anyhow::Result<u16> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("no free port")?
        .port();
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = ServerSettings {
        name: "demo-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 16 << 20,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        // The default allows 0 connections; these are real limits.
        router: RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 500,
            max_segment_size: 100 << 20,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("demo".to_owned(), server)])),
        ..Config::default()
    };
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .context("cannot start broker thread")?;
    let start = Instant::now();
    while TcpStream::connect(listen).is_err() {
        if start.elapsed() > Duration::from_secs(5) {
            bail!("embedded broker did not listen on {listen}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(port)
}
