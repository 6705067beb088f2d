-- Hourly rollups: one row per device, sensor, pollutant and hour, kept
-- forever (retention drops raw readings only; the rollups are what stays).
--
-- The statistics come from the raw readings of the hour; the NowCast and
-- the AQI from `aeris_wire::aqi::rollup` over the hourly means (never
-- computed in SQL). The gateway keeps the rows current: each write marks
-- the (device, sensor, hour)s it stored readings for in
-- `readings_hourly_dirty`, in the write's own transaction, and a
-- background task recomputes the marked hours and the NowCasts of the
-- hours after them, then clears the marks it handled (unless a write
-- marked them again meanwhile: `gen`). `aeris-gateway rollups rebuild`
-- marks a range and recomputes it the same way.
--
-- Needs only 0006's `readings`; nothing of 0007 or later.

CREATE TABLE readings_hourly (
    device_id     text             NOT NULL,
    sensor_id     text             NOT NULL,
    pollutant     text             NOT NULL,
    hour          timestamptz      NOT NULL,
    mean          double precision NOT NULL,
    min           double precision NOT NULL,
    max           double precision NOT NULL,
    count         integer          NOT NULL,
    expected      integer          NOT NULL,
    completeness  double precision NOT NULL,
    valid         boolean          NOT NULL,
    nowcast       double precision,
    aqi           integer,
    aqi_averaging text,
    computed_at   timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, sensor_id, pollutant, hour),
    CHECK (pollutant IN ('pm1', 'pm25', 'pm10', 'no2', 'o3', 'co', 'so2')),
    CHECK (count > 0 AND expected > 0),
    CHECK (aqi_averaging IN ('1h', '8h', '24h', 'nowcast'))
);

-- "The latest hour of every sensor" (the map) and ranges across sensors.
CREATE INDEX readings_hourly_hour ON readings_hourly (hour);

COMMENT ON TABLE readings_hourly IS
    'hourly rollups per device, sensor and pollutant (aeris_wire::aqi::rollup); kept forever';
COMMENT ON COLUMN readings_hourly.hour IS 'the hour''s beginning, UTC';
COMMENT ON COLUMN readings_hourly.mean IS 'mean of the hour''s readings in the stored unit (µg/m³, gases too)';
COMMENT ON COLUMN readings_hourly.expected IS 'readings the sensor''s interval promises per hour (rollups.sample_interval)';
COMMENT ON COLUMN readings_hourly.completeness IS 'count / expected (may exceed 1)';
COMMENT ON COLUMN readings_hourly.valid IS 'count >= 75 % of expected; only valid hours feed NowCasts and 8/24-hour means';
COMMENT ON COLUMN readings_hourly.nowcast IS
    'EPA NowCast ending with this hour in the AQI table''s unit (µg/m³ PM2.5/PM10, ppm O3), truncated; NULL when withheld or none';
COMMENT ON COLUMN readings_hourly.aqi IS 'the pollutant''s index on its averaging time at this hour';
COMMENT ON COLUMN readings_hourly.aqi_averaging IS 'what the index was computed from: 1h, 8h, 24h or nowcast';

CREATE TABLE readings_hourly_dirty (
    device_id text        NOT NULL,
    sensor_id text        NOT NULL,
    hour      timestamptz NOT NULL,
    gen       bigint      NOT NULL DEFAULT 1,
    marked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, sensor_id, hour)
);

COMMENT ON TABLE readings_hourly_dirty IS
    'hours whose rollups wait for a recompute; gen counts the writes that marked it since';
COMMENT ON COLUMN readings_hourly_dirty.marked_at IS 'when the hour was first marked (the rollup lag)';
