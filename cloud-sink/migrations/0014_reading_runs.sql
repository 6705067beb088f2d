-- Exactly once per (device_id, seq) kept per run of seqs instead of per
-- reading (issue 17 point 2: the write rate; docs/decisions.md, "Keys by
-- run").
--
-- `reading_keys` (0006) held a row and a b-tree entry per reading, and the
-- write path staged every reading, sorted it twice and joined it to its
-- key: 2.5 times the cost of copying the reading into `readings`. A batch
-- is a run of consecutive seqs, so `reading_runs` holds one row per run
-- with each reading's timestamp in an array (what the collision check
-- compares): about one key row per batch. The writer (cloud-sink
-- postgis/runs.rs) reads the runs a write overlaps under a per-device
-- lock and copies only the new readings, straight into `readings`.
--
-- Runs never overlap: the writer's lock keeps them apart, and the
-- exclusion constraint refuses an overlapping run whoever inserts it, so
-- a reading is never stored twice even by a writer that skipped the lock.
-- Like the keys, runs outlive retention (dropping a partition never lets
-- a reading be stored again).
--
-- Converting in place: the keys are read once, grouped into runs of
-- consecutive seqs (a run of at most 4,096, the writer's limit), and the
-- table dropped. `btree_gist` (a trusted extension in contrib) gives the
-- exclusion constraint its `=` on text. The ranges are `numrange`: an
-- `int8range` holding the highest seq (i64::MAX, a valid seq) cannot be
-- built (its canonical form's upper bound is one past it).

CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE reading_runs (
    device_id text     NOT NULL,
    first_seq bigint   NOT NULL,
    last_seq  bigint   NOT NULL,
    ts_ms     bigint[] NOT NULL,
    CONSTRAINT reading_runs_pkey PRIMARY KEY (device_id, last_seq) INCLUDE (first_seq),
    CONSTRAINT reading_runs_shape
        CHECK (first_seq <= last_seq AND cardinality(ts_ms) = last_seq - first_seq + 1),
    CONSTRAINT reading_runs_disjoint
        EXCLUDE USING gist (device_id WITH =, numrange(first_seq, last_seq, '[]') WITH &&)
);

COMMENT ON TABLE reading_runs IS
    'runs of stored seqs per device, kept after their partitions are dropped: exactly once per (device_id, seq)';
COMMENT ON COLUMN reading_runs.ts_ms IS
    'each reading''s timestamp (Unix ms), seq first_seq + i at index i + 1';

INSERT INTO reading_runs (device_id, first_seq, last_seq, ts_ms)
SELECT device_id, min(seq), max(seq),
       array_agg((extract(epoch FROM ts) * 1000)::int8 ORDER BY seq)
FROM (
    SELECT device_id, seq, ts,
           seq - row_number() OVER w AS island,
           (row_number() OVER w - 1) / 4096 AS chunk
    FROM reading_keys
    WINDOW w AS (PARTITION BY device_id ORDER BY seq)
) k
GROUP BY device_id, island, chunk;

DROP TABLE reading_keys;

COMMENT ON TABLE readings IS 'partitioned by UTC day of ts; the key (device_id, seq) is kept by reading_runs';
COMMENT ON INDEX readings_device_ts IS
    'a device''s readings by time (API, rollups, collision check); unique keys are reading_runs''';
