//! The US EPA Air Quality Index of one pollutant concentration, read from
//! one breakpoint table.
//!
//! Breakpoints are those of EPA's Technical Assistance Document for the
//! Reporting of Daily Air Quality (EPA-454/B-24-002, May 2024), with PM2.5
//! as revised in 2024. Each concentration is first truncated as the TAD
//! says (PM2.5 and CO to 0.1, PM10, NO2 and SO2 to 1, O3 to 0.001 ppm),
//! then Equation 1, `I = (Ihi − Ilo)/(Chi − Clo) · (C − Clo) + Ilo`, gives
//! the index, rounded to the nearest integer. Truncation makes the tables
//! integer tables: a row's bounds are the truncated concentration scaled
//! by `10^decimals`, so consecutive rows leave no gap a value could fall in.
//!
//! Each table reads one concentration, as a current indicator (the
//! official AQI averages over 1, 8 or 24 hours):
//! - O3: the 8-hour table up to 0.200 ppm; above, the 1-hour table
//!   (0.201–0.204 ppm, in neither, read as 201).
//! - SO2: the 1-hour table up to 304 ppb, then the 24-hour rows.
//! - Concentrations above the top breakpoint are "beyond the AQI"; the
//!   index is capped at 500.
//!
//! Units are the tables' own (PM in µg/m³, NO2 and SO2 in ppb, O3 and CO in
//! ppm); converting a gas from µg/m³ is the caller's (it needs reference
//! conditions).

/// One row: concentration range (in the table's unit, scaled to integers
/// by `10^decimals`) and the index range it maps to.
type Row = (i64, i64, u32, u32);

/// A pollutant's table: its quantity name, the decimals its concentration
/// is truncated to, and its rows.
pub struct Table {
    pub quantity: &'static str,
    pub decimals: u32,
    pub rows: &'static [Row],
}

/// µg/m³, 24-hour, one decimal (scaled ×10).
pub const PM25: Table = Table {
    quantity: "pm25",
    decimals: 1,
    rows: &[
        (0, 90, 0, 50),
        (91, 354, 51, 100),
        (355, 554, 101, 150),
        (555, 1254, 151, 200),
        (1255, 2254, 201, 300),
        (2255, 3254, 301, 500),
    ],
};

/// µg/m³, 24-hour, integer.
pub const PM10: Table = Table {
    quantity: "pm10",
    decimals: 0,
    rows: &[
        (0, 54, 0, 50),
        (55, 154, 51, 100),
        (155, 254, 101, 150),
        (255, 354, 151, 200),
        (355, 424, 201, 300),
        (425, 604, 301, 500),
    ],
};

/// ppm, 8-hour up to 0.200, then 1-hour; three decimals (scaled ×1000).
pub const O3: Table = Table {
    quantity: "o3",
    decimals: 3,
    rows: &[
        (0, 54, 0, 50),
        (55, 70, 51, 100),
        (71, 85, 101, 150),
        (86, 105, 151, 200),
        (106, 200, 201, 300),
        (201, 204, 201, 201),
        (205, 404, 201, 300),
        (405, 604, 301, 500),
    ],
};

/// ppm, 8-hour, one decimal (scaled ×10).
pub const CO: Table = Table {
    quantity: "co",
    decimals: 1,
    rows: &[
        (0, 44, 0, 50),
        (45, 94, 51, 100),
        (95, 124, 101, 150),
        (125, 154, 151, 200),
        (155, 304, 201, 300),
        (305, 504, 301, 500),
    ],
};

/// ppb, 1-hour (24-hour above 304), integer.
pub const SO2: Table = Table {
    quantity: "so2",
    decimals: 0,
    rows: &[
        (0, 35, 0, 50),
        (36, 75, 51, 100),
        (76, 185, 101, 150),
        (186, 304, 151, 200),
        (305, 604, 201, 300),
        (605, 1004, 301, 500),
    ],
};

/// ppb, 1-hour, integer.
pub const NO2: Table = Table {
    quantity: "no2",
    decimals: 0,
    rows: &[
        (0, 53, 0, 50),
        (54, 100, 51, 100),
        (101, 360, 101, 150),
        (361, 649, 151, 200),
        (650, 1249, 201, 300),
        (1250, 2049, 301, 500),
    ],
};

pub const TABLES: [&Table; 6] = [&PM25, &PM10, &O3, &CO, &SO2, &NO2];

/// The category of an index, as the TAD names them (Table 1): 0–50
/// Good, 51–100 Moderate, 101–150 Unhealthy for Sensitive Groups,
/// 151–200 Unhealthy, 201–300 Very Unhealthy, 301 and above Hazardous.
pub fn category(aqi: u32) -> &'static str {
    match aqi {
        0..=50 => "Good",
        51..=100 => "Moderate",
        101..=150 => "Unhealthy for Sensitive Groups",
        151..=200 => "Unhealthy",
        201..=300 => "Very Unhealthy",
        _ => "Hazardous",
    }
}

