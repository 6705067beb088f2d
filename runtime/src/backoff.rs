//! The one retry delay of every Aeris loop that reconnects or retries
//! (broker, database, Redis): exponential, capped, jittered, reset on
//! success.
//!
//! Attempt `n` (from 0) has the ceiling `min(base * 2^n, max)`; the delay
//! is drawn uniformly from `[ceiling / 2, ceiling]`, so a fleet (or a set
//! of gateways) that lost its peer at the same instant does not come back
//! in lockstep. [`Backoff::reset`] after a success starts again at `base`.
//!
//! A plain state machine: it only computes delays; the caller sleeps (and
//! logs the delay it is about to wait, so the log says what it will do).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays start at `base` and double up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// After a success: the next delay is drawn below `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay before the next attempt; each call doubles the ceiling
    /// until it reaches `max`.
    pub fn next_delay(&mut self) -> Duration {
        let full = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// The ceiling of the next delay: `min(base * 2^attempt, max)`. The
    /// shift stops at 2^16, past which every useful cap is reached anyway.
    fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(16);
        self.base.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn each_delay_lies_between_half_its_ceiling_and_the_ceiling() {
        let mut b = Backoff::new(ms(100), Duration::from_secs(2));
        for ceiling in [100, 200, 400, 800, 1600, 2000, 2000] {
            let d = b.next_delay();
            assert!(
                d >= ms(ceiling) / 2 && d <= ms(ceiling),
                "{d:?} not in [{:?}, {:?}]",
                ms(ceiling) / 2,
                ms(ceiling)
            );
        }
    }

    #[test]
    fn jitter_spreads_delays_over_the_upper_half() {
        let delays: Vec<Duration> = (0..200)
            .map(|_| Backoff::new(ms(1000), ms(1000)).next_delay())
            .collect();
        assert!(delays.iter().all(|d| (ms(500)..=ms(1000)).contains(d)));
        let (lo, hi) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        // 200 uniform draws: both quarters of the range are hit.
        assert!(*lo < ms(625) && *hi > ms(875), "{lo:?}..{hi:?}");
    }

    #[test]
    fn the_cap_holds_however_many_attempts_failed() {
        let mut b = Backoff::new(ms(200), Duration::from_secs(30));
        for _ in 0..10_000 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
        assert!(b.next_delay() >= Duration::from_secs(15));
        let mut huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert!(huge.next_delay() <= Duration::MAX);
    }

    #[test]
    fn reset_starts_again_at_base() {
        let mut b = Backoff::new(ms(100), Duration::from_secs(5));
        for _ in 0..20 {
            b.next_delay();
        }
        b.reset();
        let d = b.next_delay();
        assert!(d >= ms(50) && d <= ms(100), "{d:?}");
        let d = b.next_delay();
        assert!(d >= ms(100) && d <= ms(200), "{d:?}");
    }
}
