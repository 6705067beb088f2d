//! The correction equations, as functions of the sensor's PM2.5 (CF=1,
//! mean of its A and B channels, µg/m³) and relative humidity (%).

/// A correction the agent can apply, by the name config and storage use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Formula {
    /// Barkjohn, Gantt and Clements (2021), AMT 14, 4617–4637: the US-wide
    /// correction, `0.524 × PA_cf1 − 0.0862 × RH + 5.75`.
    EpaBarkjohn2021,
    /// Barkjohn, Holder, Frederick and Clements (2022), Sensors 22(24),
    /// 9669: the 2021 correction up to `PA_cf1` 570 µg/m³ (300 µg/m³
    /// corrected at 50 % RH), a quadratic fit from 611 µg/m³ on (400
    /// µg/m³ corrected), and a linear blend of the two between.
    EpaBarkjohn2022,
}

/// Why a value could not be corrected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Withheld {
    #[error("no relative humidity from the same sensor")]
    NoRh,
    #[error("relative humidity outside 0..=100 %")]
    RhOutOfRange,
    #[error("raw value negative or not finite")]
    BadInput,
    /// The reading already holds the most values a reading may carry, so
    /// the raw value could not be kept beside a corrected one.
    #[error("no room in the reading for the raw value")]
    NoRoom,
}

impl Withheld {
    /// A stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Withheld::NoRh => "no_rh",
            Withheld::RhOutOfRange => "rh_out_of_range",
            Withheld::BadInput => "bad_input",
            Withheld::NoRoom => "no_room",
        }
    }
}

/// Where the 2022 correction leaves the 2021 line and where its quadratic
/// takes over (raw `PA_cf1`, µg/m³).
pub const BLEND_FROM: f64 = 570.0;
pub const BLEND_TO: f64 = 611.0;

impl Formula {
    /// Every formula, for config validation and docs.
    pub const ALL: [Formula; 2] = [Formula::EpaBarkjohn2021, Formula::EpaBarkjohn2022];

    /// The name used in config and stored beside the value.
    pub fn name(&self) -> &'static str {
        match self {
            Formula::EpaBarkjohn2021 => "epa-barkjohn-2021",
            Formula::EpaBarkjohn2022 => "epa-barkjohn-2022",
        }
    }

    /// The version of this implementation of the formula: bumped if its
    /// coefficients or edges ever change, so stored values say which
    /// ones made them.
    pub fn version(&self) -> u32 {
        1
    }

    /// `<name>@<version>`, as stored.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name(), self.version())
    }

    /// The formula named `s` (`epa-barkjohn-2021`, with or without
    /// `@<version>` of this build).
    pub fn parse(s: &str) -> Option<Formula> {
        let (name, version) = match s.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        Formula::ALL
            .into_iter()
            .find(|f| f.name() == name && version.is_none_or(|v| v == f.version().to_string()))
    }

    /// The quantity the formula corrects.
    pub fn quantity(&self) -> &'static str {
        "pm25"
    }

    /// The corrected PM2.5 (µg/m³) from the raw `pa_cf1` (µg/m³) and `rh`
    /// (%); results below 0 are reported as 0.
    pub fn apply(&self, pa_cf1: f64, rh: Option<f64>) -> Result<f64, Withheld> {
        if !(pa_cf1.is_finite() && pa_cf1 >= 0.0) {
            return Err(Withheld::BadInput);
        }
        let rh = rh.ok_or(Withheld::NoRh)?;
        if !(0.0..=100.0).contains(&rh) {
            return Err(Withheld::RhOutOfRange);
        }
        let v = match self {
            Formula::EpaBarkjohn2021 => us_wide(pa_cf1, rh),
            Formula::EpaBarkjohn2022 => extended(pa_cf1, rh),
        };
        Ok(v.max(0.0))
    }
}

/// Barkjohn et al. (2021), the US-wide correction.
pub fn us_wide(pa: f64, rh: f64) -> f64 {
    0.524 * pa - 0.0862 * rh + 5.75
}

/// Barkjohn et al. (2022), the fit for high concentrations.
pub fn quadratic(pa: f64) -> f64 {
    4.21e-4 * pa * pa + 0.392 * pa + 3.44
}

/// Barkjohn et al. (2022): the US-wide correction below [`BLEND_FROM`],
/// the quadratic from [`BLEND_TO`] on, between them weighted by
/// `0.0244 × PA − 13.9` (about 0 at 570, about 1 at 611).
pub fn extended(pa: f64, rh: f64) -> f64 {
    if pa < BLEND_FROM {
        us_wide(pa, rh)
    } else if pa < BLEND_TO {
        let w = 0.0244 * pa - 13.9;
        w * quadratic(pa) + (1.0 - w) * us_wide(pa, rh)
    } else {
        quadratic(pa)
    }
}

#[cfg(test)]
mod tests;
