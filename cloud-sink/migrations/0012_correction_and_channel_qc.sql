-- Low-cost sensor correction and dual-channel QC (issue 16, points 3 and 4).
--
-- readings: a PM2.5 the edge corrected (aeris_wire::correction) is stored
-- in `pm25` (what the AQI, the map and the rollups read), the value the
-- sensor sent in `pm25_raw`, and the formula in `pm25_correction` as
-- `<name>@<version>` (`epa-barkjohn-2021@1`). A reading whose correction
-- was withheld (no relative humidity; flag bit 6) has `pm25` NULL and its
-- raw value and formula stored the same way. Uncorrected sensors leave
-- both new columns NULL: their `pm25` is what they sent. The raw value of
-- any reading is therefore `coalesce(pm25_raw, pm25)`.
--
-- readings_hourly: for a pollutant measured on two channels (`pm25_a`,
-- `pm25_b` in `measurements`), each channel's hourly mean and the hour's
-- check (aeris_wire::aqi::channels): 'ok', 'disagree' (apart by more than
-- 5 µg/m³ and 70 %, configurable; the hour is then not `valid`, so the
-- NowCast treats it as missing) or 'one_channel'. NULL: no channels.
--
-- Adding nullable columns without defaults rewrites nothing: existing rows
-- read NULL, the partitions of `readings` get the columns with their parent.

ALTER TABLE readings
    ADD COLUMN pm25_raw double precision,
    ADD COLUMN pm25_correction text;

COMMENT ON COLUMN readings.pm25_raw IS
    'PM2.5 as the sensor sent it, when the edge corrected it (pm25 holds the corrected value; NULL otherwise)';
COMMENT ON COLUMN readings.pm25_correction IS
    'the correction of pm25 as <formula>@<version> (epa-barkjohn-2021@1, ...); NULL when uncorrected';

ALTER TABLE readings_hourly
    ADD COLUMN channel_a double precision,
    ADD COLUMN channel_b double precision,
    ADD COLUMN channel_qc text CHECK (channel_qc IN ('ok', 'disagree', 'one_channel'));

COMMENT ON COLUMN readings_hourly.valid IS
    'count >= 75 % of expected and, for a two-channel sensor, channels not in disagreement; only valid hours feed NowCasts and 8/24-hour means';
COMMENT ON COLUMN readings_hourly.channel_a IS 'hourly mean of the pollutant''s channel A (<pollutant>_a), µg/m³';
COMMENT ON COLUMN readings_hourly.channel_b IS 'hourly mean of the pollutant''s channel B (<pollutant>_b), µg/m³';
COMMENT ON COLUMN readings_hourly.channel_qc IS
    'dual-channel check of the hour: ok, disagree (hour invalid), one_channel; NULL without channels';

-- "Which sensors disagree lately" scans recent hours that were checked.
CREATE INDEX readings_hourly_channel_qc ON readings_hourly (hour) WHERE channel_qc IS NOT NULL;
