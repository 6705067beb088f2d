-- The rest of what a device's status says (issue 17): the models it runs
-- with their versions, and how long its queue takes to drain. `boot_id`
-- and `losses` (by reason) are stored since 0002. Rows written before this
-- migration read as no models and no estimate until the device's next
-- status, which every agent publishes at start and on its heartbeat.
ALTER TABLE devices
    ADD COLUMN models      jsonb  NOT NULL DEFAULT '{}',
    ADD COLUMN drain_eta_s bigint;

COMMENT ON COLUMN devices.models IS 'active models as the last status named them: {"<name>": "<version>"}';
COMMENT ON COLUMN devices.drain_eta_s IS 'seconds until the device''s queue is empty at its net drain rate; NULL while it is not shrinking';
COMMENT ON COLUMN devices.oldest_unsent IS 'timestamp of the oldest reading the device holds unacked (its data debt''s age); NULL when none';
