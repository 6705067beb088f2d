//! Applying a [`Formula`] to a reading, keeping its raw value.

use super::formula::{Formula, Withheld};
use crate::flags::FLAG_CORRECTION_WITHHELD;
use crate::message::{Reading, Value, MAX_VALUES_PER_READING};

/// The prefix of a raw value kept beside its corrected one:
/// `raw:<quantity>:<formula>@<version>`.
pub const RAW_PREFIX: &str = "raw:";

/// The name the raw value of `quantity` travels under when `formula`
/// corrected (or was to correct) it.
pub fn raw_quantity(quantity: &str, formula: &Formula) -> String {
    format!("{RAW_PREFIX}{quantity}:{}", formula.label())
}

/// `(quantity, formula label)` of a `raw:` name; `None` for any other.
pub fn parse_raw_quantity(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(RAW_PREFIX)?;
    let (quantity, formula) = rest.split_once(':')?;
    (!quantity.is_empty() && !formula.is_empty()).then_some((quantity, formula))
}

/// What [`correct`] did to a reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// No value of the formula's quantity: nothing to correct.
    NotApplicable,
    /// Corrected from `raw` to `corrected`.
    Corrected { raw: f64, corrected: f64 },
    /// The quantity was removed, its raw value kept and the reading
    /// flagged [`FLAG_CORRECTION_WITHHELD`].
    Withheld(Withheld),
}

/// Corrects `reading`'s value of `formula.quantity()` with the relative
/// humidity `rh` (the reading's own `rh` when it has one, else what the
/// caller found for its sensor). A reading already holding a `raw:` value
/// of the quantity is left alone (corrected once, never twice).
pub fn correct(reading: &mut Reading, formula: &Formula, rh: Option<f64>) -> Outcome {
    let q = formula.quantity();
    let already = reading
        .values
        .iter()
        .any(|v| parse_raw_quantity(&v.quantity).is_some_and(|(rq, _)| rq == q));
    let Some(i) = reading.values.iter().position(|v| v.quantity == q) else {
        return Outcome::NotApplicable;
    };
    if already {
        return Outcome::NotApplicable;
    }
    let own_rh = reading.values.iter().find(|v| v.quantity == "rh");
    let rh = own_rh.map(|v| v.value).or(rh);
    let raw = reading.values[i].value;
    let room = reading.values.len() < MAX_VALUES_PER_READING;
    match formula.apply(raw, rh) {
        Ok(corrected) if room => {
            reading.values[i].value = corrected;
            reading.values.push(Value {
                quantity: raw_quantity(q, formula),
                value: raw,
            });
            Outcome::Corrected { raw, corrected }
        }
        result => {
            // No humidity, or no room for a second value: the raw value
            // stays, renamed, and the reading says why it has no `q`.
            reading.values[i].quantity = raw_quantity(q, formula);
            reading.flags |= FLAG_CORRECTION_WITHHELD;
            Outcome::Withheld(result.err().unwrap_or(Withheld::NoRoom))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(values: &[(&str, f64)]) -> Reading {
        Reading {
            sensor: "pa-1".into(),
            ts_ms: 1_700_000_000_000,
            lat: 1.0,
            lon: 2.0,
            flags: 0,
            values: values
                .iter()
                .map(|(q, v)| Value {
                    quantity: (*q).into(),
                    value: *v,
                })
                .collect(),
        }
    }

    fn value(r: &Reading, q: &str) -> Option<f64> {
        r.values.iter().find(|v| v.quantity == q).map(|v| v.value)
    }

    #[test]
    fn a_corrected_reading_keeps_its_raw_value_under_the_formula_name() {
        let f = Formula::EpaBarkjohn2021;
        let mut r = reading(&[("pm25", 100.0), ("rh", 30.0), ("temp", 20.0)]);
        let out = correct(&mut r, &f, Some(90.0));
        let corrected = 0.524 * 100.0 - 0.0862 * 30.0 + 5.75;
        assert_eq!(
            out,
            Outcome::Corrected {
                raw: 100.0,
                corrected
            }
        );
        assert_eq!(value(&r, "pm25"), Some(corrected), "own rh wins");
        assert_eq!(value(&r, "raw:pm25:epa-barkjohn-2021@1"), Some(100.0));
        assert_eq!(r.flags, 0);
        assert_eq!(
            parse_raw_quantity("raw:pm25:epa-barkjohn-2021@1"),
            Some(("pm25", "epa-barkjohn-2021@1"))
        );
        // Twice is once.
        let before = r.clone();
        assert_eq!(correct(&mut r, &f, None), Outcome::NotApplicable);
        assert_eq!(r, before);
    }

    #[test]
    fn without_humidity_the_value_is_withheld_and_the_raw_kept() {
        let f = Formula::EpaBarkjohn2022;
        let mut r = reading(&[("pm25", 42.5)]);
        assert_eq!(correct(&mut r, &f, None), Outcome::Withheld(Withheld::NoRh));
        assert_eq!(value(&r, "pm25"), None);
        assert_eq!(value(&r, "raw:pm25:epa-barkjohn-2022@1"), Some(42.5));
        assert_eq!(r.flags, FLAG_CORRECTION_WITHHELD);
        // The sensor's recent RH from another message counts.
        let mut r = reading(&[("pm25", 42.5)]);
        assert!(matches!(
            correct(&mut r, &f, Some(50.0)),
            Outcome::Corrected { .. }
        ));
        // A reading without PM2.5 is not touched.
        let mut r = reading(&[("rh", 50.0)]);
        assert_eq!(correct(&mut r, &f, None), Outcome::NotApplicable);
        assert_eq!(r.flags, 0);
    }

    #[test]
    fn a_full_reading_is_withheld_rather_than_losing_a_value() {
        let mut values: Vec<(String, f64)> = (0..MAX_VALUES_PER_READING - 2)
            .map(|i| (format!("q{i}"), i as f64))
            .collect();
        values.push(("pm25".into(), 10.0));
        values.push(("rh".into(), 50.0));
        let refs: Vec<(&str, f64)> = values.iter().map(|(q, v)| (q.as_str(), *v)).collect();
        let mut r = reading(&refs);
        let out = correct(&mut r, &Formula::EpaBarkjohn2021, None);
        assert_eq!(out, Outcome::Withheld(Withheld::NoRoom));
        assert_eq!(r.values.len(), MAX_VALUES_PER_READING);
        assert_eq!(value(&r, "raw:pm25:epa-barkjohn-2021@1"), Some(10.0));
    }
}