impl Table {
    /// The index of concentration `c` in the table's unit; `None` for a
    /// negative or non-finite concentration.
    pub fn index(&self, c: f64) -> Option<u32> {
        if !c.is_finite() || c < 0.0 {
            return None;
        }
        let scale = 10f64.powi(self.decimals as i32);
        // Truncation; the epsilon keeps 35.4 (stored as 35.39999...) at 354.
        let ci = (c * scale + 1e-6).floor() as i64;
        let (top_c, top_i) = self.rows.last().map(|r| (r.1, r.3))?;
        if ci > top_c {
            return Some(top_i);
        }
        let &(clo, chi, ilo, ihi) = self.rows.iter().find(|r| r.0 <= ci && ci <= r.1)?;
        if chi == clo {
            return Some(ilo);
        }
        let i = (ihi - ilo) as f64 / (chi - clo) as f64 * (ci - clo) as f64 + ilo as f64;
        Some(i.round() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_change_at_the_tads_index_bounds() {
        let names: Vec<&str> = [0, 50, 51, 100, 101, 150, 151, 200, 201, 300, 301, 500]
            .into_iter()
            .map(category)
            .collect();
        assert_eq!(
            names,
            [
                "Good",
                "Good",
                "Moderate",
                "Moderate",
                "Unhealthy for Sensitive Groups",
                "Unhealthy for Sensitive Groups",
                "Unhealthy",
                "Unhealthy",
                "Very Unhealthy",
                "Very Unhealthy",
                "Hazardous",
                "Hazardous"
            ]
        );
    }

    /// Expected indices written by hand from EPA's 2024 breakpoint table,
    /// at, just below and just above every breakpoint, with Equation 1
    /// worked on paper.
    #[test]
    fn pm25_index_matches_epa_2024_table_around_every_breakpoint() {
        let cases = [
            (0.0, 0),
            (4.5, 25), // 50/9.0*4.5
            (8.9, 49), // 49.44
            (9.0, 50),
            (9.04, 50), // truncated to 9.0
            (9.1, 51),
            (9.2, 51),   // 49/26.3*0.1+51 = 51.19
            (35.3, 100), // 99.81
            (35.4, 100),
            (35.49, 100),
            (35.5, 101),
            (35.6, 101), // 101.25
            (55.4, 150),
            (55.5, 151),
            (55.6, 151), // 151.07
            (125.4, 200),
            (125.5, 201),
            (125.6, 201), // 99/99.9*0.1+201 = 201.10
            (225.4, 300),
            (225.5, 301),
            (225.6, 301), // 301.2
            (325.3, 500), // 499.8
            (325.4, 500),
            (325.5, 500), // beyond the AQI: capped
            (900.0, 500),
        ];
        for (c, want) in cases {
            assert_eq!(PM25.index(c), Some(want), "PM2.5 {c}");
        }
        assert_eq!(PM25.index(-0.1), None);
        assert_eq!(PM25.index(f64::NAN), None);
    }

    #[test]
    fn pm10_index_matches_epa_table_around_every_breakpoint() {
        let cases = [
            (0.0, 0),
            (54.0, 50),
            (54.9, 50), // truncated to 54
            (55.0, 51),
            (154.0, 100),
            (155.0, 101),
            (200.0, 123), // 49/99*45+101 = 123.27
            (254.0, 150),
            (255.0, 151),
            (354.0, 200),
            (355.0, 201),
            (424.0, 300),
            (425.0, 301),
            (604.0, 500),
            (605.0, 500),
        ];
        for (c, want) in cases {
            assert_eq!(PM10.index(c), Some(want), "PM10 {c}");
        }
    }

    #[test]
    fn gas_indices_match_epa_tables_around_every_breakpoint() {
        let o3 = [
            (0.054, 50),
            (0.055, 51),
            (0.0559, 51),
            (0.070, 100),
            (0.071, 101),
            (0.085, 150),
            (0.086, 151),
            (0.105, 200),
            (0.106, 201),
            (0.200, 300),
            (0.203, 201),
            (0.205, 201),
            (0.404, 300),
            (0.405, 301),
            (0.604, 500),
            (0.7, 500),
        ];
        for (c, want) in o3 {
            assert_eq!(O3.index(c), Some(want), "O3 {c} ppm");
        }
        let co = [
            (4.4, 50),
            (4.5, 51),
            (9.4, 100),
            (9.5, 101),
            (12.4, 150),
            (12.5, 151),
            (15.4, 200),
            (15.5, 201),
            (30.4, 300),
            (30.5, 301),
            (50.4, 500),
        ];
        for (c, want) in co {
            assert_eq!(CO.index(c), Some(want), "CO {c} ppm");
        }
        let so2 = [
            (35.0, 50),
            (36.0, 51),
            (75.0, 100),
            (76.0, 101),
            (185.0, 150),
            (186.0, 151),
            (304.0, 200),
            (305.0, 201),
            (604.0, 300),
            (605.0, 301),
            (1004.0, 500),
        ];
        for (c, want) in so2 {
            assert_eq!(SO2.index(c), Some(want), "SO2 {c} ppb");
        }
        let no2 = [
            (53.0, 50),
            (53.9, 50),
            (54.0, 51),
            (100.0, 100),
            (101.0, 101),
            (360.0, 150),
            (361.0, 151),
            (649.0, 200),
            (650.0, 201),
            (1249.0, 300),
            (1250.0, 301),
            (2049.0, 500),
        ];
        for (c, want) in no2 {
            assert_eq!(NO2.index(c), Some(want), "NO2 {c} ppb");
        }
    }
}
