//! The data-debt estimate of the status heartbeat: how long until the
//! queue is empty at the rate it has been shrinking.

use std::time::Instant;

/// Estimates when the queue will be empty from how it changed between
/// heartbeats (exponentially smoothed net drain rate).
#[derive(Debug, Default)]
pub struct DrainRate {
    last: Option<(Instant, u64)>,
    /// Readings per second the queue shrinks by (negative: grows).
    rate: Option<f64>,
}

impl DrainRate {
    /// Records the queue length at `now`; returns seconds until empty, or
    /// `None` while the queue is not shrinking.
    pub fn observe(&mut self, now: Instant, queued: u64) -> Option<u64> {
        if let Some((t, q)) = self.last {
            let dt = now.duration_since(t).as_secs_f64();
            if dt > 0.0 {
                let r = (q as f64 - queued as f64) / dt;
                self.rate = Some(match self.rate {
                    Some(old) => 0.7 * old + 0.3 * r,
                    None => r,
                });
            }
        }
        self.last = Some((now, queued));
        if queued == 0 {
            return Some(0);
        }
        match self.rate {
            Some(r) if r > 0.0 => Some((queued as f64 / r).ceil() as u64),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_shrinking_queue_has_an_eta_a_growing_one_none() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut d = DrainRate::default();
        assert_eq!(d.observe(s(0), 1000), None, "no rate yet");
        // 100 readings/s net.
        assert_eq!(d.observe(s(1), 900), Some(9));
        assert_eq!(d.observe(s(2), 800), Some(8));
        // Growing: no estimate.
        d.observe(s(3), 2000);
        assert_eq!(d.observe(s(4), 3000), None);
        // Empty is empty, whatever the rate.
        assert_eq!(d.observe(s(5), 0), Some(0));
    }
}
