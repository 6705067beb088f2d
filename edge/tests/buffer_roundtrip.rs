//! What ingest accepts, the buffer reads back equal: arbitrary readings
//! that pass the one validation ingest and read-back share
//! ([`row::check`]) go through a real buffer file and come back bit for
//! bit (any finite f64, -0.0, subnormals, long and odd names); readings it
//! refuses never reach the buffer. And SenML packs with extreme numbers:
//! whatever the parser accepts passes that check.

use std::collections::BTreeMap;

use aeris_edge::buffer::{row, Options, Store};
use aeris_edge::ingest::{flat, parse_message};
use aeris_wire::{Reading, Value};
use proptest::prelude::*;

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
        Just(-0.0),
        Just(f64::MIN_POSITIVE / 3.0),
        Just(f64::MAX),
        Just(f64::MIN),
    ]
}

/// Mostly finite: most generated readings are ones ingest accepts.
fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![20 => finite(), 1 => Just(f64::NAN), 1 => Just(f64::INFINITY)]
}

fn position(limit: f64) -> impl Strategy<Value = f64> {
    prop_oneof![20 => -limit..=limit, 1 => any_f64()]
}

fn reading() -> impl Strategy<Value = Reading> {
    (
        "[a-z0-9:/._-]{0,130}",
        prop_oneof![20 => 0i64..=253_402_300_799_999, 1 => any::<i64>()],
        position(90.0),
        position(180.0),
        any::<u32>(),
        prop::collection::vec(("[a-z0-9:@._]{0,130}", any_f64()), 0..66),
    )
        .prop_map(|(sensor, ts_ms, lat, lon, flags, values)| Reading {
            sensor,
            ts_ms,
            lat,
            lon,
            flags,
            values: values
                .into_iter()
                .map(|(quantity, value)| Value { quantity, value })
                .collect(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn accepted_readings_read_back_equal_and_refused_ones_never_enter(
        batch in prop::collection::vec(reading(), 1..8)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("b.db"), Options::default()).unwrap();
        let accepted: Vec<Reading> = batch
            .into_iter()
            .filter(|r| row::check(r).is_ok())
            .collect();
        if accepted.is_empty() {
            return Ok(());
        }
        store.append(&accepted).unwrap();
        let (back, corrupt) = store.read_from(0, 100).unwrap();
        prop_assert!(corrupt.is_empty(), "{corrupt:?}");
        let back: Vec<Reading> = back.into_iter().map(|(_, r)| r).collect();
        prop_assert_eq!(back.len(), accepted.len());
        for (a, b) in accepted.iter().zip(&back) {
            // Bit for bit: -0.0 and 0.0 are `==` but not the same value.
            prop_assert_eq!(a.lat.to_bits(), b.lat.to_bits());
            prop_assert_eq!(a.lon.to_bits(), b.lon.to_bits());
            for (x, y) in a.values.iter().zip(&b.values) {
                prop_assert_eq!(x.value.to_bits(), y.value.to_bits());
            }
        }
        prop_assert_eq!(back, accepted);
    }

    #[test]
    fn whatever_the_senml_parser_accepts_passes_the_buffers_check(
        bv in any::<f64>().prop_filter("finite", |v| v.is_finite()),
        v in any::<f64>().prop_filter("finite", |v| v.is_finite()),
        name in prop_oneof![Just("pm25"), Just("foo"), Just("lat"), Just("lon"), Just("temp")],
        bn in "[a-z:]{0,20}",
        lat in any::<f64>().prop_filter("finite", |v| v.is_finite()),
    ) {
        let pack = serde_json::json!([
            {"bn": bn, "bv": bv, "n": name, "v": v},
            {"n": "lat", "v": lat},
            {"n": "lon", "v": 1.0},
        ]);
        let sensors = BTreeMap::new();
        let cx = flat::Context {
            now_ms: 1_700_000_000_000,
            max_future_ms: 300_000,
            retention_ms: 86_400_000,
            max_payload_bytes: 4096,
            sensors: &sensors,
            reference: Default::default(),
        };
        if let Ok(readings) = parse_message("s1", pack.to_string().as_bytes(), &[], &cx) {
            for r in &readings {
                prop_assert!(row::check(r).is_ok(), "accepted {r:?}: {:?}", row::check(r));
            }
        }
    }
}
