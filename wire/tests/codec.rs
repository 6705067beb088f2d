//! Round-trip property tests and a hostile-input sweep of the codec.

use aeris_wire::*;
use proptest::prelude::*;

mod common;
use common::XorShift;

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9_:@.]{1,24}"
}
fn device() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,64}"
}

/// Timestamps decode accepts, the ends included.
fn ts() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0), Just(MAX_TS_MS), 0..=MAX_TS_MS]
}

fn reading() -> impl Strategy<Value = Reading> {
    (
        name(),
        ts(),
        -90.0..=90.0f64,
        -180.0..=180.0f64,
        any::<u32>(),
        prop::collection::vec(
            (name(), -1e12..1e12f64).prop_map(|(quantity, value)| Value { quantity, value }),
            1..6,
        ),
    )
        .prop_map(|(sensor, ts_ms, lat, lon, flags, values)| Reading {
            sensor,
            ts_ms,
            lat,
            lon,
            flags,
            values,
        })
}

fn batch() -> impl Strategy<Value = Batch> {
    (
        device(),
        0..=MAX_SEQ - 19,
        prop::collection::vec(reading(), 1..20),
    )
        .prop_map(|(device, first_seq, readings)| Batch {
            device,
            first_seq,
            readings,
        })
}

fn status() -> impl Strategy<Value = Status> {
    (
        device(),
        any::<u64>(),
        ts(),
        any::<bool>(),
        name(),
        any::<(u64, u64, u64)>(),
        proptest::option::of(ts()),
        prop::collection::vec((name(), any::<u64>()), 0..4),
        prop::collection::vec((name(), name()), 0..3),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(
                device,
                boot_id,
                ts_ms,
                online,
                agent_version,
                (last_seq, qr, qb),
                oldest,
                losses,
                models,
                drain_eta_s,
            )| {
                Status {
                    device,
                    boot_id,
                    ts_ms,
                    state: if online {
                        DeviceState::Online
                    } else {
                        DeviceState::Offline
                    },
                    agent_version,
                    last_seq,
                    queued_readings: qr,
                    queued_bytes: qb,
                    oldest_unsent_ms: oldest,
                    losses: losses
                        .into_iter()
                        .map(|(reason, count)| Loss { reason, count })
                        .collect(),
                    models: models
                        .into_iter()
                        .map(|(name, version)| ModelVersion { name, version })
                        .collect(),
                    drain_eta_s,
                }
            },
        )
}

fn command() -> impl Strategy<Value = Command> {
    let kind = prop_oneof![
        any::<u64>().prop_map(|from_seq| CommandKind::Resend { from_seq }),
        (0..u64::MAX / 4, 0..u64::MAX / 4, 1..u64::MAX / 4).prop_map(|(first_seq, len, gap)| {
            CommandKind::Renumber {
                first_seq,
                last_seq: first_seq + len,
                next_seq: first_seq + len + gap,
            }
        }),
        (name(), ".{0,40}").prop_map(|(key, value)| CommandKind::SetConfig { key, value }),
        (1..=u64::MAX, "[^\u{0}]{0,80}")
            .prop_map(|(version, fragment)| CommandKind::Configure { version, fragment }),
        prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|manifest| CommandKind::Ota { manifest }),
        (
            name(),
            name(),
            ".{0,40}",
            any::<[u8; 32]>(),
            prop::collection::vec(any::<u8>(), 0..65),
            any::<bool>()
        )
            .prop_map(|(name, version, url, sha256, signature, force)| {
                CommandKind::Model {
                    name,
                    version,
                    url,
                    sha256,
                    signature,
                    force,
                }
            }),
    ];
    (any::<u64>(), kind).prop_map(|(id, kind)| Command { id, kind })
}

fn event() -> impl Strategy<Value = Event> {
    (device(), any::<i64>(), 0..5u8, ".{0,60}").prop_map(|(device, ts_ms, k, message)| Event {
        device,
        ts_ms,
        kind: [
            EventKind::Alert,
            EventKind::SensorFault,
            EventKind::Ota,
            EventKind::Model,
            EventKind::Agent,
        ][k as usize],
        message,
    })
}

