//! Feeds committed readings to the live view (Redis or memory), off the ack
//! path.
//!
//! The writer offers each committed group and never waits: pending work is
//! one map of the newest reading per sensor, so while Redis is down it
//! holds at most one entry per sensor, and when Redis returns one update
//! brings "latest" up to date. Applying an older reading is harmless (the
//! live view keeps only newer ones), so a failed update is simply retried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aeris_runtime::Backoff;
use aeris_sink::live::{Live, LiveReading};
use aeris_wire::Batch;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::stats::Stats;

#[derive(Default)]
pub struct LiveFeed {
    pending: Mutex<HashMap<String, LiveReading>>,
    wake: Notify,
}

fn merge(into: &mut HashMap<String, LiveReading>, readings: impl IntoIterator<Item = LiveReading>) {
    for r in readings {
        match into.get(&r.id) {
            Some(cur) if cur.ts_ms >= r.ts_ms => {}
            _ => {
                into.insert(r.id.clone(), r);
            }
        }
    }
}

impl LiveFeed {
    /// Queues the newest reading of each sensor of a committed group.
    pub fn offer(&self, batches: &[Batch]) {
        if let Ok(mut p) = self.pending.lock() {
            merge(&mut p, LiveReading::newest_of(batches));
        }
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<LiveReading> {
        self.pending
            .lock()
            .map(|mut p| p.drain().map(|(_, r)| r).collect())
            .unwrap_or_default()
    }

    fn put_back(&self, readings: Vec<LiveReading>) -> usize {
        self.pending
            .lock()
            .map(|mut p| {
                merge(&mut p, readings);
                p.len()
            })
            .unwrap_or(0)
    }
}

/// Applies what the writer offers until `shutdown`.
pub async fn run(
    feed: Arc<LiveFeed>,
    live: Arc<dyn Live>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failing = false;
    loop {
        let work = feed.take();
        if work.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = feed.wake.notified() => continue,
            }
        }
        match live.update(&work).await {
            Ok(_) => {
                if failing {
                    info!(
                        live = live.kind(),
                        sensors = work.len(),
                        "live view caught up"
                    );
                }
                failing = false;
                backoff.reset();
                stats.live_pending.set(0);
            }
            Err(e) => {
                stats.live_errors.inc();
                let pending = feed.put_back(work);
                stats.live_pending.set(pending as i64);
                if !failing {
                    warn!(error = %e, pending, "live view update failed; database path unaffected, retrying");
                }
                failing = true;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}
