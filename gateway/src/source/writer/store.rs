//! Getting a group of batches into the sink, whatever the database says.
//!
//! - Transport and server errors (`Unavailable`, `Rejected`: connection
//!   lost, server down, disk full, deadlock) are retried with capped
//!   exponential backoff while the group's acks are held; while they last,
//!   [`crate::stats::Progress`] runs its clock for `/readyz`.
//! - A refused value (`Data`: SQLSTATE class 22 or 23) would fail again on
//!   every retry, so it is never retried: the group is written again batch
//!   by batch, and each batch the database refuses on its own goes to the
//!   dead-letter table with its payload and is acked. One device's poison
//!   batch costs one extra round of single-batch writes, never a stall.

use std::slice;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use aeris_runtime::Backoff;
use aeris_sink::{DeadLetter, SinkError, WriteOutcome};
use aeris_wire::Batch;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::{plan, Incoming, Writer};

/// What became of a group: the merged outcome of its writes (batch indices
/// are the group's) and the batches set aside as dead letters.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    pub outcome: WriteOutcome,
    pub dead: Vec<usize>,
}

/// The first retry waits this long; each next one twice as long, up to
/// `writer.max_retry_delay`.
const FIRST_RETRY: Duration = Duration::from_millis(100);

impl Writer {
    /// Stores `group`, whose batches are `batches`; `None` when shutdown
    /// came first (nothing is acked then; the devices send them again).
    pub(super) async fn store(
        &self,
        group: &[Incoming],
        batches: &[Batch],
        stop: &CancellationToken,
    ) -> Option<Stored> {
        match self.write(batches, stop).await? {
            Ok(outcome) => Some(Stored {
                outcome,
                dead: Vec::new(),
            }),
            Err(reason) => {
                warn!(batches = group.len(), reason = %reason, "the database refused a value; writing the group batch by batch");
                self.isolate(group, stop).await
            }
        }
    }

    /// Writes each batch on its own; the ones refused go to dead letters.
    async fn isolate(&self, group: &[Incoming], stop: &CancellationToken) -> Option<Stored> {
        let mut stored = Stored::default();
        for (i, incoming) in group.iter().enumerate() {
            match self.write(slice::from_ref(&incoming.batch), stop).await? {
                Ok(outcome) => plan::merge(&mut stored.outcome, i, outcome),
                Err(reason) => {
                    self.dead_letter(incoming, reason, stop).await?;
                    stored.dead.push(i);
                }
            }
        }
        Some(stored)
    }

    /// One write, retried until it commits (`Ok`) or the database refuses
    /// its data (`Err` with the reason); `None` on shutdown.
    async fn write(
        &self,
        batches: &[Batch],
        stop: &CancellationToken,
    ) -> Option<Result<WriteOutcome, String>> {
        let mut backoff = self.backoff();
        loop {
            // Drawn before the attempt, so the log of a failure says it.
            let delay = backoff.next_delay();
            let answered = match self.sink.write(batches).await {
                Ok(outcome) => Some(Ok(outcome)),
                Err(SinkError::Data(reason)) => Some(Err(reason)),
                Err(e) => {
                    error!(error = %e, batches = batches.len(), retry_in = ?delay, "write failed; acks held");
                    None
                }
            };
            if let Some(result) = answered {
                self.stats.progress.ok();
                self.stats.sink_ok.store(true, Relaxed);
                return Some(result);
            }
            self.failed();
            sleep(delay, stop).await?;
        }
    }

    /// Sets `incoming` aside in the dead-letter table, retrying until the
    /// row is stored; `None` on shutdown.
    async fn dead_letter(
        &self,
        incoming: &Incoming,
        reason: String,
        stop: &CancellationToken,
    ) -> Option<()> {
        let b = &incoming.batch;
        let letter = DeadLetter {
            device: b.device.clone(),
            first_seq: b.first_seq,
            last_seq: b.last_seq().unwrap_or(b.first_seq),
            reason,
            payload: incoming.publish.payload.to_vec(),
        };
        let mut backoff = self.backoff();
        loop {
            let delay = backoff.next_delay();
            match self.sink.dead_letter(&letter).await {
                Ok(()) => break,
                Err(e) => {
                    error!(error = %e, device = %letter.device, retry_in = ?delay, "dead letter not stored; its ack is held");
                    self.failed();
                    sleep(delay, stop).await?;
                }
            }
        }
        self.stats.progress.ok();
        self.stats.dead_letters.inc();
        error!(
            device = %letter.device, first_seq = letter.first_seq, last_seq = letter.last_seq,
            reason = %letter.reason,
            "batch refused by the database: set aside in dead_letters and acked"
        );
        Some(())
    }

    fn failed(&self) {
        self.stats.write_errors.inc();
        self.stats.sink_ok.store(false, Relaxed);
        self.stats.progress.failing();
    }

    /// The retry delays of one write: from [`FIRST_RETRY`] up to
    /// `writer.max_retry_delay`.
    fn backoff(&self) -> Backoff {
        Backoff::new(FIRST_RETRY, self.config.max_retry_delay)
    }
}

/// Waits `delay`; `None` if shutdown came first.
async fn sleep(delay: Duration, stop: &CancellationToken) -> Option<()> {
    tokio::select! {
        _ = stop.cancelled() => None,
        _ = tokio::time::sleep(delay) => Some(()),
    }
}