fn config_report() -> impl Strategy<Value = ConfigReport> {
    let refusal =
        (any::<u64>(), "[^\u{0}]{0,80}").prop_map(|(version, reason)| Refusal { version, reason });
    (
        device(),
        ts(),
        prop::collection::vec(name(), 0..4),
        any::<u64>(),
        prop::option::of(refusal),
    )
        .prop_map(|(device, ts_ms, groups, applied, refused)| ConfigReport {
            device,
            ts_ms,
            groups,
            applied,
            refused,
        })
}

fn ack() -> impl Strategy<Value = Ack> {
    (device(), any::<u64>(), any::<u64>()).prop_map(|(device, a, b)| Ack {
        device,
        first_seq: a.min(b),
        last_seq: a.max(b),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn batch_round_trips(b in batch()) {
        let bytes = encode(&b);
        prop_assert_eq!(bytes[0], FORMAT_VERSION);
        prop_assert_eq!(decode::<Batch>(&bytes).unwrap(), b);
    }

    #[test]
    fn ack_round_trips(a in ack()) {
        prop_assert_eq!(decode::<Ack>(&encode(&a)).unwrap(), a);
    }

    #[test]
    fn status_round_trips(s in status()) {
        prop_assert_eq!(decode::<Status>(&encode(&s)).unwrap(), s);
    }

    #[test]
    fn event_round_trips(e in event()) {
        prop_assert_eq!(decode::<Event>(&encode(&e)).unwrap(), e);
    }

    #[test]
    fn command_round_trips(c in command()) {
        prop_assert_eq!(decode::<Command>(&encode(&c)).unwrap(), c);
    }

    #[test]
    fn config_report_round_trips(r in config_report()) {
        prop_assert_eq!(decode::<ConfigReport>(&encode(&r)).unwrap(), r);
    }

    /// Every strict prefix of a valid encoding is an error, never a panic.
    #[test]
    fn truncated_batches_are_rejected(b in batch(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&b);
        let at = cut.index(bytes.len());
        prop_assert!(decode::<Batch>(&bytes[..at]).is_err());
    }
}

fn decode_any(bytes: &[u8]) -> [bool; 6] {
    [
        decode::<ConfigReport>(bytes).is_ok(),
        decode::<Batch>(bytes).is_ok(),
        decode::<Ack>(bytes).is_ok(),
        decode::<Status>(bytes).is_ok(),
        decode::<Event>(bytes).is_ok(),
        decode::<Command>(bytes).is_ok(),
    ]
}

fn sample_batch(rng: &mut XorShift) -> Batch {
    let n = 1 + rng.below(8);
    Batch {
        device: format!("dev-{}", rng.below(1000)),
        first_seq: rng.next() >> 2,
        readings: (0..n)
            .map(|i| Reading {
                sensor: format!("s{i}"),
                ts_ms: rng.next() as i64 >> 20,
                lat: 50.0,
                lon: 8.0,
                flags: 0,
                values: vec![Value {
                    quantity: "pm25".into(),
                    value: i as f64,
                }],
            })
            .collect(),
    }
}

/// 120,000 hostile inputs: random bytes, truncations and single-byte
/// corruptions of valid batches, and valid bodies behind a wrong version byte.
/// Each must be an error for the type it is not (or a valid message), and
/// none may panic.
#[test]
fn hostile_inputs_never_panic_and_are_rejected() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut rejected = 0usize;

    // Random bytes behind the right version byte, so the body parser is hit.
    for _ in 0..40_000 {
        let len = rng.below(96);
        let mut bytes = vec![FORMAT_VERSION];
        bytes.extend((0..len).map(|_| rng.next() as u8));
        decode_any(&bytes);
    }

    // Every truncation of valid batches is rejected.
    let mut truncations = 0;
    while truncations < 40_000 {
        let full = encode(&sample_batch(&mut rng));
        for cut in 0..full.len() {
            assert!(
                decode::<Batch>(&full[..cut]).is_err(),
                "prefix {cut} accepted"
            );
            truncations += 1;
            rejected += 1;
        }
    }

    // A valid body behind any other version byte is rejected as such.
    for _ in 0..20_000 {
        let mut bytes = encode(&sample_batch(&mut rng));
        let v = loop {
            let v = rng.next() as u8;
            // Version 2 is the columnar batch layout (tests/columnar.rs).
            if v != FORMAT_VERSION && v != COLUMNAR_VERSION {
                break v;
            }
        };
        bytes[0] = v;
        assert_eq!(
            decode::<Batch>(&bytes),
            Err(WireError::UnsupportedVersion {
                found: v,
                expected: FORMAT_VERSION
            })
        );
        rejected += 1;
    }

    // Corrupt one byte of a valid batch: decoding may succeed (the byte was
    // inside a float, say) but then the result is still a valid batch.
    for _ in 0..20_000 {
        let mut bytes = encode(&sample_batch(&mut rng));
        let at = 1 + rng.below(bytes.len() - 1);
        bytes[at] ^= 1 << rng.below(8);
        if let Ok(b) = decode::<Batch>(&bytes) {
            assert!(b.validate().is_ok());
        }
    }

    // Extra bytes after a valid message are rejected.
    let mut bytes = encode(&sample_batch(&mut rng));
    bytes.push(0);
    assert_eq!(decode::<Batch>(&bytes), Err(WireError::TrailingBytes(1)));
    assert_eq!(decode::<Batch>(&[]), Err(WireError::Empty));
    assert!(rejected >= 60_000);
}

#[test]
fn semantic_checks_reject_what_postcard_accepts() {
    let good = Batch {
        device: "d1".into(),
        first_seq: 5,
        readings: vec![Reading {
            sensor: "s".into(),
            ts_ms: 0,
            lat: 0.0,
            lon: 0.0,
            flags: 0,
            values: vec![Value {
                quantity: "pm25".into(),
                value: 1.0,
            }],
        }],
    };
    assert_eq!(good.last_seq(), Some(5));
    type Mutation = Box<dyn Fn(&mut Batch)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("empty", Box::new(|b| b.readings.clear())),
        (
            "overflow",
            Box::new(|b| {
                b.first_seq = u64::MAX;
                let r = b.readings[0].clone();
                b.readings.push(r);
            }),
        ),
        (
            "nan",
            Box::new(|b| b.readings[0].values[0].value = f64::NAN),
        ),
        ("lat", Box::new(|b| b.readings[0].lat = 91.0)),
        ("lon", Box::new(|b| b.readings[0].lon = f64::INFINITY)),
        ("device", Box::new(|b| b.device = "a/b".into())),
        ("no values", Box::new(|b| b.readings[0].values.clear())),
    ];
    for (what, mutate) in cases {
        let mut b = good.clone();
        mutate(&mut b);
        let err = decode::<Batch>(&encode(&b)).unwrap_err();
        assert_eq!(err.reason(), "invalid", "{what}");
    }
    let reversed = Ack {
        device: "d".into(),
        first_seq: 9,
        last_seq: 3,
    };
    assert!(decode::<Ack>(&encode(&reversed)).is_err());
}

