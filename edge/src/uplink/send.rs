//! Batch assembly and publishing: contiguous runs of held readings, the
//! live lane first, each batch marked sent before it leaves.

use std::time::Instant;

use aeris_wire::{encode, Batch, Reading};
use rumqttc::QoS;
use tracing::warn;

use super::outbox::{run_len, Lane};
use super::{BatchEncoding, Uplink};

impl Uplink {
    /// Publishes every batch that is ready while the outbox has room: the
    /// live lane first, then the backlog within its share.
    pub(super) async fn send_ready(&mut self, flush: bool) -> anyhow::Result<()> {
        loop {
            if self.outbox.has_room(Lane::Live) && self.send_next(Lane::Live, flush).await? {
                continue;
            }
            if self.outbox.has_room(Lane::Backlog) && self.send_next(Lane::Backlog, true).await? {
                continue;
            }
            return Ok(());
        }
    }

    /// Up to `max` held readings from `from` on; `None` when the buffer
    /// cannot answer now (tried again on the next event).
    async fn read(&self, from: u64, max: usize) -> Option<Vec<(u64, Reading)>> {
        let (rows, corrupt) = match self.buffer.read_from(from, max).await {
            Ok(held) => held,
            Err(crate::buffer::BufferError::Closed) => return None,
            Err(e) => {
                warn!(error = %e, "cannot read the buffer; trying again on the next event");
                return None;
            }
        };
        if !corrupt.is_empty() {
            warn!(count = corrupt.len(), first_seq = corrupt[0].seq, error = %corrupt[0].error, "corrupt buffered readings removed");
        }
        Some(rows)
    }

    /// Publishes the next batch of `lane` if one is ready; returns whether
    /// it did.
    async fn send_next(&mut self, lane: Lane, flush: bool) -> anyhow::Result<bool> {
        let max = self.config.uplink.batch_max_readings;
        let (from, end) = self.outbox.next_send(lane);
        let Some(mut rows) = self.rows_of(lane, from, max).await else {
            return Ok(false);
        };
        // The backlog stops at the live mark; a run cut there is complete.
        let reached_end = rows.last().is_some_and(|(seq, _)| *seq >= end);
        rows.retain(|(seq, _)| *seq < end);
        let Some(first) = rows.first().map(|r| r.0) else {
            match lane {
                Lane::Live => self.pending_since = None,
                Lane::Backlog => self.outbox.backlog_sent(),
            }
            return Ok(false);
        };
        let run = run_len(&rows);
        let full = run >= max || run < rows.len() || reached_end;
        if lane == Lane::Live && !self.live_batch_closes(full, flush) {
            self.live_rows = Some((from, rows));
            return Ok(false);
        }
        let batch = self.batch(first, rows, run);
        self.publish_batch(lane, batch).await
    }

    /// Up to `max` held readings of `lane` from `from` on; `None` when the
    /// buffer cannot answer now.
    async fn rows_of(&mut self, lane: Lane, from: u64, max: usize) -> Option<Vec<(u64, Reading)>> {
        match lane {
            // A live batch fills over several commits: keep what was read
            // and read only what came after it.
            Lane::Live => {
                let mut rows = match self.live_rows.take() {
                    Some((f, rows)) if f == from => rows,
                    _ => Vec::new(),
                };
                if rows.len() < max {
                    let next = rows.last().map(|r| r.0 + 1).unwrap_or(from);
                    match self.read(next, max - rows.len()).await {
                        Some(more) => rows.extend(more),
                        None => {
                            self.live_rows = Some((from, rows));
                            return None;
                        }
                    }
                }
                Some(rows)
            }
            Lane::Backlog => self.read(from, max).await,
        }
    }

    /// Whether the live batch goes now: it is `full`, a `flush` is asked
    /// for, or its first reading has waited `batch_max_age`.
    fn live_batch_closes(&mut self, full: bool, flush: bool) -> bool {
        let waited = *self.pending_since.get_or_insert_with(Instant::now);
        if !full && !flush && waited.elapsed() < self.config.uplink.batch_max_age {
            return false;
        }
        self.pending_since = None;
        true
    }

    /// The batch of the first `run` of `rows` (contiguous from `first`),
    /// cut to what the gateway accepts.
    fn batch(&mut self, first: u64, rows: Vec<(u64, Reading)>, run: usize) -> Batch {
        let readings: Vec<Reading> = rows.into_iter().take(run).map(|(_, r)| r).collect();
        let mut batch = Batch {
            device: self.config.device_id.clone(),
            first_seq: first,
            readings,
        };
        // The gateway refuses a batch that would decode into more than
        // this (many long-named values per reading); the rest goes next.
        while batch.readings.len() > 1
            && aeris_wire::columnar::decoded_bytes(&batch) > aeris_wire::columnar::MAX_DECODED_BYTES
        {
            batch.readings.truncate(batch.readings.len() / 2);
            self.live_rows = None;
        }
        batch
    }

    /// Marks `batch` sent and publishes it; returns whether it went.
    async fn publish_batch(&mut self, lane: Lane, batch: Batch) -> anyhow::Result<bool> {
        let first = batch.first_seq;
        let n = batch.readings.len() as u64;
        let bytes = match self.config.uplink.encoding {
            BatchEncoding::Columnar => aeris_wire::columnar::encode(&batch),
            BatchEncoding::Postcard => encode(&batch),
        };
        let size = bytes.len() as u64;
        let last = first + n - 1;
        // Marked before it leaves (the buffer applies queued marks before
        // any disk-budget work): from now on the cloud may hold these rows,
        // so the budget must not fold them into aggregates.
        if let Err(e) = self.buffer.mark_sent_queued(first, last).await {
            warn!(error = %e, first_seq = first, "cannot mark a batch as sent; trying again on the next event");
            return Ok(false);
        }
        // `publish` only queues for the event loop; a lost connection
        // shows up as Link::Down and the outbox resends after reconnect.
        self.client
            .publish(
                self.topics.batch(&self.config.device_id),
                QoS::AtLeastOnce,
                false,
                bytes,
            )
            .await?;
        self.outbox.sent(first, last, Instant::now());
        let m = &self.cx.metrics;
        m.batches_sent.inc();
        m.readings_sent.inc_by(n);
        m.bytes_sent.inc_by(size);
        if lane == Lane::Backlog {
            m.backlog_batches_sent.inc();
        }
        Ok(true)
    }
}
