-- Readings partitioned by UTC day of `ts`, so retention drops a whole
-- partition (never a mass DELETE) and a day's rows sit together on disk.
--
-- Exactly once per (device_id, seq). A partitioned table's unique key must
-- contain the partition column, so `readings` alone can only promise one
-- row per (device_id, seq, ts): a reading sent again under its seq with
-- another timestamp (a seq collision) would go into another partition
-- unnoticed. The promise is kept by `reading_keys`, one row per stored
-- reading, unpartitioned, with (device_id, seq) as its primary key: the
-- writer inserts the keys first (`ON CONFLICT DO NOTHING`) and stores in
-- `readings` only the readings whose key was new, in the same transaction.
-- Keys outlive retention: a reading delivered again after its partition
-- was dropped finds its key and is a duplicate (same timestamp) or a
-- collision (another one), as before. The key also holds `ts`, so the
-- collision check finds the stored row in one partition.
--
-- Partitions are named readings_pYYYYMMDD and cover [day, day + 1) in UTC;
-- the gateway creates them ahead (aeris_readings_add_day) and drops expired
-- ones (aeris_readings_drop_before). A reading with no partition for its
-- day (a backlog from before the oldest one, a clock far ahead) lands in
-- readings_default; the gateway's next run creates its day's partition and
-- moves it there.
--
-- Converting in place: the existing table becomes one partition,
-- readings_legacy, covering its first day up to the end of today (UTC); it
-- keeps its rows and its indexes, and is dropped whole once its newest day
-- has expired. Rows stamped after today are moved to readings_default.
-- Cost: one read of the table for the keys, one to check the range, and a
-- unique index on (device_id, seq, ts) built for the attach.

SET LOCAL TimeZone = 'UTC';

CREATE TABLE reading_keys AS
    SELECT device_id, seq, ts FROM readings ORDER BY device_id, seq;
ALTER TABLE reading_keys
    ALTER COLUMN device_id SET NOT NULL,
    ALTER COLUMN seq SET NOT NULL,
    ALTER COLUMN ts SET NOT NULL,
    ADD PRIMARY KEY (device_id, seq);
COMMENT ON TABLE reading_keys IS
    'one row per reading ever stored, kept after its partition is dropped: exactly once per (device_id, seq)';

ALTER TABLE readings RENAME TO readings_legacy;
ALTER TABLE readings_legacy DROP CONSTRAINT readings_pkey;
ALTER INDEX readings_geom_gist RENAME TO readings_legacy_geom_gist;
ALTER INDEX readings_ts_brin RENAME TO readings_legacy_ts_brin;
ALTER INDEX readings_sensor_ts RENAME TO readings_legacy_sensor_ts;

-- Same columns in the same order as before, so `SELECT *` and row text
-- (the backup checksum) read the same.
CREATE TABLE readings (
    device_id     text        NOT NULL,
    seq           bigint      NOT NULL,
    sensor_id     text        NOT NULL,
    ts            timestamptz NOT NULL,
    geom          geometry(Point, 4326) NOT NULL,
    flags         integer     NOT NULL DEFAULT 0,
    measurements  jsonb       NOT NULL DEFAULT '{}',
    received_at   timestamptz NOT NULL DEFAULT now(),
    pm1           double precision,
    pm25          double precision,
    pm10          double precision,
    no2           double precision,
    o3            double precision,
    co            double precision,
    so2           double precision,
    model_outputs jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (device_id, seq, ts)
) PARTITION BY RANGE (ts);

CREATE INDEX readings_geom_gist ON readings USING gist (geom);
CREATE INDEX readings_ts_brin ON readings USING brin (ts);
CREATE INDEX readings_sensor_ts ON readings (sensor_id, ts);

COMMENT ON TABLE readings IS 'partitioned by UTC day of ts; the key (device_id, seq) is kept by reading_keys';
COMMENT ON COLUMN readings.flags IS 'quality flags of the reading (bit set, 0 = none), as sent by the edge';
COMMENT ON COLUMN readings.measurements IS 'quantities without their own column: {"rh": 40, ...}';
COMMENT ON COLUMN readings.model_outputs IS 'edge model outputs: {"<model>@<version>": value}';

CREATE TABLE readings_default PARTITION OF readings DEFAULT;

-- The partitions of `readings` and their bounds (NULL for the default).
-- The bounds are read back from the catalog's text form, which uses the
-- session's time zone both ways.
CREATE VIEW aeris_readings_partitions AS
SELECT c.relname::text AS name,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz AS from_ts,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS to_ts
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'readings'::regclass;

-- Creates the partition of the UTC day `day` unless a partition already
-- covers any of it, moving that day's rows out of readings_default first
-- (a partition cannot be created over rows the default holds). Returns
-- whether it created one. It locks `readings` exclusively before it looks
-- at the default partition (creating a partition needs that lock anyway),
-- so no writer can add a row of that day between the move and the
-- creation; run it with a lock_timeout.
CREATE FUNCTION aeris_readings_add_day(day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
    part text := 'readings_p' || to_char(day, 'YYYYMMDD');
BEGIN
    IF EXISTS (SELECT 1 FROM aeris_readings_partitions p WHERE p.from_ts < hi AND p.to_ts > lo) THEN
        RETURN false;
    END IF;
    LOCK TABLE readings IN ACCESS EXCLUSIVE MODE;
    IF EXISTS (SELECT 1 FROM readings_default WHERE ts >= lo AND ts < hi) THEN
        CREATE TEMP TABLE IF NOT EXISTS aeris_moving (LIKE readings) ON COMMIT DROP;
        WITH moved AS (DELETE FROM readings_default WHERE ts >= lo AND ts < hi RETURNING *)
        INSERT INTO aeris_moving SELECT * FROM moved;
        EXECUTE format('CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        INSERT INTO readings SELECT * FROM aeris_moving;
        TRUNCATE aeris_moving;
    ELSE
        EXECUTE format('CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    END IF;
    RETURN true;
END $$;

-- Drops every partition whose whole range ends at or before `cutoff`
-- (never the default), oldest first; returns their names. Their keys stay
-- in reading_keys.
CREATE FUNCTION aeris_readings_drop_before(cutoff timestamptz) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT name FROM aeris_readings_partitions
             WHERE to_ts IS NOT NULL AND to_ts <= cutoff ORDER BY from_ts LOOP
        EXECUTE format('DROP TABLE %I', p.name);
        RETURN NEXT p.name;
    END LOOP;
END $$;

-- The existing rows: those stamped after today to the default partition,
-- the rest attached as one partition (no copy).
DO $$
DECLARE
    hi timestamptz := date_trunc('day', now(), 'UTC') + interval '1 day';
    lo timestamptz;
BEGIN
    WITH moved AS (DELETE FROM readings_legacy WHERE ts >= hi RETURNING *)
    INSERT INTO readings_default (device_id, seq, sensor_id, ts, geom, flags, measurements,
                                  received_at, pm1, pm25, pm10, no2, o3, co, so2, model_outputs)
    SELECT device_id, seq, sensor_id, ts, geom, flags, measurements,
           received_at, pm1, pm25, pm10, no2, o3, co, so2, model_outputs
    FROM moved;
    SELECT date_trunc('day', min(ts), 'UTC') INTO lo FROM readings_legacy;
    IF lo IS NULL THEN
        DROP TABLE readings_legacy;
    ELSE
        EXECUTE format('ALTER TABLE readings ATTACH PARTITION readings_legacy FOR VALUES FROM (%L) TO (%L)', lo, hi);
    END IF;
END $$;
