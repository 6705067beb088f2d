//! US EPA Air Quality Index per pollutant and overall, attached to each
//! reading as values.
//!
//! The tables and Equation 1 are [`aeris_wire::aqi`]'s, the one
//! implementation the cloud's live map uses too. What this module adds:
//! gases arrive in µg/m³ (see [`super::units`]) and are converted back to
//! ppb/ppm with the same reference conditions before the table is read,
//! and the overall index is the highest pollutant index.

use aeris_wire::aqi::TABLES;

use super::units::Reference;

/// The table's concentration from a canonical value (µg/m³ for every
/// pollutant): PM as is, NO2/SO2 in ppb, O3/CO in ppm.
fn concentration(quantity: &str, ugm3: f64, r: &Reference) -> Option<f64> {
    match quantity {
        "pm25" | "pm10" => Some(ugm3),
        "no2" | "so2" => r.ppb_from_ugm3(quantity, ugm3),
        "o3" | "co" => r.ppb_from_ugm3(quantity, ugm3).map(|ppb| ppb / 1000.0),
        _ => None,
    }
}

/// `(aqi_<pollutant>, index)` for each pollutant among `values`, then
/// `("aqi", max)` when there is any.
pub fn indices<'a>(
    values: impl Iterator<Item = (&'a str, f64)>,
    r: &Reference,
) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for (q, v) in values {
        let Some(table) = TABLES.iter().find(|t| t.quantity == q) else {
            continue;
        };
        if let Some(i) = concentration(q, v, r).and_then(|c| table.index(c)) {
            out.push((["aqi_", q].concat(), i));
        }
    }
    if let Some(max) = out.iter().map(|(_, i)| *i).max() {
        out.push(("aqi".to_owned(), max));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overall_index_is_the_highest_pollutant_index() {
        let r = Reference::default();
        // 100 ppb NO2 (as µg/m³ at 25 °C): 100; PM2.5 12.0: 49/26.3*2.9+51 = 56.40.
        let no2 = r.ugm3_from_ppb("no2", 100.0).unwrap();
        let got = indices([("pm25", 12.0), ("no2", no2), ("rh", 40.0)].into_iter(), &r);
        assert_eq!(
            got,
            vec![
                ("aqi_pm25".to_owned(), 56),
                ("aqi_no2".to_owned(), 100),
                ("aqi".to_owned(), 100),
            ]
        );
        assert!(indices([("rh", 40.0)].into_iter(), &r).is_empty());
    }
}
