//! Commits groups of batches and acks them after the commit.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use aeris_sink::Sink;
use aeris_wire::{encode, Ack, Topics};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::live::LiveFeed;
use super::Incoming;
use crate::config::WriterConfig;
use crate::stats::Stats;

// Each argument is a distinct dependency; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    mut rx: mpsc::Receiver<Incoming>,
    client: AsyncClient,
    topics: Topics,
    sink: Arc<dyn Sink>,
    feed: Arc<LiveFeed>,
    stats: Arc<Stats>,
    config: WriterConfig,
    shutdown: CancellationToken,
) {
    let mut group = Vec::with_capacity(config.max_batches_per_commit);
    while rx
        .recv_many(&mut group, config.max_batches_per_commit)
        .await
        > 0
    {
        stats
            .ops
            .backlog
            .set(i64::try_from(rx.len()).unwrap_or(i64::MAX));
        let batches: Vec<_> = group.iter().map(|i| i.batch.clone()).collect();
        let mut delay = Duration::from_millis(100);
        let outcome = loop {
            match sink.write(&batches).await {
                Ok(outcome) => break Some(outcome),
                Err(e) => {
                    stats.write_errors.inc();
                    stats.sink_ok.store(false, Relaxed);
                    error!(error = %e, batches = batches.len(), retry_in = ?delay, "write failed; acks held");
                    if shutdown.is_cancelled() {
                        break None;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(config.max_retry_delay);
                }
            }
        };
        let Some(outcome) = outcome else {
            warn!(
                batches = group.len(),
                "shutting down with unwritten batches; devices will send them again"
            );
            return;
        };
        stats.sink_ok.store(true, Relaxed);
        stats.readings_inserted.inc_by(outcome.inserted);
        stats.readings_duplicate.inc_by(outcome.duplicates);
        feed.offer(&batches);
        for Incoming {
            batch,
            publish,
            received,
        } in group.drain(..)
        {
            let Some(last_seq) = batch.last_seq() else {
                continue;
            };
            let ack = Ack {
                device: batch.device.clone(),
                first_seq: batch.first_seq,
                last_seq,
            };
            if let Err(e) = client
                .publish(
                    topics.ack(&batch.device),
                    QoS::AtLeastOnce,
                    false,
                    encode(&ack),
                )
                .await
            {
                warn!(error = %e, device = %batch.device, "cannot queue ack; the device will resend");
                continue;
            }
            stats.acks_sent.inc();
            stats
                .ops
                .ack_latency
                .observe(received.elapsed().as_secs_f64());
            if let Err(e) = client.ack(&publish).await {
                debug!(error = %e, "cannot ack to broker");
            }
        }
    }
}
