//! Low-cost sensor correction end to end: sensors publish raw PM2.5 and
//! relative humidity to the board's broker, the agent (a process) corrects
//! the sensors its config names, and PostGIS (through the gateway) holds
//! the corrected `pm25`, the raw value in `pm25_raw` and the formula in
//! `pm25_correction`; a reading without humidity is withheld with its raw
//! value kept, and an uncorrected sensor is stored as sent.

use std::collections::BTreeMap;
use std::time::Duration;

use aeris_tests::sensors::Publisher;
use aeris_tests::stack::Stack;
use aeris_wire::correction::Formula;
use aeris_wire::flags::FLAG_CORRECTION_WITHHELD;

const EDGE_TOML: &str = r#"
[preprocess]
spike_ratio = 0.0
stuck_count = 0
correction = "none"
correction_rh_max_age = "2m"

[preprocess.corrections]
pa-2021 = "epa-barkjohn-2021"
pa-2022 = "epa-barkjohn-2022"
pa-split = "epa-barkjohn-2021"
pa-dry = "epa-barkjohn-2022"
"#;

/// A sensor message: (sensor, seconds after t0, values).
type Published = (&'static str, i64, Vec<(&'static str, f64)>);

/// What a stored row says of PM2.5: (pm25, pm25_raw, pm25_correction, flags).
type Stored = (Option<f64>, Option<f64>, Option<String>, i32);

async fn stored(stack: &Stack) -> BTreeMap<(String, i64), Stored> {
    let rows = stack
        .db
        .client()
        .await
        .query(
            "SELECT sensor_id, (extract(epoch FROM ts) * 1000)::int8, pm25, pm25_raw,
                    pm25_correction, flags
             FROM readings",
            &[],
        )
        .await
        .expect("read readings");
    rows.iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                (r.get(2), r.get(3), r.get(4), r.get(5)),
            )
        })
        .collect()
}

fn json(ts_ms: i64, values: &[(&str, f64)]) -> Vec<u8> {
    let mut o = serde_json::json!({"ts": ts_ms as f64 / 1000.0, "lat": 47.1, "lon": 8.2});
    for (q, v) in values {
        o[*q] = serde_json::json!(v);
    }
    o.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrected_pm25_lands_beside_its_raw_value_and_formula() {
    let stack = Stack::start_with(EDGE_TOML).await;
    let sensors = Publisher::connect(stack.local.port).await;
    let t0 = aeris_tests::now_ms() - 600_000;
    // (sensor, ts offset s, values) as the sensors publish them.
    let sent: Vec<Published> = vec![
        ("pa-2021", 0, vec![("pm25", 100.0), ("rh", 30.0)]),
        ("pa-2021", 1, vec![("pm25", 0.0), ("rh", 90.0)]),
        // 2022: below, inside and above the 570..611 blend, in smoke.
        ("pa-2022", 0, vec![("pm25", 35.0), ("rh", 45.0)]),
        ("pa-2022", 1, vec![("pm25", 590.0), ("rh", 50.0)]),
        ("pa-2022", 2, vec![("pm25", 1000.0), ("rh", 20.0)]),
        // Humidity on its own topic a few seconds before the PM2.5.
        ("pa-split", 0, vec![("rh", 60.0)]),
        ("pa-split", 5, vec![("pm25", 40.0)]),
        // Humidity sent 10 minutes after the PM2.5: too far apart.
        ("pa-dry", 0, vec![("pm25", 42.5)]),
        ("pa-dry", 600, vec![("rh", 40.0)]),
        // Not configured: stored as sent.
        ("plain", 0, vec![("pm25", 12.3), ("rh", 50.0)]),
    ];
    for (sensor, s, values) in &sent {
        let topic = format!("sensors/{sensor}/air");
        sensors
            .publish_raw(&topic, json(t0 + s * 1000, values))
            .await;
        // RH first, in order: the agent pairs by time, not arrival.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stack
        .wait_rows(sent.len() as i64, Duration::from_secs(60))
        .await;
    let got = stored(&stack).await;
    let at = |sensor: &str, s: i64| {
        got.get(&(sensor.to_owned(), t0 + s * 1000))
            .cloned()
            .unwrap_or_else(|| panic!("{sensor} +{s}s not stored: {got:?}"))
    };
    let corrected = |f: Formula, raw: f64, rh: f64| -> Stored {
        let v = f.apply(raw, Some(rh)).expect("correctable");
        (Some(v), Some(raw), Some(f.label()), 0)
    };
    let (y21, y22) = (Formula::EpaBarkjohn2021, Formula::EpaBarkjohn2022);
    assert_eq!(at("pa-2021", 0), corrected(y21, 100.0, 30.0));
    // Worked by hand: 52.4 − 2.586 + 5.75.
    assert!((at("pa-2021", 0).0.unwrap() - 55.564).abs() < 1e-9);
    // 5.75 − 7.758 < 0: stored as 0, raw 0 kept.
    assert_eq!(
        at("pa-2021", 1),
        (Some(0.0), Some(0.0), Some(y21.label()), 0)
    );
    assert_eq!(at("pa-2022", 0), corrected(y22, 35.0, 45.0));
    assert_eq!(at("pa-2022", 1), corrected(y22, 590.0, 50.0));
    assert!((at("pa-2022", 1).0.unwrap() - 345.6523696).abs() < 1e-6);
    assert_eq!(at("pa-2022", 2), corrected(y22, 1000.0, 20.0));
    assert_eq!(at("pa-split", 5), corrected(y21, 40.0, 60.0));
    assert_eq!(at("pa-split", 0), (None, None, None, 0), "RH-only reading");
    // Withheld: no pm25, raw and formula kept, flag bit 6.
    assert_eq!(
        at("pa-dry", 0),
        (
            None,
            Some(42.5),
            Some(y22.label()),
            FLAG_CORRECTION_WITHHELD as i32
        )
    );
    assert_eq!(at("plain", 0), (Some(12.3), None, None, 0));
    // The raw value is not left behind in `measurements` as well.
    let leftovers: i64 = stack
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM readings WHERE measurements::text LIKE '%raw:%'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(leftovers, 0);
    // The API gives the raw value back under the name it travelled under.
    let path = format!(
        "/api/readings?device={}&sensor=pa-2022&from={t0}",
        aeris_tests::stack::DEVICE
    );
    let api = aeris_tests::http::get_json(stack.api_port, &path);
    let first = &api
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        first["values"]["raw:pm25:epa-barkjohn-2022@1"], 35.0,
        "{api}"
    );
    assert_eq!(
        first["values"]["pm25"],
        y22.apply(35.0, Some(45.0)).unwrap(),
        "{api}"
    );
    let metric = |outcome: &str| {
        let sample = format!("aeris_edge_preprocess_corrections_total{{outcome=\"{outcome}\"}}");
        aeris_tests::http::metric(stack.edge_health, &sample)
    };
    assert_eq!(metric("no_rh"), 1.0);
    assert_eq!(metric("corrected"), 6.0);
}
