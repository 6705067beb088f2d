-- Batches the database refused (a value it cannot store: SQLSTATE class 22
-- or 23). Each is set aside here with the bytes it arrived in and acked, so
-- its device moves on and no other batch waits behind it; an operator reads,
-- fixes and replays it. Append only for the gateway.
CREATE TABLE dead_letters (
    id         bigserial   PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    device_id  text        NOT NULL,
    first_seq  bigint      NOT NULL,
    last_seq   bigint      NOT NULL,
    reason     text        NOT NULL,
    payload    bytea       NOT NULL
);
CREATE INDEX dead_letters_device_at ON dead_letters (device_id, at);
