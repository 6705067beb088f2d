//! Time on the wire: Unix time in milliseconds (UTC) as an `i64`, the
//! unit of every `ts_ms` and `*_ms` field.

use std::time::{SystemTime, UNIX_EPOCH};

/// `t` in Unix milliseconds; `None` before 1970 (no wire timestamp is).
/// Saturates at `i64::MAX` (the year 292 million).
pub fn unix_ms(t: SystemTime) -> Option<i64> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The wall clock in Unix milliseconds; 0 if the clock is set before 1970.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn unix_ms_counts_from_1970_and_refuses_earlier() {
        assert_eq!(unix_ms(UNIX_EPOCH), Some(0));
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(unix_ms(t), Some(1_700_000_000_123));
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_millis(1)), None);
        assert!(now_ms() > 1_700_000_000_000);
    }
}
