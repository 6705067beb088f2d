//! Degraded mode: while the file cannot be written, appends are held in
//! memory (unacknowledged to the sensor broker) up to `memory_readings`,
//! refused beyond that, and committed by a retry every `retry_interval`.

use std::time::Instant;

use tracing::{error, info};

use super::{Pending, Worker};
use crate::buffer::store::{BufferError, Message, Store};

impl Worker {
    pub(super) fn write_failed(&mut self, e: &BufferError) {
        self.metrics.write_error(e.kind());
        if self.degraded_since.is_none() {
            error!(
                error = %e,
                kind = e.kind(),
                memory_readings = self.settings.memory_readings,
                "buffer cannot be written; holding new readings in memory (unacknowledged to sensors) and retrying"
            );
            self.degraded_since = Some(Instant::now());
            self.metrics.degraded.set(1);
        }
        self.last_retry = Instant::now();
    }

    /// Keeps appends in memory up to the bound; beyond it they are refused
    /// (left unacknowledged with the sensor broker).
    pub(super) fn hold(&mut self, group: Vec<Pending>) {
        for p in group {
            if self.pending_readings + p.readings.len() > self.settings.memory_readings {
                self.metrics.refused.inc_by(p.readings.len() as u64);
                (p.on_commit)(Err(&BufferError::Backlogged));
                continue;
            }
            self.pending_readings += p.readings.len();
            self.pending.push_back(p);
        }
        self.metrics
            .memory_readings
            .set(self.pending_readings as i64);
    }

    /// Tries to commit what is held in memory.
    pub(super) fn retry(&mut self) {
        self.last_retry = Instant::now();
        if self.store.is_none() {
            match Store::open(&self.path, self.settings.store.clone()) {
                Ok(s) => self.store = Some(s),
                Err(e) => {
                    self.metrics.write_error(e.kind());
                    return;
                }
            }
        }
        let messages: Vec<Message<'_>> = self.pending.iter().map(Pending::message).collect();
        let result = match self.store.as_mut() {
            None => Err(BufferError::NotOpen(self.path.display().to_string())),
            Some(s) if messages.is_empty() => s.probe_write().map(|()| Vec::new()),
            Some(s) => s.append_groups(&messages),
        };
        match result {
            Ok(done) => {
                let held = self.pending_readings;
                let group: Vec<_> = self.pending.drain(..).collect();
                self.pending_readings = 0;
                self.metrics.memory_readings.set(0);
                self.committed(group, done);
                let after = self.degraded_since.take().map(|t| t.elapsed());
                self.metrics.degraded.set(0);
                info!(
                    readings = held,
                    after = ?after,
                    "buffer writable again; readings held in memory committed"
                );
                self.budget_due = true;
            }
            Err(e) => {
                self.metrics.write_error(e.kind());
            }
        }
    }
}
