//! Gas mixing ratios and mass concentrations: µg/m³ = ppb × M / Vm, with
//! Vm = R·T/P the molar volume at a reference temperature and pressure.
//!
//! The edge stores every gas in µg/m³ (converted with its configured
//! reference, EPA's 25 °C and 1013.25 hPa by default) and the AQI tables
//! read ppb or ppm: both sides convert with these functions, so a reading's
//! AQI at the edge and its hourly AQI in the cloud use the same factors.

/// Universal gas constant, J/(mol·K).
const R: f64 = 8.314_462_618;

/// Conditions at which mixing ratios are converted to mass concentrations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reference {
    pub temp_c: f64,
    pub pressure_hpa: f64,
}

impl Default for Reference {
    /// 25 °C and 1013.25 hPa, as the US EPA.
    fn default() -> Self {
        Reference {
            temp_c: 25.0,
            pressure_hpa: 1013.25,
        }
    }
}

impl Reference {
    /// Molar volume of an ideal gas in litres per mole.
    pub fn molar_volume_l(&self) -> f64 {
        R * (self.temp_c + 273.15) / (self.pressure_hpa * 100.0) * 1000.0
    }

    /// µg/m³ of `gas` at `ppb`; `None` for a quantity that is not a gas.
    pub fn ugm3_from_ppb(&self, gas: &str, ppb: f64) -> Option<f64> {
        Some(ppb * molar_mass(gas)? / self.molar_volume_l())
    }

    /// ppb of `gas` at `ugm3`; `None` for a quantity that is not a gas.
    pub fn ppb_from_ugm3(&self, gas: &str, ugm3: f64) -> Option<f64> {
        Some(ugm3 * self.molar_volume_l() / molar_mass(gas)?)
    }
}

/// Molar mass in g/mol of the gases Aeris converts.
pub fn molar_mass(gas: &str) -> Option<f64> {
    Some(match gas {
        "no2" => 46.0055,
        "o3" => 47.9982,
        "so2" => 64.066,
        "co" => 28.010,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn molar_volume_at_epa_reference_is_24_465_litres() {
        assert!((Reference::default().molar_volume_l() - 24.465).abs() < 0.001);
        let r = Reference::default();
        let back = r.ppb_from_ugm3("no2", r.ugm3_from_ppb("no2", 53.0).unwrap());
        assert!((back.unwrap() - 53.0).abs() < 1e-9);
        assert_eq!(r.ppb_from_ugm3("pm25", 10.0), None);
    }
}
