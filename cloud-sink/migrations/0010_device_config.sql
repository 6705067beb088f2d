-- Fleet configuration as desired and reported state (issue 18).
--
-- `config_desired`: every fragment an operator set, per device or per
-- group, never updated or deleted (the history). The newest row of a
-- scope is its desired fragment. Versions come from one sequence for the
-- whole fleet, so the version of a device's effective configuration (its
-- groups' fragments merged under its own) is the highest version among
-- them, and any change to any of them raises it. `devices` restricts a
-- row to some devices of its scope while a staged change (canary first)
-- is under way; NULL = every device of the scope.
CREATE SEQUENCE config_version_seq;

CREATE TABLE config_desired (
    scope    text        NOT NULL CHECK (scope IN ('device', 'group')),
    name     text        NOT NULL,
    version  bigint      NOT NULL UNIQUE DEFAULT nextval('config_version_seq'),
    fragment jsonb       NOT NULL,
    set_by   text        NOT NULL,
    set_at   timestamptz NOT NULL DEFAULT now(),
    devices  text[],
    PRIMARY KEY (scope, name, version)
);

-- What each device last reported on `up/config` (retained there, so a
-- restarted gateway learns it again): its groups, the version it runs
-- (0 = none), the last version it refused and why.
CREATE TABLE config_reported (
    device_id       text        PRIMARY KEY,
    groups          text[]      NOT NULL DEFAULT '{}',
    applied         bigint      NOT NULL DEFAULT 0,
    refused_version bigint,
    refused_reason  text,
    reported_at     timestamptz NOT NULL
);
