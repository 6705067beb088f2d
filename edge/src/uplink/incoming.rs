//! What the uplink does with what the link reports: a (re)connect resets
//! the lanes, acks are gathered and recorded in the buffer, and the cloud's
//! resend and renumber commands rewind what is held.

use aeris_wire::{now_ms, Ack, DeviceState, Event as WireEvent};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::link::Link;
use super::Uplink;

impl Uplink {
    /// Acts on `first` and whatever else the link has queued, then records
    /// the acks gathered.
    pub(super) async fn on_link_burst(
        &mut self,
        first: Link,
        link: &mut mpsc::UnboundedReceiver<Link>,
    ) -> anyhow::Result<()> {
        // Acks come in bursts (one per batch of a gateway commit): take
        // what is queued, then record the acked ranges in as few buffer
        // transactions as possible.
        self.on_link(first).await?;
        for _ in 0..1024 {
            let Ok(ev) = link.try_recv() else { break };
            self.on_link(ev).await?;
        }
        self.record_acks().await;
        Ok(())
    }

    async fn on_link(&mut self, ev: Link) -> anyhow::Result<()> {
        match ev {
            Link::Up => self.on_connected().await?,
            Link::Down => self.connected = false,
            Link::Ack(ack) => self.on_ack(&ack),
            Link::Resend(from) => self.resend_from(from).await,
            Link::Renumber {
                id,
                first,
                last,
                next_seq,
            } => self.renumber(id, first, last, next_seq).await?,
        }
        Ok(())
    }

    async fn on_connected(&mut self) -> anyhow::Result<()> {
        self.connected = true;
        // The newest full batch and what comes after it are live.
        let next_seq = match self.buffer.snapshot().await {
            Ok(s) => s.next_seq,
            Err(_) => self.buffer.last_snapshot().next_seq,
        };
        let batch = self.config.uplink.batch_max_readings as u64;
        self.outbox.reset(next_seq.saturating_sub(batch));
        self.pending_since = None;
        self.live_rows = None;
        self.cx.metrics.connects.inc();
        self.publish_status(DeviceState::Online).await?;
        self.publish_config_report().await?;
        self.flush_events();
        Ok(())
    }

    /// Frees the outbox and gathers the range for [`Uplink::record_acks`],
    /// merged with the previous one when adjacent.
    fn on_ack(&mut self, ack: &Ack) {
        for sent_at in self.outbox.acked(ack.first_seq, ack.last_seq) {
            self.cx
                .metrics
                .ack_latency
                .observe(sent_at.elapsed().as_secs_f64());
        }
        match self.acks.last_mut() {
            Some(run) if run.1.checked_add(1) == Some(ack.first_seq) => run.1 = ack.last_seq,
            _ => self.acks.push((ack.first_seq, ack.last_seq)),
        }
    }

    /// The cloud asked for everything from `from` on again.
    async fn resend_from(&mut self, from: u64) {
        self.record_acks().await;
        match self.buffer.unack_from(from).await {
            Ok(n) => info!(
                from_seq = from,
                acked_again_unsent = n,
                "cloud asked to re-send"
            ),
            Err(e) => {
                warn!(error = %e, from_seq = from, "cannot mark readings for re-send")
            }
        }
        self.outbox.rewind_to(from);
    }

    /// Moves the readings the cloud cannot take under their seqs to new
    /// ones, then sends everything held again from the new live mark.
    async fn renumber(
        &mut self,
        id: u64,
        first: u64,
        last: u64,
        next_seq: u64,
    ) -> anyhow::Result<()> {
        self.record_acks().await;
        match self.buffer.renumber(first, last, next_seq).await {
            Ok(done) => {
                if done.moved > 0 {
                    warn!(
                        first_seq = first,
                        last_seq = last,
                        moved = done.moved,
                        first_new_seq = done.first_new,
                        "the cloud holds other readings under these seqs (buffer lost or restored?); readings renumbered"
                    );
                    self.queue_event(WireEvent {
                        device: self.config.device_id.clone(),
                        ts_ms: now_ms(),
                        kind: aeris_wire::EventKind::Agent,
                        message: format!(
                            "renumber {id}: seqs {first}..={last} are held in the cloud by other readings; {} readings moved to seqs from {}",
                            done.moved, done.first_new
                        ),
                    });
                }
                let batch = self.config.uplink.batch_max_readings as u64;
                self.outbox.reset(done.next_seq.saturating_sub(batch));
                self.pending_since = None;
                self.live_rows = None;
            }
            Err(e) => {
                warn!(error = %e, first_seq = first, last_seq = last, "cannot renumber readings")
            }
        }
        Ok(())
    }

    /// Records the acked ranges gathered by [`Uplink::on_link`] in the buffer.
    async fn record_acks(&mut self) {
        for (first, last) in std::mem::take(&mut self.acks) {
            match self.buffer.ack(first, last).await {
                Ok(n) => {
                    self.cx.metrics.readings_acked.inc_by(n as u64);
                }
                // The readings stay unsent and go again after the next ack
                // timeout; the cloud stores them once.
                Err(e) => {
                    warn!(error = %e, first_seq = first, last_seq = last, "cannot record an ack in the buffer")
                }
            }
        }
    }
}
