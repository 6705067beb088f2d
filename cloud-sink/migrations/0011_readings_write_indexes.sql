-- The index set of `readings`, chosen for the write rate (issue 17 point 2;
-- the study is `aeris-bench-indexes`, its figures in the README, "PostGIS
-- write rate", and docs/decisions.md).
--
-- Before: primary key (device_id, seq, ts), GiST on geom, BRIN on ts and a
-- b-tree on (sensor_id, ts): four index entries per row. After: one
-- b-tree on (device_id, ts, sensor_id) and the BRIN on ts.
--
-- What each read of `readings` uses:
-- - `/api/readings` and the rollups' recompute (one device's sensor over a
--   time range): the b-tree's (device_id, ts) range, sensor_id checked in
--   the index before the row is read. The old (sensor_id, ts) index read
--   the sensor of that name of every device (names repeat across devices).
-- - the collision check (a key's device, seq and stored ts): one probe of
--   (device_id, ts), seq checked on the row.
-- - one device's rows (`verify`'s canary count and removal): the prefix.
-- - time ranges across devices (`rollups rebuild`, moving rows out of the
--   default partition): partition pruning, then the BRIN within a
--   partition (readings_legacy of 0006 spans every day before it).
-- - nothing reads `readings` by geometry: `/api/sensors?bbox=` finds the
--   sensors in the live view (Redis' geo index) and reads the rollups. The
--   GiST index was the dearest per row.
-- Exactly once per (device_id, seq) is `reading_keys`' primary key (0006);
-- the readings' own primary key (device_id, seq, ts) added nothing to it.
--
-- Converting in place: dropping the parent's indexes drops each
-- partition's (readings_legacy's reused ones too); the new b-tree is
-- built on every partition, one read of the table, while `readings` is
-- locked (writes wait, their acks held, and retry).

ALTER TABLE readings DROP CONSTRAINT readings_pkey;
DROP INDEX readings_geom_gist;
DROP INDEX readings_sensor_ts;
-- 0006 reused these on readings_legacy; attached, they went with the
-- parent's. Only a table converted by hand could still have them.
DROP INDEX IF EXISTS readings_legacy_geom_gist;
DROP INDEX IF EXISTS readings_legacy_sensor_ts;

CREATE INDEX readings_device_ts ON readings (device_id, ts, sensor_id);

COMMENT ON INDEX readings_device_ts IS
    'a device''s readings by time (API, rollups, collision check); unique keys are reading_keys''';
