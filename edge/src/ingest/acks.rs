//! Acknowledgements of sensor messages on their way to the local broker.
//!
//! rumqttc's event loop writes one queued request per turn, while one turn
//! that reads the socket takes up to ten incoming messages. When the broker
//! sends faster than that (after an agent restart it delivers everything it
//! kept meanwhile), acks pile up: as client requests they cost 64 bytes
//! each, and a full request queue would refuse them. Here they wait as packet
//! ids, 2 bytes each, at most one per packet id in flight (65,535), and the
//! ingest loop hands them to the client a window at a time.
//!
//! Order: acks leave in the order they were pushed, which is commit order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use rumqttc::{AsyncClient, ClientError, Publish, QoS};
use tokio::sync::Notify;

/// Client requests (acks and the subscription) the client may hold at once.
pub const CLIENT_QUEUE: usize = 256;

#[derive(Default)]
pub struct Acks {
    waiting: Mutex<VecDeque<u16>>,
    /// Pushed since the ingest loop last looked.
    pub pushed: Notify,
    /// Acks waiting here or in the client's queue (last known).
    pub pending: AtomicU64,
}

impl Acks {
    /// Queues the ack of a message received at QoS 1 (`pkid`); QoS 0
    /// messages need none. The subscription is QoS 1, so the broker never
    /// delivers at QoS 2.
    pub fn push(&self, qos: QoS, pkid: u16) {
        if qos != QoS::AtLeastOnce {
            return;
        }
        // Counted before it can be handed over: the buffer's thread pushes
        // while the ingest task hands over and counts writes, and a write
        // counted before its push would leave `pending` one too high for
        // good (`written` never goes below zero). The lock orders the two.
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        self.pending.fetch_add(1, Relaxed);
        w.push_back(pkid);
        drop(w);
        self.pushed.notify_one();
    }

    /// Moves waiting acks into `client`'s request queue until it is full.
    /// Returns how many still wait here.
    pub fn hand_over(&self, client: &AsyncClient) -> usize {
        self.hand_over_to(|pkid| {
            let mut ack = Publish::new("", QoS::AtLeastOnce, Vec::new());
            ack.pkid = pkid;
            match client.try_ack(&ack) {
                Ok(()) => true,
                // Full: the rest goes on a later turn. Closed: the loop is
                // ending; unacked messages come again on the next start.
                Err(ClientError::TryRequest(_) | ClientError::Request(_)) => false,
            }
        })
    }

    /// Gives waiting acks to `take` in order until it refuses one; returns
    /// how many still wait here.
    fn hand_over_to(&self, mut take: impl FnMut(u16) -> bool) -> usize {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&pkid) = w.front() {
            if !take(pkid) {
                break;
            }
            w.pop_front();
        }
        // Keep memory in line with what is waiting after a flood.
        if w.capacity() > 4096 && w.len() < w.capacity() / 4 {
            let keep = w.len().max(1024);
            w.shrink_to(keep);
        }
        w.len()
    }

    /// An ack left the client for the broker.
    pub fn written(&self) {
        let _ = self
            .pending
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    /// The connection is gone: the broker delivers every unacked message
    /// again on the next one, and each copy is acked on its own (the buffer
    /// recognises it), so acks of the old connection are dropped, as
    /// rumqttc drops those in its queue.
    pub fn connection_lost(&self) {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        w.clear();
        self.pending.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::MqttOptions;

    /// The buffer's thread pushes acks (after each commit) while the
    /// ingest task hands them over and counts each one written: every
    /// written ack must find its push counted, or `pending` stays above
    /// zero for good (the ingest flood test once saw 1 left).
    #[test]
    fn pending_returns_to_zero_when_pushes_race_the_writes() {
        const N: u64 = 2_000_000;
        let acks = std::sync::Arc::new(Acks::default());
        let pusher = {
            let acks = acks.clone();
            std::thread::spawn(move || {
                for i in 0..N {
                    acks.push(QoS::AtLeastOnce, (i % 65_535) as u16 + 1);
                }
            })
        };
        let mut written = 0;
        while written < N {
            let mut taken = 0;
            acks.hand_over_to(|_| {
                taken += 1;
                true
            });
            for _ in 0..taken {
                acks.written();
            }
            written += taken;
        }
        pusher.join().unwrap();
        assert_eq!(acks.pending.load(Relaxed), 0);
    }

    /// The client's state machine refuses a request only a broker sends
    /// with an error instead of panicking the event loop (vendored
    /// rumqttc had `unimplemented!()` there).
    #[test]
    fn the_mqtt_state_refuses_a_broker_only_request_without_panicking() {
        let mut state = rumqttc::MqttState::new(10, true);
        for request in [
            rumqttc::Request::PingResp(rumqttc::PingResp),
            rumqttc::Request::PubComp(rumqttc::PubComp::new(1)),
        ] {
            assert!(matches!(
                state.handle_outgoing_packet(request),
                Err(rumqttc::StateError::InvalidState)
            ));
        }
    }

    #[test]
    fn acks_wait_here_while_the_client_queue_is_full() {
        let (client, _events) = AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), 4);
        let acks = Acks::default();
        for pkid in 1..=10 {
            acks.push(QoS::AtLeastOnce, pkid);
        }
        // QoS 0 messages have no ack.
        acks.push(QoS::AtMostOnce, 0);
        assert_eq!(acks.pending.load(Relaxed), 10);
        // The client takes four; six wait, and still six on the next turn.
        assert_eq!(acks.hand_over(&client), 6);
        assert_eq!(acks.hand_over(&client), 6);
        acks.written();
        assert_eq!(acks.pending.load(Relaxed), 9);
        acks.connection_lost();
        assert_eq!(acks.hand_over(&client), 0);
        assert_eq!(acks.pending.load(Relaxed), 0);
    }
}
