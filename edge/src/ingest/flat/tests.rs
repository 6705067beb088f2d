use super::*;

const NOW: i64 = 1_700_000_000_000;

fn cx(sensors: &BTreeMap<String, SensorConfig>) -> Context<'_> {
    Context {
        now_ms: NOW,
        max_future_ms: 300_000,
        retention_ms: 7 * 86_400_000,
        max_payload_bytes: 512,
        sensors,
        reference: Reference::default(),
    }
}

#[test]
fn parses_a_flat_reading() {
    let s = BTreeMap::new();
    let r = parse(
        "s1",
        br#"{"ts":1699999999.5,"PM2.5":12.5,"rh":40,"lat":52.5,"lon":13.4}"#,
        &cx(&s),
    )
    .unwrap();
    assert_eq!(r.ts_ms, 1_699_999_999_500);
    assert_eq!((r.lat, r.lon), (52.5, 13.4));
    let names: Vec<_> = r.values.iter().map(|v| v.quantity.as_str()).collect();
    assert_eq!(names, vec!["pm25", "rh"]);
}

#[test]
fn gases_in_ppb_or_ppm_are_stored_in_micrograms_per_cubic_metre() {
    let s = BTreeMap::new();
    let r = parse(
        "s1",
        br#"{"no2_ppb":100,"co_ppm":1,"o3":50,"lat":1,"lon":1}"#,
        &cx(&s),
    )
    .unwrap();
    let v: Vec<(&str, i64)> = r
        .values
        .iter()
        .map(|v| (v.quantity.as_str(), v.value.round() as i64))
        .collect();
    assert_eq!(v, vec![("co", 1145), ("no2", 188), ("o3", 50)]);
}

#[test]
fn position_and_time_fall_back_to_config_and_now() {
    let mut s = BTreeMap::new();
    s.insert("fixed".to_owned(), SensorConfig { lat: 1.0, lon: 2.0 });
    let r = parse("fixed", br#"{"pm10":3}"#, &cx(&s)).unwrap();
    assert_eq!((r.lat, r.lon, r.ts_ms), (1.0, 2.0, NOW));
    let r = parse(
        "fixed",
        br#"{"ts":"2023-11-14T22:13:20Z","pm10":3}"#,
        &cx(&s),
    )
    .unwrap();
    assert_eq!(r.ts_ms, NOW);
}

#[test]
fn each_bad_message_gets_its_reason() {
    let s = BTreeMap::new();
    let big = format!(r#"{{"pm25":1,"pad":"{}"}}"#, "x".repeat(600));
    let cases: &[(&[u8], &str)] = &[
        (big.as_bytes(), "oversize"),
        (b"not json", "not_json"),
        (b"{\"pm25\": NaN, \"lat\":1,\"lon\":1}", "not_json"),
        (b"[1,2]", "not_object"),
        (br#"{"pm25":"high","lat":1,"lon":1}"#, "wrong_type"),
        (br#"{"pm25":"NaN","lat":1,"lon":1}"#, "non_finite"),
        (br#"{"pm25":-3,"lat":1,"lon":1}"#, "out_of_range"),
        (br#"{"rh":140,"lat":1,"lon":1}"#, "out_of_range"),
        (br#"{"pm25":1,"lat":91,"lon":1}"#, "out_of_range"),
        (
            br#"{"ts":1800000000,"pm25":1,"lat":1,"lon":1}"#,
            "future_timestamp",
        ),
        (br#"{"ts":-5,"pm25":1,"lat":1,"lon":1}"#, "bad_timestamp"),
        (br#"{"ts":1690000000,"pm25":1,"lat":1,"lon":1}"#, "too_old"),
        (br#"{"pm25":1e400,"lat":1,"lon":1}"#, "not_json"),
        (br#"{"pm25":"Infinity","lat":1,"lon":1}"#, "non_finite"),
        (br#"{"no2_ppb":60000,"lat":1,"lon":1}"#, "out_of_range"),
        (
            br#"{"ts":"yesterday","pm25":1,"lat":1,"lon":1}"#,
            "bad_timestamp",
        ),
        (br#"{"ts":true,"pm25":1,"lat":1,"lon":1}"#, "wrong_type"),
        (br#"{"pm25":1}"#, "no_position"),
        (br#"{"pm25":1,"lat":1}"#, "no_position"),
        (br#"{"lat":1,"lon":1}"#, "no_values"),
        (br#"{"pm 25":1,"lat":1,"lon":1}"#, "bad_quantity"),
    ];
    for (payload, reason) in cases {
        let got = parse("s", payload, &cx(&s)).map(|_| ()).unwrap_err();
        assert_eq!(
            got.reason(),
            *reason,
            "{}: {got}",
            String::from_utf8_lossy(payload)
        );
    }
}
