//! Agent events (`up/event`): held while offline, bounded, published in
//! order once connected.

use aeris_wire::{encode, Event as WireEvent};
use rumqttc::QoS;

use super::Uplink;

/// Events kept while offline; older ones are dropped (and counted) first.
const MAX_UNSENT_EVENTS: usize = 256;

impl Uplink {
    /// Holds `ev` for publishing (bounded; the oldest go first) and
    /// publishes what it can.
    pub(super) fn queue_event(&mut self, ev: WireEvent) {
        self.unsent_events.push_back(ev);
        if self.unsent_events.len() > MAX_UNSENT_EVENTS {
            self.unsent_events.pop_front();
            self.cx.metrics.events_dropped.inc();
        }
        self.flush_events();
    }

    /// Queues held events for publishing while connected; one that cannot be
    /// queued stays for the next try.
    pub(super) fn flush_events(&mut self) {
        if !self.connected {
            return;
        }
        while let Some(ev) = self.unsent_events.pop_front() {
            let topic = self.topics.event(&self.config.device_id);
            if self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, encode(&ev))
                .is_err()
            {
                self.unsent_events.push_front(ev);
                return;
            }
        }
    }
}
