//! The disk budget: aggregates in place of raw readings, then drops.

use super::*;

fn series(sensor: &str, n: i64, step_ms: i64) -> Vec<Reading> {
    (0..n)
        .map(|i| Reading {
            sensor: sensor.into(),
            ts_ms: 1_700_000_000_000 + i * step_ms,
            lat: 1.0,
            lon: 2.0,
            flags: if i == 300 { 1 << 1 } else { 0 },
            values: vec![
                Value {
                    quantity: "pm25".into(),
                    value: i as f64,
                },
                Value {
                    quantity: "pm10".into(),
                    value: 2.0 * i as f64,
                },
            ],
        })
        .collect()
}

/// A store with a 1 MiB budget holding 20,000 readings of `sensor`,
/// `step_ms` apart (about three times the budget), appended 1,000 at a
/// time; and the readings.
fn over_budget(
    dir: &Path,
    acked_grace_ms: i64,
    default_window_ms: i64,
    sensor: &str,
    step_ms: i64,
) -> (Store, Vec<Reading>) {
    let mut s = Store::open(
        &dir.join("b.db"),
        Options {
            max_bytes: 1 << 20,
            acked_grace_ms,
            window_ms: HashMap::new(),
            default_window_ms,
        },
    )
    .unwrap();
    let all = series(sensor, 20_000, step_ms);
    for chunk in all.chunks(1000) {
        s.append(chunk).unwrap();
    }
    (s, all)
}

#[test]
fn published_rows_are_not_downsampled() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = over_budget(dir.path(), 0, 60_000, "a", 1000);
    // The oldest batch went out; its fate is unknown.
    assert_eq!(s.mark_sent(1, 2000).unwrap(), 2000);
    let e = s.enforce_budget().unwrap();
    assert!(e.downsampled > 0 && e.dropped == 0, "{e:?}");
    let (rows, _) = s.read_from(1, 2000).unwrap();
    let raw_sent = rows.iter().filter(|(q, _)| *q <= 2000).count();
    assert_eq!(
        raw_sent, 2000,
        "published rows stay raw and keep their seqs"
    );
    assert!(rows[..2000]
        .iter()
        .all(|(_, r)| r.flags & FLAG_AGGREGATE == 0));
}

#[test]
fn over_budget_the_oldest_raw_readings_become_aggregates_then_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    // 20,000 readings one second apart: ~3 MB, three times the budget.
    let (mut s, _) = over_budget(dir.path(), 3_600_000, 60_000, "a", 1000);
    // Acked readings go first.
    sent_and_acked(&mut s, 1, 100, 0).unwrap();
    let e = s.enforce_budget().unwrap();
    assert_eq!(e.acked, 100);
    assert!(e.downsampled > 0 && e.aggregates > 0, "{e:?}");
    assert!(s.used_bytes().unwrap() <= 1 << 20);
    let losses = s.losses().unwrap();
    assert_eq!(losses.get("downsampled"), Some(&e.downsampled));
    // Every raw reading is accounted for: still raw, inside an
    // aggregate's `.n`, or counted as dropped.
    let (rows, _) = s.read_from(0, 100_000).unwrap();
    let mut raw = 0u64;
    let mut in_aggregates = 0f64;
    for (_, r) in &rows {
        if r.flags & FLAG_AGGREGATE != 0 {
            let n = r.values.iter().find(|v| v.quantity == "pm25.n").unwrap();
            in_aggregates += n.value;
            assert_eq!(r.ts_ms % 60_000, 0, "aggregates start at their window");
            let mean = r.values.iter().find(|v| v.quantity == "pm25").unwrap();
            let min = r.values.iter().find(|v| v.quantity == "pm25.min").unwrap();
            let max = r.values.iter().find(|v| v.quantity == "pm25.max").unwrap();
            assert_eq!(mean.value, (min.value + max.value) / 2.0);
        } else {
            raw += 1;
        }
    }
    let dropped = losses.get("dropped").copied().unwrap_or(0);
    assert_eq!(dropped, e.dropped);
    assert_eq!(
        raw + in_aggregates as u64 + 100,
        20_000,
        "raw {raw} + aggregated {in_aggregates} + acked 100"
    );
    assert_eq!(dropped, 0, "downsampling alone fits this budget");
    // The flag of reading 300 survives in its aggregate.
    assert!(rows.iter().any(|(_, r)| r.flags == FLAG_AGGREGATE | 1 << 1));
    // Seqs of aggregates are new, never reused.
    let max_seq = rows.iter().map(|r| r.0).max().unwrap();
    assert_eq!(max_seq + 1, s.next_seq());
    assert!(s.next_seq() > 20_001);
}

#[test]
fn readings_that_share_no_window_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    // One reading per window: nothing to aggregate.
    let (mut s, all) = over_budget(dir.path(), 0, 1000, "b", 5000);
    let e = s.enforce_budget().unwrap();
    assert_eq!(e.downsampled, 0);
    assert!(e.dropped > 0);
    assert!(s.used_bytes().unwrap() <= 1 << 20);
    let held = s.depth().unwrap().readings;
    assert_eq!(held + e.dropped, 20_000);
    assert_eq!(s.losses().unwrap().get("dropped"), Some(&e.dropped));
    // The newest survive.
    let (rows, _) = s.read_from(0, 1_000_000).unwrap();
    assert_eq!(rows.last().unwrap().1.ts_ms, all[19_999].ts_ms);
}