/// What PostgreSQL or Redis would refuse never gets past decode, in either
/// batch layout, and each is counted under its own reason.
#[test]
fn decode_rejects_what_the_database_would_refuse() {
    let good = Batch {
        device: "d1".into(),
        first_seq: 1,
        readings: vec![Reading {
            sensor: "s".into(),
            ts_ms: 1_700_000_000_000,
            lat: 0.0,
            lon: 0.0,
            flags: 0,
            values: vec![Value {
                quantity: "pm25".into(),
                value: 1.0,
            }],
        }],
    };
    type Mutation = Box<dyn Fn(&mut Batch)>;
    let cases: Vec<(&str, &str, Mutation)> = vec![
        (
            "ts 10^16",
            "bad_timestamp",
            Box::new(|b| b.readings[0].ts_ms = 10_i64.pow(16)),
        ),
        (
            "ts past 9999",
            "bad_timestamp",
            Box::new(|b| b.readings[0].ts_ms = MAX_TS_MS + 1),
        ),
        (
            "ts before 1970",
            "bad_timestamp",
            Box::new(|b| b.readings[0].ts_ms = -1),
        ),
        (
            "ts i64::MIN",
            "bad_timestamp",
            Box::new(|b| b.readings[0].ts_ms = i64::MIN),
        ),
        (
            "NUL in sensor",
            "bad_text",
            Box::new(|b| b.readings[0].sensor = "pm\0sensor".into()),
        ),
        (
            "escape in sensor",
            "bad_text",
            Box::new(|b| b.readings[0].sensor = "s\x1b[31m".into()),
        ),
        (
            "C1 in quantity",
            "bad_text",
            Box::new(|b| b.readings[0].values[0].quantity = "pm\u{85}".into()),
        ),
        (
            "NUL in quantity",
            "bad_text",
            Box::new(|b| b.readings[0].values[0].quantity = "\0".into()),
        ),
        (
            "seq past bigint",
            "invalid",
            Box::new(|b| b.first_seq = MAX_SEQ),
        ),
    ];
    for (what, reason, mutate) in cases {
        let mut b = good.clone();
        mutate(&mut b);
        // A two-reading batch for the seq case, so its last seq is past MAX_SEQ.
        if what.starts_with("seq") {
            b.readings.push(b.readings[0].clone());
        }
        for (layout, bytes) in [("postcard", encode(&b)), ("columnar", columnar::encode(&b))] {
            let err = decode::<Batch>(&bytes).expect_err(what);
            assert_eq!(err.reason(), reason, "{what} ({layout}): {err}");
        }
    }
    // The ends of the ranges are accepted.
    let mut b = good.clone();
    b.readings[0].ts_ms = MAX_TS_MS;
    b.first_seq = MAX_SEQ;
    b.readings[0].sensor = "Straße-7 (Süd)".into();
    assert_eq!(decode::<Batch>(&columnar::encode(&b)), Ok(b.clone()));
    assert_eq!(decode::<Batch>(&encode(&b)), Ok(b));
    // A status with an impossible time is refused too (its row would be).
    let mut s = Status {
        device: "d1".into(),
        boot_id: 1,
        ts_ms: 10_i64.pow(16),
        state: DeviceState::Online,
        agent_version: "1.0".into(),
        last_seq: 0,
        queued_readings: 0,
        queued_bytes: 0,
        oldest_unsent_ms: None,
        losses: vec![],
        models: vec![],
        drain_eta_s: None,
    };
    assert_eq!(
        decode::<Status>(&encode(&s)).map_err(|e| e.reason()),
        Err("bad_timestamp")
    );
    s.ts_ms = 1;
    s.agent_version = "1.0\0".into();
    assert_eq!(
        decode::<Status>(&encode(&s)).map_err(|e| e.reason()),
        Err("bad_text")
    );
}

