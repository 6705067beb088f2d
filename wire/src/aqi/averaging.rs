//! The AQI of each pollutant on the averaging time the standard defines,
//! and the overall AQI: the largest, with the pollutant responsible.
//!
//! Averaging times, from the TAD (EPA-454/B-24-002, May 2024), Table 5 and
//! its footnotes:
//! - PM2.5, PM10: 24-hour mean; the NowCast stands in for it in real time.
//! - O3: 8-hour mean; the 1-hour table starts at 0.125 ppm and is used
//!   where it is more precautionary, the larger index reported. 8-hour
//!   values do not define an index of 301 or more (1-hour values do).
//! - CO: 8-hour mean. NO2: 1-hour. SO2: 1-hour up to 304 ppb; "1-hour SO2
//!   values do not define higher AQI values (≥ 200)", those come from the
//!   24-hour mean.
//!
//! The PM, CO and NO2 tables are [`super::table`]'s. That module's `O3`
//! and `SO2` merge two averaging times into one current-indicator table;
//! here each averaging time has its own rows.

use super::table::{Table, CO, NO2, O3, PM10, PM25, SO2};

/// O3 8-hour, ppm ×1000; nothing above 0.200 ppm (1-hour values take
/// over): the first five rows of [`O3`].
pub const O3_8HOUR: Table = Table {
    quantity: "o3",
    decimals: 3,
    rows: O3.rows.split_at(5).0,
};

/// O3 1-hour, ppm ×1000; defined from 0.125 ppm.
pub const O3_1HOUR: Table = Table {
    quantity: "o3",
    decimals: 3,
    rows: &[
        (125, 164, 101, 150),
        (165, 204, 151, 200),
        (205, 404, 201, 300),
        (405, 604, 301, 500),
    ],
};

/// SO2 1-hour, ppb; up to 304 (index 200): the first four rows of [`SO2`].
pub const SO2_1HOUR: Table = Table {
    quantity: "so2",
    decimals: 0,
    rows: SO2.rows.split_at(4).0,
};

/// SO2 24-hour, ppb; defined from 305 (index 201): the rest of [`SO2`].
pub const SO2_24HOUR: Table = Table {
    quantity: "so2",
    decimals: 0,
    rows: SO2.rows.split_at(4).1,
};

/// The pollutants of the AQI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pollutant {
    Pm25,
    Pm10,
    O3,
    Co,
    So2,
    No2,
}

impl Pollutant {
    /// Every pollutant, in the order a tie names them.
    pub const ALL: [Pollutant; 6] = [
        Pollutant::Pm25,
        Pollutant::Pm10,
        Pollutant::O3,
        Pollutant::Co,
        Pollutant::So2,
        Pollutant::No2,
    ];

    /// The pollutant a quantity name stands for.
    pub fn from_quantity(q: &str) -> Option<Pollutant> {
        Pollutant::ALL.into_iter().find(|p| p.quantity() == q)
    }

    /// The quantity name readings carry (`"pm25"`, ...).
    pub fn quantity(self) -> &'static str {
        match self {
            Pollutant::Pm25 => "pm25",
            Pollutant::Pm10 => "pm10",
            Pollutant::O3 => "o3",
            Pollutant::Co => "co",
            Pollutant::So2 => "so2",
            Pollutant::No2 => "no2",
        }
    }
}

/// The averaging time an index was computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Averaging {
    OneHour,
    EightHour,
    TwentyFourHour,
    /// The NowCast standing in for the 8- or 24-hour mean.
    NowCast,
}

impl Averaging {
    /// A short name for storage and the API: `1h`, `8h`, `24h`, `nowcast`.
    pub fn label(self) -> &'static str {
        match self {
            Averaging::OneHour => "1h",
            Averaging::EightHour => "8h",
            Averaging::TwentyFourHour => "24h",
            Averaging::NowCast => "nowcast",
        }
    }

    /// The averaging a [`Averaging::label`] names.
    pub fn from_label(s: &str) -> Option<Averaging> {
        [
            Averaging::OneHour,
            Averaging::EightHour,
            Averaging::TwentyFourHour,
            Averaging::NowCast,
        ]
        .into_iter()
        .find(|a| a.label() == s)
    }
}

/// One pollutant's index and what it was computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollutantAqi {
    pub pollutant: Pollutant,
    pub aqi: u32,
    pub averaging: Averaging,
}

/// A concentration and the averaging it stands for: the standard's own
/// (24-hour PM, 8-hour O3) or the NowCast standing in for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AveragedValue {
    pub concentration: f64,
    pub averaging: Averaging,
}

