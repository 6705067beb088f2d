//! The columnar batch encoding (format version 2): lossless round trips of
//! arbitrary batches, bit for bit, and a hostile-input sweep.

use aeris_wire::*;
use proptest::prelude::*;

mod common;
use common::XorShift;

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9_:@.]{1,24}"
}

/// Any finite f64: subnormals, -0.0, the extremes, and short decimals.
fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
        (-100_000i64..100_000, 0u32..4).prop_map(|(m, k)| m as f64 / 10f64.powi(k as i32)),
        Just(-0.0),
        Just(f64::MIN_POSITIVE / 2.0),
        Just(f64::MAX),
    ]
}

fn reading(sensors: Vec<String>, quantities: Vec<String>) -> impl Strategy<Value = Reading> {
    (
        prop::sample::select(sensors),
        // Every timestamp decode accepts, the ends included (the codec's
        // own arithmetic wraps, so any i64 would encode).
        prop_oneof![Just(0), Just(MAX_TS_MS), 0..=MAX_TS_MS],
        prop_oneof![Just(50.0), -90.0..=90.0f64, Just(-0.0)],
        prop_oneof![Just(8.0), -180.0..=180.0f64],
        prop_oneof![Just(0u32), any::<u32>()],
        prop::collection::vec((prop::sample::select(quantities), value()), 1..6),
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

fn batch() -> impl Strategy<Value = Batch> {
    (
        prop::collection::vec(name(), 1..5),
        prop::collection::vec(name(), 1..8),
    )
        .prop_flat_map(|(sensors, quantities)| {
            (
                "[A-Za-z0-9._-]{1,64}",
                0..=MAX_SEQ - 39,
                prop::collection::vec(reading(sensors, quantities), 1..40),
            )
        })
        .prop_map(|(device, first_seq, readings)| Batch {
            device,
            first_seq,
            readings,
        })
}

/// A reading with every float as its bits.
type ReadingBits = (String, i64, u64, u64, u32, Vec<(String, u64)>);

/// Every float as its bits, so -0.0 != 0.0 and the comparison is exact.
fn bits(b: &Batch) -> Vec<ReadingBits> {
    b.readings
        .iter()
        .map(|r| {
            (
                r.sensor.clone(),
                r.ts_ms,
                r.lat.to_bits(),
                r.lon.to_bits(),
                r.flags,
                r.values
                    .iter()
                    .map(|v| (v.quantity.clone(), v.value.to_bits()))
                    .collect(),
            )
        })
        .collect()
}

/// A realistic steady-state batch: `sensors` sensors reporting every 10 s,
/// PM2.5/PM10 to 0.1 µg/m³, temperature to 0.1 °C, RH to 1 %.
fn realistic(n: usize, sensors: usize) -> Batch {
    let t0 = 1_763_800_000_000i64;
    Batch {
        device: "lamp-0042".into(),
        first_seq: 1_000_000,
        readings: (0..n)
            .map(|i| {
                let s = i % sensors;
                let k = (i / sensors) as f64;
                let wave = |a: f64, p: f64| (a * (k / p + s as f64).sin() * 10.0).round() / 10.0;
                Reading {
                    sensor: format!("sensor-{s:02}"),
                    ts_ms: t0 + (i / sensors) as i64 * 10_000 + s as i64 * 17,
                    lat: 52.52 + s as f64 * 0.001,
                    lon: 13.40 + s as f64 * 0.002,
                    flags: 0,
                    values: [
                        ("pm25", 12.0 + wave(3.0, 40.0)),
                        ("pm10", 20.0 + wave(5.0, 30.0)),
                        ("temp", 18.0 + wave(2.0, 200.0)),
                        ("rh", (55.0 + wave(10.0, 300.0)).round()),
                    ]
                    .into_iter()
                    .map(|(q, value)| Value {
                        quantity: q.into(),
                        value,
                    })
                    .collect(),
                }
            })
            .collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn columnar_batches_round_trip_bit_exactly(b in batch()) {
        let bytes = columnar::encode(&b);
        prop_assert_eq!(bytes[0], COLUMNAR_VERSION);
        let back = decode::<Batch>(&bytes).unwrap();
        prop_assert_eq!(&back.device, &b.device);
        prop_assert_eq!(back.first_seq, b.first_seq);
        prop_assert_eq!(bits(&back), bits(&b));
    }

    /// A batch put together in a `Builder` (the edge reads its rows into
    /// one) encodes as the `Batch` of the same readings: its first `n`
    /// readings, and after being cut back and filled with more (new
    /// sensors and names among them). The decoded size counts the same.
    #[test]
    fn a_builder_encodes_as_the_batch_of_the_same_readings(
        b in batch(),
        more in batch(),
        n in any::<prop::sample::Index>(),
        keep in any::<prop::sample::Index>(),
    ) {
        let mut builder = columnar::Builder::new();
        for r in &b.readings {
            builder.push_reading(r).unwrap();
        }
        let n = n.index(b.readings.len()) + 1;
        let prefix = Batch { readings: b.readings[..n].to_vec(), ..b.clone() };
        prop_assert_eq!(builder.encode(&b.device, b.first_seq, n), columnar::encode(&prefix));
        prop_assert_eq!(builder.decoded_bytes(&b.device, n), columnar::decoded_bytes(&prefix));

        let keep = keep.index(b.readings.len() + 1);
        builder.truncate(keep);
        for r in &more.readings {
            builder.push_reading(r).unwrap();
        }
        let mut readings = b.readings[..keep].to_vec();
        readings.extend(more.readings.iter().cloned());
        let whole = Batch { readings, ..b.clone() };
        prop_assert_eq!(builder.len(), whole.readings.len());
        prop_assert_eq!(
            builder.encode(&b.device, b.first_seq, builder.len()),
            columnar::encode(&whole)
        );
        let back = builder.to_batch(&b.device, b.first_seq, builder.len());
        prop_assert_eq!(bits(&back), bits(&whole));
    }

    #[test]
    fn truncated_columnar_batches_are_rejected(b in batch(), cut in any::<prop::sample::Index>()) {
        let bytes = columnar::encode(&b);
        let at = cut.index(bytes.len());
        prop_assert!(decode::<Batch>(&bytes[..at]).is_err());
    }
}

/// A batch whose every value has a name of its own (a hostile sensor
/// inventing quantities) is put together and encoded as the `Batch` of the
/// same readings: 2,000 readings x 48 names.
#[test]
fn a_builder_with_a_name_per_value_encodes_as_the_batch() {
    let mut b = realistic(2_000, 50);
    for (i, r) in b.readings.iter_mut().enumerate() {
        r.values = (0..48)
            .map(|k| Value {
                quantity: format!("q{i}_{k}"),
                value: k as f64,
            })
            .collect();
    }
    let mut builder = columnar::Builder::new();
    for r in &b.readings {
        builder.push_reading(r).unwrap();
    }
    let n = builder.len();
    assert_eq!(
        builder.encode(&b.device, b.first_seq, n),
        columnar::encode(&b)
    );
    builder.truncate(1_000);
    let half = Batch {
        readings: b.readings[..1_000].to_vec(),
        ..b.clone()
    };
    assert_eq!(
        builder.encode(&b.device, b.first_seq, 1_000),
        columnar::encode(&half)
    );
}

/// A reading the cloud would refuse is not added to a `Builder`.
#[test]
fn a_builder_refuses_what_the_cloud_refuses() {
    let good = realistic(3, 2).readings;
    let mut builder = columnar::Builder::new();
    for r in &good {
        builder.push_reading(r).unwrap();
    }
    let before = builder.encode("d", 0, builder.len());
    let mut nan = good[0].clone();
    nan.values[0].value = f64::NAN;
    let mut name = good[0].clone();
    name.sensor = "bad\u{7}sensor".into();
    let mut lat = good[0].clone();
    lat.lat = 91.0;
    let mut none = good[0].clone();
    none.values.clear();
    for bad in [nan, name, lat, none] {
        assert!(builder.push_reading(&bad).is_err(), "{bad:?}");
        assert!(bad.check().is_err());
    }
    assert_eq!(builder.len(), 3);
    assert_eq!(builder.encode("d", 0, builder.len()), before);
}

#[test]
fn steady_state_readings_cost_at_most_12_bytes_and_far_less_than_v1() {
    let b = realistic(500, 10);
    let v2 = columnar::encode(&b).len();
    let v1 = encode(&b).len();
    let per_reading = v2 as f64 / 500.0;
    println!("columnar {v2} bytes ({per_reading} per reading), postcard {v1}");
    assert!(per_reading <= 12.0, "{per_reading} bytes per reading");
    assert!(v2 * 4 < v1, "columnar {v2} bytes vs postcard {v1}");
    assert_eq!(
        bits(&decode::<Batch>(&columnar::encode(&b)).unwrap()),
        bits(&b)
    );
}

/// Random bodies (plain and zstd), truncations and bit flips of valid
/// encodings, a decompression bomb: each is an error or a valid batch, and
/// nothing panics.
#[test]
fn hostile_columnar_inputs_never_panic_and_are_rejected() {
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    let samples: Vec<Vec<u8>> = [(1, 1), (7, 3), (60, 6), (500, 10)]
        .iter()
        .map(|&(n, s)| columnar::encode(&realistic(n, s)))
        .collect();

    // Random bodies behind the version and both codec bytes.
    for i in 0..40_000 {
        let mut bytes = vec![COLUMNAR_VERSION, (i % 3) as u8];
        let len = rng.below(120);
        bytes.extend((0..len).map(|_| rng.next() as u8));
        if let Ok(b) = decode::<Batch>(&bytes) {
            assert!(b.validate().is_ok());
        }
    }
    // Plain bodies that start like a real one, then go random.
    let plain = {
        let b = realistic(2, 2);
        let enc = columnar::encode(&b);
        assert_eq!(enc[1], 0, "tiny batch stays plain");
        enc
    };
    for _ in 0..40_000 {
        let keep = rng.below(plain.len());
        let mut bytes = plain[..keep].to_vec();
        bytes.extend((0..rng.below(40)).map(|_| rng.next() as u8));
        if let Ok(b) = decode::<Batch>(&bytes) {
            assert!(b.validate().is_ok());
        }
    }
    // Every truncation of valid encodings is rejected.
    for s in &samples {
        for cut in 0..s.len() {
            assert!(decode::<Batch>(&s[..cut]).is_err(), "prefix {cut} accepted");
        }
    }
    // Single-bit flips: an error, or a batch that is still valid.
    for _ in 0..20_000 {
        let s = &samples[rng.below(samples.len())];
        let mut bytes = s.clone();
        let at = 1 + rng.below(bytes.len() - 1);
        bytes[at] ^= 1 << rng.below(8);
        if let Ok(b) = decode::<Batch>(&bytes) {
            assert!(b.validate().is_ok());
        }
    }
    // Trailing bytes after a plain body.
    let mut bytes = plain.clone();
    bytes.push(0);
    assert_eq!(decode::<Batch>(&bytes), Err(WireError::TrailingBytes(1)));
    // A zstd frame that inflates beyond the cap is refused, not inflated.
    let bomb = zstd_bomb(columnar::MAX_BODY_BYTES + 1024);
    assert!(bomb.len() < 64 << 10);
    let err = decode::<Batch>(&bomb).unwrap_err();
    assert_eq!(err.reason(), "malformed", "{err}");
    // Other messages do not accept version 2.
    assert_eq!(
        decode::<Ack>(&samples[0]).unwrap_err().reason(),
        "unsupported_version"
    );
}

fn zstd_bomb(size: usize) -> Vec<u8> {
    let mut out = vec![COLUMNAR_VERSION, 1];
    out.extend(zstd::bulk::compress(&vec![0u8; size], 3).unwrap());
    out
}

#[test]
fn old_postcard_batches_still_decode() {
    let b = realistic(50, 5);
    let v1 = encode(&b);
    assert_eq!(v1[0], FORMAT_VERSION);
    assert_eq!(bits(&decode::<Batch>(&v1).unwrap()), bits(&b));
}

#[test]
fn invalid_batches_are_refused_in_the_columnar_layout_too() {
    let mut b = realistic(3, 1);
    b.readings[1].lat = 91.0;
    assert_eq!(
        decode::<Batch>(&columnar::encode(&b)).unwrap_err().reason(),
        "invalid"
    );
    let mut b = realistic(3, 1);
    b.device = "a/b".into();
    assert_eq!(
        decode::<Batch>(&columnar::encode(&b)).unwrap_err().reason(),
        "invalid"
    );
}

/// Issue 14 (2): the decode bomb. 10,000 readings x 64 values with 128-byte
/// quantity names is about 400 bytes on the wire and used to decode into
/// about 100 MB (every value cloned its name). The decoder now refuses any
/// batch whose decoded size passes `MAX_DECODED_BYTES`, before building it.
pub fn bomb(readings: usize, values: usize, name_len: usize) -> Batch {
    let names: Vec<String> = (0..values)
        .map(|i| format!("{i:0>width$}", width = name_len))
        .collect();
    Batch {
        device: "dev-bomb".into(),
        first_seq: 1,
        readings: (0..readings)
            .map(|i| Reading {
                sensor: "s".repeat(name_len),
                ts_ms: 1_700_000_000_000 + i as i64,
                lat: 48.0,
                lon: 11.0,
                flags: 0,
                values: names
                    .iter()
                    .map(|q| Value {
                        quantity: q.clone(),
                        value: 1.0,
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[test]
fn a_tiny_batch_cannot_decode_into_more_than_the_cap() {
    let b = bomb(10_000, 64, 128);
    let wire = columnar::encode(&b);
    assert!(wire.len() < 2_000, "the bomb is {} bytes", wire.len());
    assert!(columnar::decoded_bytes(&b) > 100_000_000);
    let err = decode::<Batch>(&wire).unwrap_err();
    assert_eq!(err.reason(), "too_large", "{err}");
    assert!(err.to_string().contains("decode into"), "{err}");

    // The largest batch of this shape under the cap still decodes, and
    // the estimate the decoder checks is the one callers can compute.
    let per_reading = columnar::decoded_bytes(&bomb(1, 9, 128));
    let fits = (columnar::MAX_DECODED_BYTES / per_reading).min(10_000);
    let b = bomb(fits, 9, 128);
    assert!(columnar::decoded_bytes(&b) <= columnar::MAX_DECODED_BYTES);
    assert_eq!(decode::<Batch>(&columnar::encode(&b)).unwrap(), b);
    let over = bomb(10_000, 10, 128);
    assert!(columnar::decoded_bytes(&over) > columnar::MAX_DECODED_BYTES);
    assert_eq!(
        decode::<Batch>(&columnar::encode(&over))
            .unwrap_err()
            .reason(),
        "too_large"
    );
    // A realistic batch is far below the cap: 10,000 readings of 7 values.
    assert!(columnar::decoded_bytes(&realistic(10_000, 50)) < columnar::MAX_DECODED_BYTES / 4);
}
