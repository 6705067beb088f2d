//! aeris-tests: test support for the end-to-end scenarios in `tests/`.
//!
//! Each helper starts a real component on a free port and stops it when
//! dropped, so a scenario reads as: start a broker, a database, a gateway and
//! an agent; publish readings; check what landed.
//!
//! - [`mosquitto`]: a Mosquitto broker process with its own config file.
//! - [`postgres`]: a fresh PostGIS database per test on the local server.
//! - [`process`]: the `aeris-edge` / `aeris-gateway` binaries as child
//!   processes that can be SIGKILLed and restarted.
//! - [`sensors`]: simulated sensors publishing flat JSON.
//! - [`redis`]: a Redis server without persistence.
//! - [`cloud`]: broker + database (+ Redis) + gateway(s), without an edge;
//!   [`device`] plays the devices.
//! - [`http`]: a minimal HTTP GET for the gateway's API.
//! - [`browser`]: headless Chromium over the DevTools protocol.
//! - [`stack`]: the whole pipeline with an edge agent.

pub mod browser;
pub mod cloud;
pub mod device;
pub mod http;
pub mod mosquitto;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod sensors;
pub mod stack;

use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
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

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
