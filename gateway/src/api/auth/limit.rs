//! Per-client token buckets, without I/O: the middleware passes the time.

use std::collections::HashMap;
use std::time::Instant;

/// Above this many clients the idle ones are forgotten, so a flood of
/// addresses cannot grow the map without bound.
const MAX_CLIENTS: usize = 10_000;

#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: HashMap<String, (f64, Instant)>,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Takes one request of `client` at `now`: `Ok` or `Err(seconds until
    /// the next request is allowed)`.
    pub fn check(&mut self, client: &str, now: Instant) -> Result<(), f64> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        if self.buckets.len() >= MAX_CLIENTS && !self.buckets.contains_key(client) {
            // Forget the clients whose bucket has refilled: they are idle.
            let (rate, burst) = (self.per_second, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= MAX_CLIENTS {
                self.buckets.clear();
            }
        }
        let (tokens, at) = self
            .buckets
            .entry(client.to_owned())
            .or_insert((self.burst, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * self.per_second;
        *tokens = (*tokens + refill).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_client_gets_its_burst_then_the_sustained_rate_and_others_are_unaffected() {
        let mut l = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check("a", t0).is_ok());
        }
        let wait = l.check("a", t0).unwrap_err();
        assert!((wait - 0.5).abs() < 1e-9, "{wait}");
        assert!(
            l.check("b", t0).is_ok(),
            "another client has its own bucket"
        );
        // Half a second later one more request is allowed, not two.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.check("a", t1).is_ok());
        assert!(l.check("a", t1).is_err());
        // After a long pause the bucket is full again, never more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.check("a", t2).is_ok());
        }
        assert!(l.check("a", t2).is_err());
    }

    #[test]
    fn zero_rate_turns_the_limit_off() {
        let mut l = RateLimiter::new(0.0, 1);
        let t = Instant::now();
        for _ in 0..100 {
            assert!(l.check("a", t).is_ok());
        }
    }
}
