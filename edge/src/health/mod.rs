//! Whether the agent is alive and ready, and how it is watched: `/healthz`,
//! `/readyz` and `/metrics` ([`http`]), systemd notify and watchdog
//! ([`systemd`]), and the text exposition of the registry the stages
//! register their metrics into ([`metrics`]). The metrics themselves are
//! each stage's own (`ingest::Metrics`, `buffer::Metrics`, ...).

pub mod config;
pub mod http;
pub mod metrics;
pub mod systemd;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// What `/readyz` and the watchdog look at, set by the loops themselves.
#[derive(Debug, Default)]
pub struct Probes {
    /// The sensor subscription is acknowledged (readiness).
    pub subscribed: AtomicBool,
    /// Deadlines the agent's loops promise to turn again by (watchdog).
    pub live: systemd::Liveness,
}

impl Probes {
    pub fn ready(&self) -> bool {
        self.subscribed.load(Relaxed)
    }

    pub fn set_subscribed(&self, up: bool) {
        self.subscribed.store(up, Relaxed);
    }
}
