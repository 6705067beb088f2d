//! aeris-tests: test support for the end-to-end scenarios in `tests/`.
//!
//! Each helper starts a real component on a free port and stops it when
//! dropped, so a scenario reads as: start a broker, a database, a gateway and
//! an agent; publish readings; check what landed.
//!
//! - [`mosquitto`]: a Mosquitto broker process with its own config file.
//! - [`pki`]: test CAs and certificates (rcgen) for TLS brokers and devices.
//! - [`gate`]: a TCP forwarder a test closes and opens, a network cut.
//! - [`postgres`]: a fresh PostGIS database per test on the local server;
//!   [`partitions`]: what the tests of `readings`' partitions share.
//! - [`process`]: the `aeris-edge` / `aeris-gateway` binaries as child
//!   processes that can be SIGKILLed and restarted.
//! - [`sensors`]: simulated sensors publishing flat JSON.
//! - [`redis`]: a Redis server without persistence.
//! - [`cloud`]: broker + database (+ Redis) + gateway(s), without an edge;
//!   [`device`] plays the devices; [`fleet_config`] sends desired
//!   configurations and follows the devices' config reports.
//! - [`http`]: a minimal HTTP GET for the gateway's API.
//! - [`prometheus`]: a real Prometheus server with given config and rules.
//! - [`files`]: an HTTP file server with Range support, for downloads.
//! - [`browser`]: headless Chromium over the DevTools protocol.
//! - [`stack`]: the whole pipeline with an edge agent.
//! - [`board`]: an agent under its OTA supervisor with its sensors, the
//!   cloud and a package server, for updates (tests/ota.rs and
//!   `aeris-bench-rollback`).
//! - [`bench`](mod@bench): what the benchmark commands share (MQTT client, /proc usage);
//!   [`bench_rows`]: the readings of the PostGIS write benchmarks.

pub mod bench;
pub mod bench_rows;
pub mod board;
pub mod browser;
pub mod cloud;
pub mod device;
pub mod files;
pub mod fleet_config;
pub mod gate;
pub mod http;
pub mod mosquitto;
pub mod partitions;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod redis;
pub mod sensors;
pub mod stack;
pub mod subscriber;

use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A TCP port free on 127.0.0.1 right now, from 20000..32000: below the
/// kernel's ephemeral range (32768 and up by default), so an outgoing
/// connection's source port cannot take it between this check and the
/// server's bind.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = fastrand::u16(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with
/// `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Unix time in milliseconds (the wire's clock).
pub use aeris_wire::now_ms;

/// A plain HTTP/1.1 GET on 127.0.0.1; returns the status code and body.
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, "GET", path, "").await
}

/// A plain HTTP/1.1 request on 127.0.0.1 with a JSON `body` (empty = none);
/// returns the status code and body.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    http_request_as(port, method, path, body, None).await
}

/// [`http_request`] with a bearer token.
pub async fn http_request_as(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    bearer: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut content = bearer
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    content += &if body.is_empty() {
        String::new()
    } else {
        format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        )
    };
    sock.write_all(
        format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n{content}\r\n{body}")
            .as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of one sample line of a Prometheus exposition, e.g.
/// `metric(text, "aeris_edge_model_promotions_total")`.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(sample))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
