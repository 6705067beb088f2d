-- Rollouts started over HTTP (issue 17): the rollout and each targeted
-- device's outcome, so a gateway that restarts resumes the rollout from
-- the stored stage and outcomes, and a finished rollout stays readable.
-- Additive: gateways from before it ignore these tables.
CREATE TABLE rollouts (
    id                bigint      PRIMARY KEY,
    version           text        NOT NULL,
    payload           jsonb       NOT NULL,
    stages            jsonb       NOT NULL,
    stage             integer     NOT NULL DEFAULT 0,
    state             text        NOT NULL
        CHECK (state IN ('running', 'halted', 'completed', 'cancelled')),
    halted_reason     text,
    started_by        text        NOT NULL,
    max_failures      integer     NOT NULL,
    device_timeout_ms bigint      NOT NULL,
    devices_total     integer     NOT NULL,
    confirmed         integer     NOT NULL DEFAULT 0,
    failed            integer     NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    finished_at       timestamptz,
    owner             text        NOT NULL,
    lease_until       timestamptz NOT NULL
);

-- What a gateway looks for at start and on each lease round.
CREATE INDEX rollouts_unfinished ON rollouts (lease_until) WHERE finished_at IS NULL;

CREATE TABLE rollout_devices (
    rollout_id bigint      NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    device_id  text        NOT NULL,
    stage      integer     NOT NULL,
    outcome    text        NOT NULL
        CHECK (outcome IN ('pending', 'sent', 'confirmed', 'failed')),
    detail     text,
    sent_at    timestamptz,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);

COMMENT ON TABLE rollouts IS 'staged agent updates started over HTTP; driven by the gateway named in owner while lease_until is ahead';
COMMENT ON COLUMN rollouts.id IS 'the command id the devices see in down/cmd and report in up/event';
COMMENT ON COLUMN rollouts.payload IS 'the update exactly as devices get it (format, url, manifest, signature)';
COMMENT ON COLUMN rollouts.stages IS 'device ids per stage, canary first: [["a"], ["b", "c"]]';
COMMENT ON COLUMN rollouts.stage IS 'index of the stage in progress (the last one reached once finished)';
COMMENT ON COLUMN rollouts.started_by IS 'name of the API token that started it';
COMMENT ON COLUMN rollouts.finished_at IS 'set once no device is in flight and nothing more will be sent; NULL while it runs';
COMMENT ON COLUMN rollout_devices.outcome IS 'pending (not sent), sent (offered, no outcome yet), confirmed (installed and kept), failed (detail: rolled back, refused, or no outcome within the timeout)';
COMMENT ON COLUMN rollout_devices.sent_at IS 'when the update was sent; the device''s timeout runs from here, across gateway restarts';
