use super::*;

fn pm25(c: f64, averaging: Averaging) -> Option<AveragedValue> {
    Some(AveragedValue {
        concentration: c,
        averaging,
    })
}

fn eight_hour(ppm: f64) -> Option<AveragedValue> {
    Some(AveragedValue {
        concentration: ppm,
        averaging: Averaging::EightHour,
    })
}

#[test]
fn overall_aqi_is_the_largest_and_names_its_pollutant() {
    let c = Concentrations {
        pm25: pm25(17.4, Averaging::NowCast), // 66
        o3_8h: eight_hour(0.071),             // 101
        no2_1h: Some(54.0),                   // 51
        ..Default::default()
    };
    let all = pollutant_aqis(&c);
    assert_eq!(all.len(), 3);
    let overall = overall_aqi(&c);
    assert_eq!(
        overall,
        Some(PollutantAqi {
            pollutant: Pollutant::O3,
            aqi: 101,
            averaging: Averaging::EightHour
        })
    );
    assert_eq!(overall_aqi(&Concentrations::default()), None);
}

#[test]
fn pm_index_keeps_the_averaging_it_was_given() {
    let c = Concentrations {
        pm25: pm25(35.5, Averaging::TwentyFourHour),
        ..Default::default()
    };
    let p = overall_aqi(&c);
    assert_eq!(
        p.map(|p| (p.aqi, p.averaging)),
        Some((101, Averaging::TwentyFourHour))
    );
}

#[test]
fn ozone_uses_the_one_hour_table_only_from_0_125_ppm_and_when_higher() {
    // 1-hour 0.124: below the 1-hour table; the 8-hour index stands.
    assert_eq!(
        o3_aqi(eight_hour(0.060), Some(0.124)).map(|p| p.aqi),
        Some(67)
    ); // 49/15 × 5 + 51 = 67.3
    let p = o3_aqi(eight_hour(0.060), Some(0.125));
    assert_eq!(
        p.map(|p| (p.aqi, p.averaging)),
        Some((101, Averaging::OneHour))
    );
    assert_eq!(o3_aqi(None, Some(0.405)).map(|p| p.aqi), Some(301));
    // A tie keeps the 8-hour value: 0.071 ppm 8-hour and 0.125 ppm 1-hour are both 101.
    let p = o3_aqi(eight_hour(0.071), Some(0.125));
    assert_eq!(
        p.map(|p| (p.aqi, p.averaging)),
        Some((101, Averaging::EightHour))
    );
    let nowcast = AveragedValue {
        concentration: 0.065,
        averaging: Averaging::NowCast,
    };
    assert_eq!(
        o3_aqi(Some(nowcast), None).map(|p| p.averaging),
        Some(Averaging::NowCast)
    );
    // An 8-hour mean above 0.200 ppm has no 8-hour index.
    assert_eq!(o3_aqi(eight_hour(0.201), None), None);
    assert_eq!(o3_aqi(eight_hour(0.200), None).map(|p| p.aqi), Some(300));
    // 99/199 × 45 + 201 = 223.4 on the 1-hour 0.205–0.404 row.
    assert_eq!(
        o3_aqi(eight_hour(0.201), Some(0.250)).map(|p| p.aqi),
        Some(223)
    );
}

#[test]
fn so2_above_304_ppb_in_an_hour_takes_the_24_hour_index() {
    assert_eq!(so2_aqi(Some(304.0), None).map(|p| p.aqi), Some(200));
    assert_eq!(so2_aqi(Some(400.0), None).map(|p| p.aqi), Some(200));
    let p = so2_aqi(Some(400.0), Some(305.0));
    assert_eq!(
        p.map(|p| (p.aqi, p.averaging)),
        Some((201, Averaging::TwentyFourHour))
    );
    assert_eq!(so2_aqi(Some(36.0), Some(10.0)).map(|p| p.aqi), Some(51));
    assert_eq!(so2_aqi(Some(-1.0), None), None);
}

#[test]
fn split_tables_agree_with_the_current_indicator_tables_where_they_overlap() {
    for ppb in 0..=200 {
        let c = f64::from(ppb) / 1000.0;
        assert_eq!(O3_8HOUR.index(c), crate::aqi::O3.index(c), "O3 {c}");
    }
    for ppb in 0..=1004 {
        let c = f64::from(ppb);
        let split = if ppb <= 304 {
            SO2_1HOUR.index(c)
        } else {
            SO2_24HOUR.index(c)
        };
        assert_eq!(split, crate::aqi::SO2.index(c), "SO2 {c}");
    }
}

#[test]
fn highest_of_separate_indices_breaks_ties_in_pollutant_order() {
    let p = |pollutant, aqi| PollutantAqi {
        pollutant,
        aqi,
        averaging: Averaging::OneHour,
    };
    // Given in any order, a tie names the first of PM2.5, PM10, O3, CO, SO2, NO2.
    let got = highest([
        p(Pollutant::No2, 80),
        p(Pollutant::O3, 80),
        p(Pollutant::Pm10, 40),
    ]);
    assert_eq!(got.map(|a| a.pollutant), Some(Pollutant::O3));
    let got = highest([p(Pollutant::No2, 81), p(Pollutant::O3, 80)]);
    assert_eq!(got.map(|a| a.pollutant), Some(Pollutant::No2));
    assert_eq!(highest([]), None);
    for a in [
        Averaging::OneHour,
        Averaging::EightHour,
        Averaging::TwentyFourHour,
        Averaging::NowCast,
    ] {
        assert_eq!(Averaging::from_label(a.label()), Some(a));
    }
    assert_eq!(Pollutant::from_quantity("so2"), Some(Pollutant::So2));
    assert_eq!(Pollutant::from_quantity("pm1"), None);
}
