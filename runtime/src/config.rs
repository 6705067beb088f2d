//! The one config loader of the Aeris binaries: the struct's `Default`,
//! then a TOML file, then `AERIS_*` environment variables, `__` separating
//! levels (`AERIS_CLOUD__PORT=8883` sets `cloud.port`).
//!
//! Invariants:
//! - A file that is named must exist; its unknown keys are errors (the
//!   binaries' structs deny them), so a typo is named, not ignored.
//! - Only variables whose first level is a top-level field of the struct
//!   are read, the allow-list taken from the struct itself: `AERIS_` is
//!   shared by every Aeris program on a host, so another program's
//!   variables are none of this one's business.
//! - An error names the dotted key and where its value came from: the file,
//!   or the exact variable ([`describe_error`]).

use std::fmt;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::{DeserializeOwned, Deserializer, Visitor};
use serde::Serialize;

/// The prefix of every Aeris environment variable.
pub const ENV_PREFIX: &str = "AERIS_";

/// A configuration that could not be loaded or is invalid; the message
/// names the key and the file or variable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The process environment under [`ENV_PREFIX`].
pub fn env() -> Env {
    Env::prefixed(ENV_PREFIX)
}

/// Defaults, then `file` (if given; it must exist), then the variables of
/// `env` whose first level is one of `T`'s fields.
pub fn load<T>(file: Option<&Path>, env: Env) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned,
{
    load_layered(file, None, Some(env))
}

/// [`load`] with one more layer between the file and the environment:
/// `overlay`, a TOML document (the agent's remote configuration, issue
/// 18; errors name it "TOML source string"). Without `env`, no
/// variable is read.
pub fn load_layered<T>(
    file: Option<&Path>,
    overlay: Option<&str>,
    env: Option<Env>,
) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned,
{
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    if let Some(text) = overlay {
        fig = fig.merge(Toml::string(text));
    }
    let Some(env) = env else {
        return fig.extract().map_err(|e| ConfigError(describe_error(e)));
    };
    let known = field_names::<T>();
    let env = env.split("__").filter_map(move |k| {
        // Keys reach this filter before figment lower-cases them; lower
        // them here so errors name `cloud.port`, as in the file.
        let key = k.as_str().to_ascii_lowercase();
        let first = key.split('.').next().unwrap_or("");
        known.contains(&first).then(|| key.into())
    });
    fig.merge(env)
        .extract()
        .map_err(|e| ConfigError(describe_error(e)))
}

/// One line per problem: the dotted key, where the value came from, and what
/// is wrong.
pub fn describe_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = match &e.metadata {
                Some(m) if m.name.contains("environment") => format!(
                    "environment variable {ENV_PREFIX}{}",
                    e.path
                        .iter()
                        .map(|p| p.to_ascii_uppercase())
                        .collect::<Vec<_>>()
                        .join("__")
                ),
                Some(m) => m
                    .source
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| m.name.to_string()),
                None => "configuration".to_owned(),
            };
            if key.is_empty() {
                format!("{source}: {}", e.kind)
            } else {
                format!("`{key}` in {source}: {}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The top-level field names of a struct `T` as serde reads them (after
/// renames): its derived `Deserialize` hands them to `deserialize_struct`,
/// which this deserializer records and then stops. Empty for anything but
/// a struct.
pub fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

struct FieldNames<'a>(&'a mut &'static [&'static str]);

/// Ends the introspection; never shown to anyone.
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field names recorded")
    }
}

impl std::error::Error for Stop {}

impl serde::de::Error for Stop {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Stop
    }
}

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = fields;
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::io::Write;

    #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        name: String,
        #[serde(rename = "url")]
        database_url: Option<String>,
        inner: Inner,
    }

    #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        port: u16,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn the_allow_list_is_the_structs_fields_under_their_serde_names() {
        assert_eq!(field_names::<Sample>(), ["name", "url", "inner"]);
        assert!(field_names::<u32>().is_empty());
    }

    #[test]
    fn file_then_environment_with_nesting_and_foreign_variables_ignored() {
        let f = file("name = \"from-file\"\n[inner]\nport = 1\n");
        std::env::set_var("AERIS_RTCFG_A_INNER__PORT", "2");
        std::env::set_var("AERIS_RTCFG_A_URL", "postgres://x");
        std::env::set_var("AERIS_RTCFG_A_SOMEONE_ELSES", "ignored");
        let c: Sample = load(Some(f.path()), Env::prefixed("AERIS_RTCFG_A_")).unwrap();
        assert_eq!(c.name, "from-file");
        assert_eq!(c.inner.port, 2);
        assert_eq!(c.database_url.as_deref(), Some("postgres://x"));
    }

    #[test]
    fn errors_name_the_key_and_where_it_came_from() {
        let f = file("[inner]\nprot = 1\n");
        let e = load::<Sample>(Some(f.path()), Env::prefixed("AERIS_RTCFG_NONE_"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("prot") && e.contains(&f.path().display().to_string()),
            "{e}"
        );
        std::env::set_var("AERIS_RTCFG_B_INNER__PORT", "eighty");
        let e = load::<Sample>(None, Env::prefixed("AERIS_RTCFG_B_"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`inner.port`"), "{e}");
        assert!(e.contains("environment variable AERIS_INNER__PORT"), "{e}");
        let e = load::<Sample>(Some(Path::new("/nonexistent/x.toml")), env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }
}
