-- Readings get one column per known pollutant; `measurements` keeps the
-- rest (weather, unknown quantities) and model outputs move to
-- `model_outputs`, keyed `<model>@<version>`. Existing rows are split the
-- same way, so a query never needs to look in two places.
ALTER TABLE readings
    ADD COLUMN pm1  double precision,
    ADD COLUMN pm25 double precision,
    ADD COLUMN pm10 double precision,
    ADD COLUMN no2  double precision,
    ADD COLUMN o3   double precision,
    ADD COLUMN co   double precision,
    ADD COLUMN so2  double precision,
    ADD COLUMN model_outputs jsonb NOT NULL DEFAULT '{}';

UPDATE readings SET
    pm1  = (measurements->>'pm1')::float8,
    pm25 = (measurements->>'pm25')::float8,
    pm10 = (measurements->>'pm10')::float8,
    no2  = (measurements->>'no2')::float8,
    o3   = (measurements->>'o3')::float8,
    co   = (measurements->>'co')::float8,
    so2  = (measurements->>'so2')::float8,
    model_outputs = coalesce((SELECT jsonb_object_agg(substr(key, 7), value)
                              FROM jsonb_each(measurements) WHERE key LIKE 'model:%'), '{}'),
    measurements = coalesce((SELECT jsonb_object_agg(key, value)
                             FROM jsonb_each(measurements)
                             WHERE key NOT LIKE 'model:%'
                               AND key NOT IN ('pm1', 'pm25', 'pm10', 'no2', 'o3', 'co', 'so2')), '{}');

ALTER TABLE readings ALTER COLUMN measurements SET DEFAULT '{}';

COMMENT ON COLUMN readings.flags IS 'quality flags of the reading (bit set, 0 = none), as sent by the edge';
COMMENT ON COLUMN readings.measurements IS 'quantities without their own column: {"rh": 40, ...}';
COMMENT ON COLUMN readings.model_outputs IS 'edge model outputs: {"<model>@<version>": value}';

-- The last status each device reported (retained up/status): versions and
-- data debt. Written only when newer than what is stored.
CREATE TABLE devices (
    device_id        text PRIMARY KEY,
    boot_id          bigint      NOT NULL,
    status_ts        timestamptz NOT NULL,
    online           boolean     NOT NULL,
    agent_version    text        NOT NULL,
    last_seq         bigint      NOT NULL,
    queued_readings  bigint      NOT NULL,
    queued_bytes     bigint      NOT NULL,
    oldest_unsent    timestamptz,
    losses           jsonb       NOT NULL DEFAULT '{}',
    updated_at       timestamptz NOT NULL DEFAULT now()
);
