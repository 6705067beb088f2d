//! Commits groups of batches and answers each batch after the commit.
//!
//! Invariants: an `Ack` covers only seqs the database holds for the very
//! readings the device sent (stored now or before), or a batch the database
//! refused and that was set aside as a dead letter ([`store`]); a reading
//! whose `(device_id, seq)` holds another reading (a seq collision) is not
//! acked, and its device gets a `Renumber` command ([`plan`]). Every batch
//! message is acked to the broker once it has been answered, so none
//! occupies the broker's in-flight window. Transport and server errors are
//! retried with backoff while the group's acks are held; refused data never
//! is.

mod plan;
mod store;

use std::sync::Arc;

use aeris_sink::Sink;
use aeris_wire::{encode, Ack, Batch, Command, CommandKind, Topics};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::live::LiveFeed;
use super::Incoming;
use crate::config::WriterConfig;
use crate::stats::Stats;
use plan::Renumber;
use store::Stored;

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
        let Some(stored) = w.store(&group, &batches, &shutdown).await else {
            warn!(
                batches = group.len(),
                "shutting down with unwritten batches; devices will send them again"
            );
            return;
        };
        w.record(&batches, &stored);
        let plan = plan::plan(&batches, &stored.outcome);
        w.renumber(plan.renumbers).await;
        w.answer(group.drain(..), plan.acks).await;
    }
}

impl Writer {
    /// Counts what the write did and hands the stored readings to the live
    /// view.
    fn record(&self, batches: &[Batch], stored: &Stored) {
        let outcome = &stored.outcome;
        self.stats.readings_inserted.inc_by(outcome.inserted);
        self.stats.readings_duplicate.inc_by(outcome.duplicates);
        self.stats
            .seq_collisions
            .inc_by(outcome.collisions.len() as u64);
        match plan::stored_only(batches, outcome, &stored.dead) {
            Some(live) => self.feed.offer(&live),
            None => self.feed.offer(batches),
        }
    }

    /// Publishes one `Renumber` per colliding run (QoS 1, not retained).
    async fn renumber(&self, renumbers: Vec<Renumber>) {
        let id = command_id();
        for r in renumbers {
            warn!(
                device = %r.device, first_seq = r.first, last_seq = r.last, next_seq = r.next,
                "seq collision: these seqs hold other readings; not stored, device asked to renumber"
            );
            let kind = CommandKind::Renumber {
                first_seq: r.first,
                last_seq: r.last,
                next_seq: r.next,
            };
            let cmd = encode(&Command { id, kind });
            let topic = self.topics.cmd(&r.device);
            if let Err(e) = self
                .client
                .publish(topic, QoS::AtLeastOnce, false, cmd)
                .await
            {
                warn!(error = %e, device = %r.device, "cannot queue renumber; the device will resend and get another");
            }
        }
    }

    /// Publishes each batch's acks, then acks its message to the broker
    /// (unless an ack could not be queued: then the device resends).
    async fn answer(&self, group: impl Iterator<Item = Incoming>, acks: Vec<Vec<Ack>>) {
        for (incoming, acks) in group.zip(acks) {
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
    u64::try_from(aeris_wire::now_ms()).unwrap_or(0)
}
