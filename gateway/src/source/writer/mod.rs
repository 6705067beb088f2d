//! Commits groups of batches and answers each batch after the commit.
//!
//! Invariants: an `Ack` covers only seqs the database holds for the very
//! readings the device sent (stored now or before); a reading whose
//! `(device_id, seq)` holds another reading (a seq collision) is not acked,
//! and its device gets a `Renumber` command ([`plan`]). Every batch message
//! is acked to the broker once it has been answered, so none occupies the
//! broker's in-flight window. A failed write is retried with backoff while
//! its acks are held.

mod plan;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use aeris_sink::{Sink, WriteOutcome};
use aeris_wire::{encode, Batch, Command, CommandKind, Topics};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::live::LiveFeed;
use super::Incoming;
use crate::config::WriterConfig;
use crate::stats::Stats;
use plan::Plan;

/// What the writer needs besides its input.
pub(crate) struct Writer {
    pub client: AsyncClient,
    pub topics: Topics,
    pub sink: Arc<dyn Sink>,
    pub feed: Arc<LiveFeed>,
    pub stats: Arc<Stats>,
    pub config: WriterConfig,
}

pub(crate) async fn run(w: Writer, mut rx: mpsc::Receiver<Incoming>, shutdown: CancellationToken) {
    let max = w.config.max_batches_per_commit;
    let mut group = Vec::with_capacity(max);
    while rx.recv_many(&mut group, max).await > 0 {
        w.stats
            .ops
            .backlog
            .set(i64::try_from(rx.len()).unwrap_or(i64::MAX));
        let batches: Vec<Batch> = group.iter().map(|i| i.batch.clone()).collect();
        let Some(outcome) = w.write(&batches, &shutdown).await else {
            warn!(
                batches = group.len(),
                "shutting down with unwritten batches; devices will send them again"
            );
            return;
        };
        w.record(&batches, &outcome);
        let plan = plan::plan(&batches, &outcome);
        w.publish(group.drain(..), plan).await;
    }
}

impl Writer {
    /// Writes `batches`, retrying with capped exponential backoff; `None`
    /// when shutdown came first.
    async fn write(&self, batches: &[Batch], shutdown: &CancellationToken) -> Option<WriteOutcome> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.sink.write(batches).await {
                Ok(outcome) => {
                    self.stats.sink_ok.store(true, Relaxed);
                    return Some(outcome);
                }
                Err(e) => {
                    self.stats.write_errors.inc();
                    self.stats.sink_ok.store(false, Relaxed);
                    error!(error = %e, batches = batches.len(), retry_in = ?delay, "write failed; acks held");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(self.config.max_retry_delay);
        }
    }

    /// Counts what the write did and hands the stored readings to the live
    /// view.
    fn record(&self, batches: &[Batch], outcome: &WriteOutcome) {
        self.stats.readings_inserted.inc_by(outcome.inserted);
        self.stats.readings_duplicate.inc_by(outcome.duplicates);
        self.stats
            .seq_collisions
            .inc_by(outcome.collisions.len() as u64);
        match plan::stored_only(batches, outcome) {
            Some(stored) => self.feed.offer(&stored),
            None => self.feed.offer(batches),
        }
    }

    /// Publishes the plan's commands and acks, and acks each batch message
    /// to the broker.
    async fn publish(&self, group: impl Iterator<Item = Incoming>, plan: Plan) {
        let id = command_id();
        for r in plan.renumbers {
            warn!(
                device = %r.device, first_seq = r.first, last_seq = r.last, next_seq = r.next,
                "seq collision: these seqs hold other readings; not stored, device asked to renumber"
            );
            let cmd = Command {
                id,
                kind: CommandKind::Renumber {
                    first_seq: r.first,
                    last_seq: r.last,
                    next_seq: r.next,
                },
            };
            let topic = self.topics.cmd(&r.device);
            if let Err(e) = self
                .client
                .publish(topic, QoS::AtLeastOnce, false, encode(&cmd))
                .await
            {
                warn!(error = %e, device = %r.device, "cannot queue renumber; the device will resend and get another");
            }
        }
        for (incoming, acks) in group.zip(plan.acks) {
            let (sent, mut failed) = (!acks.is_empty(), false);
            for ack in acks {
                let topic = self.topics.ack(&ack.device);
                let res = self
                    .client
                    .publish(topic, QoS::AtLeastOnce, false, encode(&ack));
                if let Err(e) = res.await {
                    warn!(error = %e, device = %ack.device, "cannot queue ack; the device will resend");
                    failed = true;
                    continue;
                }
                self.stats.acks_sent.inc();
            }
            if failed {
                continue;
            }
            if sent {
                let latency = incoming.received.elapsed().as_secs_f64();
                self.stats.ops.ack_latency.observe(latency);
            }
            if let Err(e) = self.client.ack(&incoming.publish).await {
                debug!(error = %e, "cannot ack to broker");
            }
        }
    }
}

/// Ids of the writer's commands: Unix ms, as the operator's re-send.
fn command_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or(0)
}
