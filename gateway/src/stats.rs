//! Counters of what the gateway did.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Stats {
    pub batches_received: AtomicU64,
    pub readings_inserted: AtomicU64,
    pub readings_duplicate: AtomicU64,
    pub acks_sent: AtomicU64,
    pub write_errors: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

impl Stats {
    pub fn reject(&self, reason: &'static str) {
        if let Ok(mut m) = self.rejected.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn rejected(&self) -> BTreeMap<&'static str, u64> {
        self.rejected.lock().map(|m| m.clone()).unwrap_or_default()
    }
}
