-- Seq collisions: readings a device sent under a (device_id, seq) that the
-- database holds for another reading (its buffer was lost, replaced or
-- restored from an old image, so it numbered new readings again from an old
-- seq). They are not stored and not acked; the gateway asks the device to
-- renumber them. Counted per device for /api/devices. A device known only
-- from its collisions gets a row with an empty status at the epoch, which its
-- first real status replaces (the status upsert leaves these columns alone).
ALTER TABLE devices
    ADD COLUMN seq_collisions     bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_seq_collision timestamptz;

COMMENT ON COLUMN devices.seq_collisions IS 'readings refused because their seq held another reading';
