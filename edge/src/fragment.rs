//! The remote configuration layer (issue 18): a fragment of the agent's
//! config that the cloud sets, and where the agent keeps it.
//!
//! Invariants:
//! - A fragment names only the keys an operator may change remotely
//!   ([`ALLOWED`]): sensor positions, the ingest allow-list, the
//!   preprocess thresholds, windows, per-sensor corrections
//!   (`preprocess.corrections.<sensor>`) and unit references, the
//!   uplink's batch settings, the models' cadence, the status interval
//!   and the cloud link's keep-alive; never identities, keys, certificates, addresses or paths. Any other
//!   key refuses the whole fragment.
//! - Types and ranges are checked by the code that checks the file: the
//!   agent loads defaults → file → fragment → environment with the one
//!   loader and `Config::validate` (`config::Layers::check`), and over the
//!   defaults alone, so that a bad value the board's environment happens
//!   to override is refused too; a fragment that fails changes nothing.
//! - Precedence: file < remote < environment. The fragment overrides the
//!   file (the fleet's desired state beats what the image shipped), the
//!   environment overrides both (whoever sets `AERIS_*` on the board, a
//!   systemd drop-in or a test, decided for this one board).
//!
//! On disk, `<data_dir>/remote-config.toml` (data_dir, not beside the
//! file in /etc: the systemd unit makes everything but its state
//! directory read-only), replaced atomically (temporary file, fsync,
//! rename, fsync of the folder), format 1:
//!
//! ```toml
//! format = 1
//! version = 7            # the cloud's version of this fragment
//! [fragment]             # the keys as in the config file
//! sensors.s1 = { lat = 47.5, lon = 6.1 }
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

/// How a change of a key takes effect on a running agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// The stage named owns the key and reads it from a `watch` of its
    /// settings, per reading or tick: no restart, no reconnect.
    Live(&'static str),
    /// The stage named cannot take it while running (the value is part of
    /// a connection); the pipeline restarts in its usual order.
    Restart(&'static str),
}

/// The keys a fragment may set, as dotted paths, and how each applies; a
/// path covers everything under it (`sensors` covers `sensors.<id>.lat`),
/// and the longest path that covers a key decides. docs/operations.md
/// holds the same table for operators.
pub const ALLOWED: &[(&str, Apply)] = &[
    ("sensors", Apply::Live("ingest")),
    ("ingest.allow_list", Apply::Live("ingest")),
    ("preprocess", Apply::Live("ingest")),
    // The disk budget aggregates old readings into these windows.
    ("preprocess.window", Apply::Live("buffer")),
    ("preprocess.windows", Apply::Live("buffer")),
    ("infer.cadence", Apply::Live("ingest")),
    ("uplink.batch_max_readings", Apply::Live("uplink")),
    ("uplink.batch_max_age", Apply::Live("uplink")),
    ("cloud.status_interval", Apply::Live("uplink")),
    // Sent in CONNECT: only a new connection carries it.
    ("cloud.keep_alive", Apply::Restart("uplink")),
];

/// How a change of `key` (a dotted path) applies: the entry of the
/// longest [`ALLOWED`] path covering it; a key no entry covers cannot
/// change remotely, so a change of it (none should reach here) restarts.
pub fn apply_of(key: &str) -> Apply {
    ALLOWED
        .iter()
        .filter(|(path, _)| {
            key == *path
                || key
                    .strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
        .max_by_key(|(path, _)| path.len())
        .map_or(Apply::Restart("agent"), |(_, apply)| *apply)
}

fn allowed_paths() -> impl Iterator<Item = &'static str> {
    ALLOWED.iter().map(|(path, _)| *path)
}

/// The file's name inside `data_dir`.
pub const FILE_NAME: &str = "remote-config.toml";
const FORMAT: i64 = 1;

/// A fragment whose keys are all [`ALLOWED`], as TOML text.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    table: toml::Table,
    text: String,
}

impl Fragment {
    /// Parses `text` and checks its keys; the error names the first key
    /// that may not be set remotely.
    pub fn parse(text: &str) -> Result<Fragment, String> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| format!("not a TOML table: {e}"))?;
        Self::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<Fragment, String> {
        check_keys(&table, "")?;
        let text = toml::to_string(&table).map_err(|e| e.to_string())?;
        Ok(Fragment { table, text })
    }

    /// The fragment as a TOML document, for the config loader.
    pub fn text(&self) -> &str {
        &self.text
    }
}

fn check_keys(table: &toml::Table, prefix: &str) -> Result<(), String> {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        if allowed_paths().any(|a| a == path) {
            continue;
        }
        let inner = format!("{path}.");
        match value.as_table() {
            Some(t) if allowed_paths().any(|a| a.starts_with(&inner)) => check_keys(t, &inner)?,
            _ => {
                return Err(format!(
                    "`{path}` may not be set remotely (allowed: {})",
                    allowed_paths().collect::<Vec<_>>().join(", ")
                ))
            }
        }
    }
    Ok(())
}

