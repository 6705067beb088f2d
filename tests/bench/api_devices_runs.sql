-- Benchmark (psql, not a test): run in a fresh, empty database:
--   createdb devq && psql -d devq -f tests/bench/api_devices_runs.sql && dropdb devq
-- Prints the time of /api/devices' counts-and-gaps query twice each way.
-- /api/devices' counts and gaps: keys per reading (before 0014) against runs (0014),
-- 1,000 devices x 5,000 readings with a gap every 997 seqs, batches of 500.
CREATE EXTENSION IF NOT EXISTS btree_gist;
CREATE TABLE devices (device_id text PRIMARY KEY);
INSERT INTO devices SELECT 'dev-' || d FROM generate_series(1,1000) d;
CREATE TABLE reading_keys AS SELECT 'dev-' || d AS device_id, s::int8 AS seq, now() AS ts
  FROM generate_series(1,1000) d, generate_series(1,5000) s WHERE s % 997 <> 0;
ALTER TABLE reading_keys ADD PRIMARY KEY (device_id, seq);
CREATE TABLE reading_runs (device_id text NOT NULL, first_seq bigint NOT NULL, last_seq bigint NOT NULL, ts_ms bigint[] NOT NULL,
  PRIMARY KEY (device_id, last_seq) INCLUDE (first_seq));
INSERT INTO reading_runs SELECT device_id, min(seq), max(seq), array_agg(0::int8)
  FROM (SELECT device_id, seq, seq - row_number() OVER w AS island, (row_number() OVER w - 1) / 500 AS chunk
        FROM reading_keys WINDOW w AS (PARTITION BY device_id ORDER BY seq)) k
  GROUP BY device_id, island, chunk;
VACUUM ANALYZE;
\timing on
\o /dev/null
SELECT d.device_id, s.received, s.max_seq, g.gaps FROM devices d
CROSS JOIN LATERAL (SELECT count(*) AS received, coalesce(max(seq), 0) AS max_seq FROM reading_keys r WHERE r.device_id = d.device_id) s
CROSS JOIN LATERAL (SELECT coalesce(jsonb_agg(jsonb_build_array(first, last) ORDER BY first), '[]') AS gaps FROM (
    SELECT prev + 1 AS first, seq - 1 AS last FROM (SELECT seq, lag(seq, 1, 0::int8) OVER (ORDER BY seq) AS prev
          FROM reading_keys r WHERE r.device_id = d.device_id) w WHERE seq - prev > 1 ORDER BY first LIMIT 100) h) g;
SELECT d.device_id, s.received, s.max_seq, g.gaps FROM devices d
CROSS JOIN LATERAL (SELECT count(*) AS received, coalesce(max(seq), 0) AS max_seq FROM reading_keys r WHERE r.device_id = d.device_id) s
CROSS JOIN LATERAL (SELECT coalesce(jsonb_agg(jsonb_build_array(first, last) ORDER BY first), '[]') AS gaps FROM (
    SELECT prev + 1 AS first, seq - 1 AS last FROM (SELECT seq, lag(seq, 1, 0::int8) OVER (ORDER BY seq) AS prev
          FROM reading_keys r WHERE r.device_id = d.device_id) w WHERE seq - prev > 1 ORDER BY first LIMIT 100) h) g;
SELECT d.device_id, s.received, s.max_seq, g.gaps FROM devices d
CROSS JOIN LATERAL (SELECT coalesce(sum(last_seq - first_seq + 1), 0)::int8 AS received, coalesce(max(last_seq), 0) AS max_seq FROM reading_runs r WHERE r.device_id = d.device_id) s
CROSS JOIN LATERAL (SELECT coalesce(jsonb_agg(jsonb_build_array(first, last) ORDER BY first), '[]') AS gaps FROM (
    SELECT prev + 1 AS first, first_seq - 1 AS last FROM (SELECT first_seq, lag(last_seq, 1, 0::int8) OVER (ORDER BY last_seq) AS prev
          FROM reading_runs r WHERE r.device_id = d.device_id) w WHERE first_seq - prev > 1 ORDER BY first LIMIT 100) h) g;
SELECT d.device_id, s.received, s.max_seq, g.gaps FROM devices d
CROSS JOIN LATERAL (SELECT coalesce(sum(last_seq - first_seq + 1), 0)::int8 AS received, coalesce(max(last_seq), 0) AS max_seq FROM reading_runs r WHERE r.device_id = d.device_id) s
CROSS JOIN LATERAL (SELECT coalesce(jsonb_agg(jsonb_build_array(first, last) ORDER BY first), '[]') AS gaps FROM (
    SELECT prev + 1 AS first, first_seq - 1 AS last FROM (SELECT first_seq, lag(last_seq, 1, 0::int8) OVER (ORDER BY last_seq) AS prev
          FROM reading_runs r WHERE r.device_id = d.device_id) w WHERE first_seq - prev > 1 ORDER BY first LIMIT 100) h) g;
\o
SELECT (SELECT count(*) FROM reading_runs) AS runs, (SELECT count(*) FROM reading_keys) AS keys;
