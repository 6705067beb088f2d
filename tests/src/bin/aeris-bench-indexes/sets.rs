//! The index sets of `readings` the benchmark compares, as SQL that builds
//! each from a `readings` without any index ([`DROP_ALL`] first).

/// Removes every index of `readings` either set has (on the parent, so on
/// every partition).
pub const DROP_ALL: &str = "
ALTER TABLE readings DROP CONSTRAINT IF EXISTS readings_pkey;
DROP INDEX IF EXISTS readings_geom_gist, readings_ts_brin, readings_sensor_ts,
                     readings_device_ts, readings_device_sensor_ts";

/// Migration 0006's set (0001's, kept through the conversion).
pub const SET_0006: &str = "
ALTER TABLE readings ADD PRIMARY KEY (device_id, seq, ts);
CREATE INDEX readings_geom_gist ON readings USING gist (geom);
CREATE INDEX readings_ts_brin ON readings USING brin (ts);
CREATE INDEX readings_sensor_ts ON readings (sensor_id, ts)";

/// Migration 0011's set.
pub const SET_0011: &str = "
CREATE INDEX readings_device_ts ON readings (device_id, ts, sensor_id);
CREATE INDEX readings_ts_brin ON readings USING brin (ts)";

/// Index names (or the primary key's) of each set, for hiding the other
/// set's in a transaction.
pub const NAMES_0006: [&str; 4] = [
    "readings_pkey",
    "readings_geom_gist",
    "readings_ts_brin",
    "readings_sensor_ts",
];
pub const NAMES_0011: [&str; 2] = ["readings_device_ts", "readings_ts_brin"];

/// One index set of the write study: its name and the SQL building it.
pub struct IndexSet {
    pub name: &'static str,
    pub sql: &'static str,
}

pub const WRITE_SETS: &[IndexSet] = &[
    IndexSet {
        name: "0006: pkey+gist+brin+(sensor,ts)",
        sql: SET_0006,
    },
    IndexSet {
        name: "pkey+brin+(sensor,ts), no gist",
        sql: "ALTER TABLE readings ADD PRIMARY KEY (device_id, seq, ts);
              CREATE INDEX readings_ts_brin ON readings USING brin (ts);
              CREATE INDEX readings_sensor_ts ON readings (sensor_id, ts)",
    },
    IndexSet {
        name: "pkey+(sensor,ts)",
        sql: "ALTER TABLE readings ADD PRIMARY KEY (device_id, seq, ts);
              CREATE INDEX readings_sensor_ts ON readings (sensor_id, ts)",
    },
    IndexSet {
        name: "pkey+(device,sensor,ts)",
        sql: "ALTER TABLE readings ADD PRIMARY KEY (device_id, seq, ts);
              CREATE INDEX readings_device_sensor_ts ON readings (device_id, sensor_id, ts)",
    },
    IndexSet {
        name: "0011: (device,ts,sensor)+brin",
        sql: SET_0011,
    },
    IndexSet {
        name: "(device,ts,sensor)",
        sql: "CREATE INDEX readings_device_ts ON readings (device_id, ts, sensor_id)",
    },
    IndexSet {
        name: "gist only",
        sql: "CREATE INDEX readings_geom_gist ON readings USING gist (geom)",
    },
    IndexSet {
        name: "none",
        sql: "",
    },
];
