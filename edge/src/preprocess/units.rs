//! Unit normalisation: every quantity the agent knows is stored in one
//! canonical unit, whatever unit the sensor sent.
//!
//! | quantity | canonical | accepted units |
//! |---|---|---|
//! | `pm1`, `pm25`, `pm10` | µg/m³ | `ug/m3`, `µg/m3`, `µg/m³`, `mg/m3` |
//! | `no2`, `o3`, `so2`, `co` | µg/m³ | the above, `ppb`, `ppm` |
//! | `temp`, `dewp` | °C | `Cel`, `C`, `degC`, `K`, `degF` |
//! | `rh` | % | `%RH`, `%` |
//! | `pres` | hPa | `hPa`, `Pa`, `kPa`, `mbar` |
//!
//! Gas mixing ratios (ppb, ppm) become mass concentrations at a reference
//! temperature and pressure: µg/m³ = ppb × M / Vm, with Vm = R·T/P the molar
//! volume. The default reference is 25 °C and 1013.25 hPa (Vm = 24.465
//! L/mol), the conditions US EPA uses for its standards and the AQI; the
//! EU's 20 °C reference is available through `preprocess.reference_*`.
//! The AQI converts back with the same reference, so a ppb reading's AQI
//! does not depend on the choice.

pub use aeris_wire::units::{molar_mass, Reference};

impl super::config::PreprocessConfig {
    /// The configured reference conditions.
    pub fn reference(&self) -> Reference {
        Reference {
            temp_c: self.reference_temp_c,
            pressure_hpa: self.reference_pressure_hpa,
        }
    }
}

/// A unit the agent cannot convert to the quantity's canonical unit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unit {unit:?} is not one of {quantity}'s units")]
pub struct UnitError {
    pub quantity: String,
    pub unit: String,
}

/// `value` in `unit` converted to `quantity`'s canonical unit. An empty unit
/// means "already canonical"; quantities the agent does not know keep their
/// value whatever the unit.
pub fn to_canonical(
    quantity: &str,
    unit: &str,
    value: f64,
    r: &Reference,
) -> Result<f64, UnitError> {
    let err = || UnitError {
        quantity: quantity.to_owned(),
        unit: unit.to_owned(),
    };
    if unit.is_empty() {
        return Ok(value);
    }
    let mass = |v: f64| match unit {
        "ug/m3" | "µg/m3" | "µg/m³" | "ug/m^3" => Some(v),
        "mg/m3" | "mg/m³" => Some(v * 1000.0),
        _ => None,
    };
    let out = match quantity {
        "pm1" | "pm25" | "pm10" => mass(value),
        "no2" | "o3" | "so2" | "co" => match unit {
            "ppb" => r.ugm3_from_ppb(quantity, value),
            "ppm" => r.ugm3_from_ppb(quantity, value * 1000.0),
            _ => mass(value),
        },
        "temp" | "dewp" => match unit {
            "Cel" | "C" | "degC" | "°C" => Some(value),
            "K" => Some(value - 273.15),
            "degF" | "°F" => Some((value - 32.0) * 5.0 / 9.0),
            _ => None,
        },
        "rh" => matches!(unit, "%RH" | "%").then_some(value),
        "pres" => match unit {
            "hPa" | "mbar" => Some(value),
            "Pa" => Some(value / 100.0),
            "kPa" => Some(value * 10.0),
            _ => None,
        },
        _ => Some(value),
    };
    out.ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn molar_volume_at_epa_reference_is_24_465_litres() {
        assert!(close(Reference::default().molar_volume_l(), 24.465, 0.001));
        let eu = Reference {
            temp_c: 20.0,
            pressure_hpa: 1013.25,
        };
        assert!(close(eu.molar_volume_l(), 24.055, 0.001));
    }

    #[test]
    fn ppb_and_ppm_become_micrograms_per_cubic_metre_at_25_c() {
        let r = Reference::default();
        // Published EPA factors at 25 °C: 1 ppb NO2 = 1.88 µg/m³,
        // O3 1.96, SO2 2.62, 1 ppm CO = 1.145 mg/m³.
        let cases = [
            ("no2", "ppb", 100.0, 188.0),
            ("o3", "ppb", 100.0, 196.2),
            ("so2", "ppb", 100.0, 261.9),
            ("co", "ppm", 1.0, 1145.0),
            ("no2", "ppm", 0.1, 188.0),
        ];
        for (q, u, v, want) in cases {
            let got = to_canonical(q, u, v, &r).unwrap();
            assert!(close(got, want, want * 0.002), "{v} {u} {q}: {got}");
        }
        let back = r.ppb_from_ugm3("no2", r.ugm3_from_ppb("no2", 53.0).unwrap());
        assert!(close(back.unwrap(), 53.0, 1e-9));
    }

    #[test]
    fn other_units_convert_and_unknown_units_are_errors() {
        let r = Reference::default();
        assert_eq!(to_canonical("pm25", "ug/m3", 12.0, &r), Ok(12.0));
        assert_eq!(to_canonical("pm25", "mg/m3", 0.012, &r), Ok(12.0));
        assert_eq!(to_canonical("pm25", "", 12.0, &r), Ok(12.0));
        assert_eq!(
            to_canonical("temp", "K", 293.15, &r).map(|v| v.round()),
            Ok(20.0)
        );
        assert_eq!(to_canonical("pres", "Pa", 101_325.0, &r), Ok(1013.25));
        assert_eq!(to_canonical("rh", "%RH", 40.0, &r), Ok(40.0));
        assert_eq!(to_canonical("noise", "dB", 40.0, &r), Ok(40.0));
        assert!(to_canonical("pm25", "ppb", 3.0, &r).is_err());
        assert!(to_canonical("temp", "furlongs", 3.0, &r).is_err());
    }
}
