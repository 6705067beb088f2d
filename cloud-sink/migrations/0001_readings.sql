-- Readings, one row per (device, seq): the key that makes at-least-once
-- delivery exactly-once in storage.
CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE readings (
    device_id   text        NOT NULL,
    seq         bigint      NOT NULL,
    sensor_id   text        NOT NULL,
    ts          timestamptz NOT NULL,
    geom        geometry(Point, 4326) NOT NULL,
    flags       integer     NOT NULL DEFAULT 0,
    measurements jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, seq)
);

CREATE INDEX readings_geom_gist ON readings USING gist (geom);
CREATE INDEX readings_ts_brin ON readings USING brin (ts);
CREATE INDEX readings_sensor_ts ON readings (sensor_id, ts);
