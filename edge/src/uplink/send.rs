//! Batch assembly and publishing: contiguous runs of held readings, the
//! live lane first, each batch marked sent before it leaves.

use std::time::Instant;

use aeris_wire::columnar::MAX_DECODED_BYTES;
use aeris_wire::encode;
use rumqttc::QoS;
use tracing::warn;

use super::outbox::{run_len, Lane};
use super::{BatchEncoding, Uplink};
use crate::buffer::Columns;

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

    /// Up to `max` held readings from `from` on, appended to `into`;
    /// `None` when the buffer cannot answer now (tried again on the next
    /// event).
    async fn read(&self, from: u64, max: usize, into: Columns) -> Option<Columns> {
        let (rows, corrupt) = match self.buffer.read_from(from, max, into).await {
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
        let reached_end = rows.seqs.last().is_some_and(|seq| *seq >= end);
        rows.truncate(rows.seqs.partition_point(|seq| *seq < end));
        let Some(&first) = rows.seqs.first() else {
            match lane {
                Lane::Live => self.pending_since = None,
                Lane::Backlog => self.outbox.backlog_sent(),
            }
            return Ok(false);
        };
        let run = run_len(&rows.seqs);
        let full = run >= max || run < rows.len() || reached_end;
        if lane == Lane::Live && !self.live_batch_closes(full, flush) {
            self.live_rows = Some((from, rows));
            return Ok(false);
        }
        let n = self.batch_len(&rows, run);
        self.publish_batch(lane, &rows, first, n).await
    }

    /// Up to `max` held readings of `lane` from `from` on; `None` when the
    /// buffer cannot answer now.
    async fn rows_of(&mut self, lane: Lane, from: u64, max: usize) -> Option<Columns> {
        match lane {
            // A live batch fills over several commits: keep what was read
            // and read only what came after it.
            Lane::Live => {
                let rows = match self.live_rows.take() {
                    Some((f, rows)) if f == from => rows,
                    _ => Columns::default(),
                };
                if rows.len() >= max {
                    return Some(rows);
                }
                let next = rows.seqs.last().map(|s| s + 1).unwrap_or(from);
                let want = max - rows.len();
                // The buffer hands the columns back extended; on an error
                // they are dropped and the next event reads from `from`.
                self.read(next, want, rows).await
            }
            Lane::Backlog => self.read(from, max, Columns::default()).await,
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

    /// How many of the first `run` of `rows` (contiguous) go in the
    /// batch: all, unless that is more than the gateway accepts.
    fn batch_len(&mut self, rows: &Columns, run: usize) -> usize {
        let device = &self.config.device_id;
        let mut n = run;
        // The gateway refuses a batch that would decode into more than
        // this (many long-named values per reading); the rest goes next.
        while n > 1 && rows.readings.decoded_bytes(device, n) > MAX_DECODED_BYTES {
            n /= 2;
            self.live_rows = None;
        }
        n
    }

    /// Marks the batch of the first `n` of `rows` (from seq `first`) sent
    /// and publishes it; returns whether it went.
    async fn publish_batch(
        &mut self,
        lane: Lane,
        rows: &Columns,
        first: u64,
        n: usize,
    ) -> anyhow::Result<bool> {
        let device = &self.config.device_id;
        let bytes = match self.config.uplink.encoding {
            BatchEncoding::Columnar => rows.readings.encode(device, first, n),
            BatchEncoding::Postcard => encode(&rows.readings.to_batch(device, first, n)),
        };
        let n = n as u64;
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