/// What a site reports for one period, each on its own averaging time;
/// `None` where there is no valid value.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Concentrations {
    /// µg/m³, 24-hour mean or NowCast.
    pub pm25: Option<AveragedValue>,
    pub pm10: Option<AveragedValue>,
    /// ppm, 8-hour mean or the O3 NowCast.
    pub o3_8h: Option<AveragedValue>,
    /// ppm, 1-hour mean.
    pub o3_1h: Option<f64>,
    /// ppm, 8-hour mean.
    pub co_8h: Option<f64>,
    /// ppb, 1-hour mean.
    pub so2_1h: Option<f64>,
    /// ppb, 24-hour mean.
    pub so2_24h: Option<f64>,
    /// ppb, 1-hour mean.
    pub no2_1h: Option<f64>,
}

/// The O3 index: the 8-hour index, or the 1-hour index when the 1-hour
/// mean reaches 0.125 ppm and gives more. An 8-hour mean above 0.200 ppm
/// has no 8-hour index (the TAD sends it to the 1-hour table).
pub fn o3_aqi(eight_hour: Option<AveragedValue>, one_hour: Option<f64>) -> Option<PollutantAqi> {
    let eight =
        eight_hour.and_then(|v| Some((index_within(&O3_8HOUR, v.concentration)?, v.averaging)));
    let one = one_hour
        .and_then(|c| O3_1HOUR.index(c))
        .map(|i| (i, Averaging::OneHour));
    let (aqi, averaging) = larger_first_on_tie(eight, one)?;
    Some(PollutantAqi {
        pollutant: Pollutant::O3,
        aqi,
        averaging,
    })
}

/// The SO2 index: the 1-hour index up to 304 ppb; above, the 24-hour index
/// when the 24-hour mean reaches 305 ppb, else 200 (the most the 1-hour
/// value can define). The fallback to 200 is our reading of the footnote.
pub fn so2_aqi(one_hour: Option<f64>, day: Option<f64>) -> Option<PollutantAqi> {
    let day_index = day
        .and_then(|c| SO2_24HOUR.index(c))
        .map(|i| (i, Averaging::TwentyFourHour));
    let hour_index = one_hour.filter(|c| c.is_finite() && *c >= 0.0).map(|c| {
        (
            index_within(&SO2_1HOUR, c).unwrap_or(200),
            Averaging::OneHour,
        )
    });
    let (aqi, averaging) = larger_first_on_tie(hour_index, day_index)?;
    Some(PollutantAqi {
        pollutant: Pollutant::So2,
        aqi,
        averaging,
    })
}

/// The index of every pollutant with a value.
pub fn pollutant_aqis(c: &Concentrations) -> Vec<PollutantAqi> {
    let pm = |p: Pollutant, t: &Table, v: Option<AveragedValue>| {
        let v = v?;
        let aqi = t.index(v.concentration)?;
        Some(PollutantAqi {
            pollutant: p,
            aqi,
            averaging: v.averaging,
        })
    };
    let single = |p: Pollutant, t: &Table, v: Option<f64>, averaging: Averaging| {
        let aqi = t.index(v?)?;
        Some(PollutantAqi {
            pollutant: p,
            aqi,
            averaging,
        })
    };
    [
        pm(Pollutant::Pm25, &PM25, c.pm25),
        pm(Pollutant::Pm10, &PM10, c.pm10),
        o3_aqi(c.o3_8h, c.o3_1h),
        single(Pollutant::Co, &CO, c.co_8h, Averaging::EightHour),
        so2_aqi(c.so2_1h, c.so2_24h),
        single(Pollutant::No2, &NO2, c.no2_1h, Averaging::OneHour),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The overall AQI: the largest pollutant index, naming the pollutant
/// responsible (the first in [`pollutant_aqis`]' order on a tie: PM2.5,
/// PM10, O3, CO, SO2, NO2). `None` without any value.
pub fn overall_aqi(c: &Concentrations) -> Option<PollutantAqi> {
    highest(pollutant_aqis(c))
}

/// The largest of pollutant indices computed apart (a rollup's rows), in
/// any order; on a tie the first in [`Pollutant::ALL`].
pub fn highest(aqis: impl IntoIterator<Item = PollutantAqi>) -> Option<PollutantAqi> {
    let rank = |p: &PollutantAqi| Pollutant::ALL.iter().position(|q| *q == p.pollutant);
    aqis.into_iter()
        .max_by(|a, b| a.aqi.cmp(&b.aqi).then_with(|| rank(b).cmp(&rank(a))))
}

/// The larger index; `a` on a tie (the standard's primary averaging time).
fn larger_first_on_tie(
    a: Option<(u32, Averaging)>,
    b: Option<(u32, Averaging)>,
) -> Option<(u32, Averaging)> {
    match (a, b) {
        (Some(a), Some(b)) if b.0 > a.0 => Some(b),
        (a, b) => a.or(b),
    }
}

/// `table.index(c)`, but `None` above the table's top row instead of the
/// cap: for tables whose higher indices belong to another averaging time.
fn index_within(table: &Table, c: f64) -> Option<u32> {
    let top = table.rows.last()?.1;
    let scale = 10f64.powi(table.decimals as i32);
    if (c * scale + 1e-6).floor() as i64 > top {
        return None;
    }
    table.index(c)
}

#[cfg(test)]
mod tests;