/// A `Configure` command is variant 5 after the five earlier ones, so
/// every earlier command keeps its bytes; version 0 ("none") and a
/// fragment past the size cap or with a NUL are refused.
#[test]
fn configure_commands_are_appended_and_bounded() {
    let cmd = |version, fragment: &str| Command {
        id: 7,
        kind: CommandKind::Configure {
            version,
            fragment: fragment.to_owned(),
        },
    };
    let ok = cmd(3, "[sensors.s1]\nlat = 1.0\nlon = 2.0\n");
    let bytes = encode(&ok);
    assert_eq!(&bytes[..3], &[FORMAT_VERSION, 7, 5], "id 7, variant 5");
    assert_eq!(decode::<Command>(&bytes), Ok(ok));
    let too_big = "#".repeat(config_report::MAX_FRAGMENT_BYTES + 1);
    for bad in [cmd(0, ""), cmd(1, "a = \"\0\""), cmd(1, &too_big)] {
        assert_eq!(
            decode::<Command>(&encode(&bad)).map_err(|e| e.reason()),
            Err("invalid")
        );
    }
    let report = ConfigReport {
        device: "d1".into(),
        ts_ms: 1,
        groups: vec!["bad\ngroup".into()],
        applied: 0,
        refused: None,
    };
    assert!(decode::<ConfigReport>(&encode(&report)).is_err());
}
