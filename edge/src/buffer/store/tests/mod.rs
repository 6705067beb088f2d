//! The store's unit tests: seqs, the delivery ledger, renumbering, the
//! disk budget, migrations from every earlier schema. Helpers shared by
//! several of the files are here.

use super::*;

mod delivery_log;
mod disk_budget;
mod migrate;
mod running_totals;
mod seqs;

pub(crate) fn reading(i: i64) -> Reading {
    Reading {
        sensor: format!("s{}", i % 3),
        ts_ms: 1_700_000_000_000 + i,
        lat: 52.0,
        lon: 13.0,
        flags: 0,
        values: vec![Value {
            quantity: "pm25".into(),
            value: i as f64,
        }],
    }
}

/// Publishes and acknowledges `first..=last`, as the uplink does.
fn sent_and_acked(s: &mut Store, first: u64, last: u64, now_ms: i64) -> Result<usize, BufferError> {
    s.mark_sent(first, last)?;
    s.ack_range(first, last, now_ms)
}

fn open(path: &Path) -> Store {
    Store::open(
        path,
        Options {
            acked_grace_ms: 0,
            ..Options::default()
        },
    )
    .unwrap()
}

fn delivery(pkid: u16, dup: bool, payload: &str) -> Delivery {
    Delivery::new(pkid, dup, "sensors/s1", payload.as_bytes())
}

fn msg(delivery: Delivery, readings: &[Reading]) -> Message<'_> {
    Message {
        delivery: Some(delivery),
        readings,
    }
}
