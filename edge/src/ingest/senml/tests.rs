use super::*;
use crate::ingest::config::SensorConfig;
use crate::preprocess::units::Reference;

const NOW: i64 = 1_700_000_000_000;

fn parse(payload: &str, sensors: &BTreeMap<String, SensorConfig>) -> Result<Vec<Reading>, Reject> {
    let cx = Context {
        now_ms: NOW,
        max_future_ms: 300_000,
        retention_ms: 7 * 86_400_000,
        max_payload_bytes: 4096,
        sensors,
        reference: Reference::default(),
    };
    let json: Json = serde_json::from_str(payload).unwrap();
    from_pack("s1", json.as_array().unwrap(), &cx)
}

fn values(r: &Reading) -> Vec<(&str, f64)> {
    r.values
        .iter()
        .map(|v| (v.quantity.as_str(), v.value))
        .collect()
}

#[test]
fn base_fields_resolve_names_times_units_and_values() {
    let pack = r#"[
        {"bn":"urn:dev:ow:10e2073a:","bt":1699999990,"bu":"ug/m3","bver":10,
         "n":"PM2.5","v":12.5},
        {"n":"pm10","v":20,"t":0},
        {"n":"temp","u":"Cel","v":21.5},
        {"n":"lat","u":"lat","v":52.5},{"n":"lon","u":"lon","v":13.4},
        {"n":"pm25","v":13,"t":5},
        {"n":"label","vs":"kitchen"}
    ]"#;
    let r = parse(pack, &BTreeMap::new()).unwrap();
    assert_eq!(r.len(), 2, "one reading per distinct time");
    assert_eq!(
        r[0].sensor, "s1/urn:dev:ow:10e2073a",
        "the base name is the device"
    );
    assert_eq!(r[0].flags, 0, "absolute times are the sensor's own");
    assert_eq!(r[0].ts_ms, 1_699_999_990_000);
    assert_eq!(
        values(&r[0]),
        [("pm25", 12.5), ("pm10", 20.0), ("temp", 21.5)]
    );
    assert_eq!(r[1].ts_ms, 1_699_999_995_000);
    assert_eq!(values(&r[1]), [("pm25", 13.0)]);
    // The pack's position applies to its readings at other times.
    assert_eq!((r[1].lat, r[1].lon), (52.5, 13.4));
}

#[test]
fn small_times_are_relative_to_now_and_base_value_adds() {
    let pack = r#"[{"bv":10,"n":"pm25","u":"ug/m3","v":2.5,"t":-60},{"n":"pm25","v":0}]"#;
    let mut s = BTreeMap::new();
    s.insert("s1".to_owned(), SensorConfig { lat: 1.0, lon: 2.0 });
    let r = parse(pack, &s).unwrap();
    assert_eq!((r[0].ts_ms, r[0].values[0].value), (NOW - 60_000, 12.5));
    assert!(r
        .iter()
        .all(|r| r.flags == crate::ingest::FLAG_ARRIVAL_TIME));
    assert_eq!((r[1].ts_ms, r[1].values[0].value), (NOW, 10.0));
    assert_eq!((r[0].lat, r[0].lon), (1.0, 2.0), "configured position");
}

#[test]
fn several_base_names_give_several_sensors() {
    let pack = r#"[
        {"bn":"urn:dev:mac:aa01:","bt":1699999990,"n":"pm25","v":10},
        {"bn":"urn:dev:mac:bb02:","n":"pm25","v":20},
        {"bn":"","n":"lat","v":50},{"n":"lon","v":8},
        {"bn":"urn:dev:mac:bb02:","n":"lat","v":51},{"n":"lon","v":9},
        {"bn":"s1:","n":"pm10","v":30}
    ]"#;
    let r = parse(pack, &BTreeMap::new()).unwrap();
    let got: Vec<(&str, f64, f64)> = r
        .iter()
        .map(|r| (r.sensor.as_str(), r.values[0].value, r.lat))
        .collect();
    assert_eq!(
        got,
        [
            ("s1", 30.0, 50.0),
            ("s1/urn:dev:mac:aa01", 10.0, 50.0),
            ("s1/urn:dev:mac:bb02", 20.0, 51.0),
        ]
    );
    let long = format!(r#"[{{"bn":"{}:","n":"pm25","v":1}}]"#, "x".repeat(130));
    assert_eq!(
        parse(&long, &BTreeMap::new()).unwrap_err().reason(),
        "bad_senml"
    );
}

#[test]
fn a_base_value_that_overflows_is_rejected_for_any_quantity() {
    for name in ["pm25", "foo", "lat"] {
        let pack = format!(
            r#"[{{"bv":1.7e308,"n":"{name}","v":1.7e308}},{{"n":"lat","v":1}},{{"n":"lon","v":1}}]"#
        );
        let e = parse(&pack, &BTreeMap::new()).unwrap_err();
        assert_eq!(e.reason(), "non_finite", "{name}");
    }
}

#[test]
fn gas_units_are_converted_to_micrograms_per_cubic_metre() {
    let pack = r#"[{"n":"no2","u":"ppb","v":100},{"n":"lat","v":1},{"n":"lon","v":1}]"#;
    let r = parse(pack, &BTreeMap::new()).unwrap();
    assert_eq!(r[0].values[0].value.round(), 188.0);
}

#[test]
fn each_bad_pack_gets_its_reason() {
    let cases = [
        (r#"[]"#, "no_values"),
        (r#"[1,2]"#, "bad_senml"),
        (r#"[{"n":"pm25"}]"#, "bad_senml"),
        (r#"[{"n":"pm25","v":1,"x_":1}]"#, "bad_senml"),
        (r#"[{"n":"pm25","v":"1","lat":1}]"#, "wrong_type"),
        (r#"[{"n":5,"v":1}]"#, "wrong_type"),
        (r#"[{"n":"pm25","v":"NaN"}]"#, "non_finite"),
        (
            r#"[{"n":"pm25","v":-1},{"n":"lat","v":1},{"n":"lon","v":1}]"#,
            "out_of_range",
        ),
        (
            r#"[{"n":"pm25","u":"ppb","v":1},{"n":"lat","v":1},{"n":"lon","v":1}]"#,
            "bad_unit",
        ),
        (
            r#"[{"n":"pm25","v":1,"t":1800000000},{"n":"lat","v":1},{"n":"lon","v":1}]"#,
            "future_timestamp",
        ),
        (
            r#"[{"n":"pm25","v":1,"t":1600000000},{"n":"lat","v":1},{"n":"lon","v":1}]"#,
            "too_old",
        ),
        (r#"[{"n":"pm25","v":1}]"#, "no_position"),
        (
            r#"[{"n":"pm25","v":1},{"n":"lat","v":95},{"n":"lon","v":1}]"#,
            "out_of_range",
        ),
        (r#"[{"n":"lat","v":1},{"n":"lon","v":1}]"#, "no_values"),
    ];
    for (pack, reason) in cases {
        let got = parse(pack, &BTreeMap::new()).map(|_| ()).unwrap_err();
        assert_eq!(got.reason(), reason, "{pack}: {got}");
    }
}