/// A fragment the agent applied, with the cloud's version of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub version: u64,
    pub fragment: Fragment,
}

impl Stored {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// The stored fragment; `None` when there is none.
    pub fn read(data_dir: &Path) -> Result<Option<Stored>, String> {
        let path = Self::path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let bad = |why: String| format!("{}: {why}", path.display());
        let mut doc: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if doc.get("format").and_then(|f| f.as_integer()) != Some(FORMAT) {
            return Err(bad(format!("not format {FORMAT}")));
        }
        let version = doc
            .get("version")
            .and_then(|v| v.as_integer())
            .and_then(|v| u64::try_from(v).ok())
            .filter(|&v| v > 0)
            .ok_or_else(|| bad("no version".into()))?;
        let table = match doc.remove("fragment") {
            Some(toml::Value::Table(t)) => t,
            _ => return Err(bad("no [fragment]".into())),
        };
        let fragment = Fragment::from_table(table).map_err(bad)?;
        Ok(Some(Stored { version, fragment }))
    }

    /// Replaces the stored fragment atomically: a crash leaves the old
    /// file or the new one, never a mix.
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let mut doc = toml::Table::new();
        doc.insert("format".into(), toml::Value::Integer(FORMAT));
        let version = i64::try_from(self.version).map_err(std::io::Error::other)?;
        doc.insert("version".into(), toml::Value::Integer(version));
        doc.insert(
            "fragment".into(),
            toml::Value::Table(self.fragment.table.clone()),
        );
        let text = toml::to_string(&doc).map_err(std::io::Error::other)?;
        let path = Self::path(data_dir);
        let tmp = data_dir.join(format!("{FILE_NAME}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(
                b"# The cloud's desired configuration, written by aeris-edge; do not edit.\n",
            )?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_keys_pass() {
        let ok = "[sensors.s1]\nlat = 1.0\nlon = 2.0\n[preprocess]\nspike_ratio = 3.0\n\
                  [uplink]\nbatch_max_age = \"2s\"\n[infer.cadence]\npm25_nowcast = \"30m\"\n";
        assert!(Fragment::parse(ok).is_ok());
        for (bad, key) in [
            ("device_id = \"other\"\n", "device_id"),
            ("[cloud]\nhost = \"evil\"\n", "cloud.host"),
            ("[cloud.tls]\nca_file = \"/x\"\n", "cloud.tls"),
            ("[uplink]\nack_timeout = \"1s\"\n", "uplink.ack_timeout"),
            ("ingest = 3\n", "ingest"),
            ("data_dir = \"/tmp\"\n", "data_dir"),
        ] {
            let e = Fragment::parse(bad).unwrap_err();
            assert!(e.contains(&format!("`{key}`")), "{bad}: {e}");
        }
        assert!(Fragment::parse("not toml [").is_err());
    }

    #[test]
    fn the_longest_path_decides_how_a_key_applies() {
        assert_eq!(apply_of("sensors.s1.lat"), Apply::Live("ingest"));
        assert_eq!(apply_of("preprocess.spike_ratio"), Apply::Live("ingest"));
        assert_eq!(apply_of("preprocess.windows.s1"), Apply::Live("buffer"));
        assert_eq!(apply_of("preprocess.window"), Apply::Live("buffer"));
        // Not a prefix at a dot: `preprocess.windowing` is no window key.
        assert_eq!(apply_of("preprocess.windowing"), Apply::Live("ingest"));
        assert_eq!(apply_of("cloud.keep_alive"), Apply::Restart("uplink"));
        assert_eq!(apply_of("cloud.host"), Apply::Restart("agent"));
        assert_eq!(apply_of("sensorsx"), Apply::Restart("agent"));
    }

    #[test]
    fn stored_fragment_reads_back_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Stored::read(dir.path()), Ok(None));
        let first = Stored {
            version: 3,
            fragment: Fragment::parse("[sensors.s1]\nlat = 1.0\nlon = 2.0\n").unwrap(),
        };
        first.write(dir.path()).unwrap();
        assert_eq!(Stored::read(dir.path()), Ok(Some(first)));
        let second = Stored {
            version: 4,
            fragment: Fragment::parse("[ingest]\nallow_list = [\"a\"]\n").unwrap(),
        };
        second.write(dir.path()).unwrap();
        assert_eq!(Stored::read(dir.path()), Ok(Some(second)));
        assert!(!dir.path().join("remote-config.toml.tmp").exists());
        std::fs::write(Stored::path(dir.path()), "format = 1\nversion = 2\n").unwrap();
        assert!(Stored::read(dir.path()).is_err());
    }
}
