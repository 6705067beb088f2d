-- Stable integer ids for the OpenAQ v3-style API (`/v3/locations`,
-- `/v3/sensors`) and the AQCSV export's site codes: OpenAQ's clients
-- expect integer ids, and an id must not change when sensors come and go.
--
-- A location is one sensor of one device (it has one position); an API
-- sensor is one pollutant measured there (OpenAQ's sensor measures one
-- parameter). The gateway registers ids for the (device, sensor,
-- pollutant)s found in `readings_hourly` when the API lists them; rows
-- are never deleted, so an id is never reused.
--
-- Needs only 0009's `readings_hourly`.

CREATE TABLE api_locations (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id text NOT NULL,
    sensor_id text NOT NULL,
    UNIQUE (device_id, sensor_id)
);

CREATE TABLE api_sensors (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    location_id bigint NOT NULL REFERENCES api_locations (id),
    pollutant   text   NOT NULL,
    UNIQUE (location_id, pollutant)
);

COMMENT ON TABLE api_locations IS 'OpenAQ-style location ids: one per (device, sensor) with rollups';
COMMENT ON TABLE api_sensors IS 'OpenAQ-style sensor ids: one per location and pollutant with rollups';
