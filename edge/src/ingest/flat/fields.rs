//! A sensor payload read straight into what ingest looks at, without a
//! `serde_json::Value` tree: a flat object's keys borrowed from the
//! payload (owned only where they hold escapes) and its values as the few
//! kinds a flat message may carry. The same parser and limits as
//! `serde_json::from_slice`, so a payload is JSON here exactly when it is
//! JSON there, and the same object semantics: keys in byte order, and of
//! a key given twice the last value counts.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;

/// A value in a flat object.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Number(f64),
    Str(Cow<'a, str>),
    /// A boolean, an array or an object: never a valid field value.
    Other,
}

impl<'a> Scalar<'a> {
    /// The same value of a parsed `serde_json::Value` (SenML records).
    pub fn of_json(v: &'a Json) -> Self {
        match v {
            Json::Null => Scalar::Null,
            Json::Number(n) => n.as_f64().map_or(Scalar::Other, Scalar::Number),
            Json::String(s) => Scalar::Str(Cow::Borrowed(s)),
            _ => Scalar::Other,
        }
    }
}

/// A flat object's fields, sorted by key, each key once.
#[derive(Debug, Default)]
pub struct Fields<'a> {
    entries: Vec<(Cow<'a, str>, Scalar<'a>)>,
}

impl<'a> Fields<'a> {
    pub fn get(&self, key: &str) -> Option<&Scalar<'a>> {
        self.entries
            .binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()
            .map(|i| &self.entries[i].1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Scalar<'a>)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v))
    }
}

/// A whole sensor payload.
#[derive(Debug)]
pub enum Payload<'a> {
    /// A flat message.
    Object(Fields<'a>),
    /// A SenML pack, its records as JSON values.
    Array(Vec<Json>),
    /// Any other JSON value.
    Other,
}

impl<'a> Payload<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

impl<'de> Deserialize<'de> for Payload<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PayloadVisitor)
    }
}

struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = Payload<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        while let Some(Key(k)) = map.next_key()? {
            entries.push((k, map.next_value::<Scalar<'de>>()?));
        }
        // Last one wins among equal keys: reversed, a stable sort puts it
        // first, and dedup keeps the first.
        entries.reverse();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, kept| later.0 == kept.0);
        Ok(Payload::Object(Fields { entries }))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut records = Vec::new();
        while let Some(r) = seq.next_element()? {
            records.push(r);
        }
        Ok(Payload::Array(records))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Payload::Other)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Payload::Other)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Payload::Other)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Payload::Other)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Payload::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Payload::Other)
    }
}

/// An object key, borrowed when the payload holds it without escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Borrowed(s)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Key(Cow::Owned(s)))
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(s)))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `serde_json::Value` makes of the same payload, as fields.
    fn via_value(payload: &[u8]) -> Option<Vec<(String, Scalar<'static>)>> {
        match serde_json::from_slice::<Json>(payload) {
            Ok(Json::Object(map)) => Some(
                map.iter()
                    .map(|(k, v)| {
                        let s = match Scalar::of_json(v) {
                            Scalar::Str(s) => Scalar::Str(Cow::Owned(s.into_owned())),
                            Scalar::Null => Scalar::Null,
                            Scalar::Number(n) => Scalar::Number(n),
                            Scalar::Other => Scalar::Other,
                        };
                        (k.clone(), s)
                    })
                    .collect(),
            ),
            _ => None,
        }
    }

    fn fields(payload: &[u8]) -> Option<Vec<(String, Scalar<'static>)>> {
        match Payload::parse(payload) {
            Ok(Payload::Object(f)) => Some(
                f.iter()
                    .map(|(k, v)| {
                        let s = match v {
                            Scalar::Str(s) => Scalar::Str(Cow::Owned(s.to_string())),
                            Scalar::Null => Scalar::Null,
                            Scalar::Number(n) => Scalar::Number(*n),
                            Scalar::Other => Scalar::Other,
                        };
                        (k.to_owned(), s)
                    })
                    .collect(),
            ),
            _ => None,
        }
    }

    #[test]
    fn an_object_reads_as_the_json_value_tree_reads_it() {
        let cases: &[&[u8]] = &[
            br#"{"ts":1699999999.5,"PM2.5":12.5,"rh":40,"lat":52.5,"lon":13.4}"#,
            br#"{"pm25":1,"pm25":2,"a":3,"pm25":4}"#,
            br#"{"p\u006d25":1,"pm25":2,"x\"y":"q\n"}"#,
            br#"{"ts":null,"flag":true,"arr":[1,[2,{"a":3}]],"obj":{"k":[null]},"n":-7}"#,
            br#"{"big":18446744073709551615,"neg":-9223372036854775808,"e":1.5e300}"#,
            br#"{}"#,
            b" { \"b\" : 1 , \"a\" : \"\" } ",
        ];
        for c in cases {
            assert_eq!(fields(c), via_value(c), "{}", String::from_utf8_lossy(c));
        }
    }

    /// A JSON value as text: what sensors send, and what they should not.
    fn value_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<u64>().prop_map(|v| v.to_string()),
            (-1e6..1e6f64).prop_map(|v| format!("{v}")),
            any::<f64>().prop_map(|v| format!("{v:e}")),
            "[a-z0-9 .:-]{0,12}".prop_map(|v| format!("{v:?}")),
            Just("\"a\\u00e9\\n\"".to_owned()),
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("[1,[2,{\"k\":null}]]".to_owned()),
            Just("{\"ts\":1,\"x\":[]}".to_owned()),
            Just("1e400".to_owned()),
        ]
    }

    proptest::proptest! {
        /// Random objects (keys repeated, escaped, in any order; values of
        /// every kind, some not JSON at all) read as the `Value` tree reads
        /// them, and fail to parse exactly when it fails.
        #[test]
        fn random_objects_read_as_the_json_value_tree_reads_them(
            fields_text in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        proptest::strategy::Just("ts".to_owned()),
                        proptest::strategy::Just("pm25".to_owned()),
                        proptest::strategy::Just("p\\u006d25".to_owned()),
                        proptest::strategy::Just("lat".to_owned()),
                        "[a-zA-Z0-9_.]{1,6}",
                    ],
                    value_text(),
                ),
                0..12,
            )
        ) {
            let body: Vec<String> = fields_text
                .iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            let payload = format!("{{{}}}", body.join(","));
            let ours = Payload::parse(payload.as_bytes()).map_err(|e| e.to_string());
            let theirs = serde_json::from_slice::<Json>(payload.as_bytes()).map_err(|e| e.to_string());
            match (ours, theirs) {
                (Ok(_), Ok(_)) => {
                    proptest::prop_assert_eq!(fields(payload.as_bytes()), via_value(payload.as_bytes()))
                }
                (Err(a), Err(b)) => proptest::prop_assert_eq!(a, b),
                (a, b) => proptest::prop_assert!(false, "{payload}: ours {a:?}, serde_json {b:?}"),
            }
        }
    }

    #[test]
    fn non_objects_and_broken_json_are_told_apart() {
        assert!(
            matches!(Payload::parse(b"[{\"n\":\"pm25\",\"v\":1}]"), Ok(Payload::Array(r)) if r.len() == 1)
        );
        for other in [&b"1"[..], b"\"s\"", b"null", b"true", b"-2.5"] {
            assert!(matches!(Payload::parse(other), Ok(Payload::Other)));
        }
        for broken in [
            &b"not json"[..],
            b"{\"a\":1",
            b"{\"a\":1}}",
            b"{\"a\":NaN}",
            b"{\"a\":1e400}",
            b"{\"a\":[1,}",
            b"",
        ] {
            let ours = Payload::parse(broken).map(|_| ()).unwrap_err().to_string();
            let theirs = serde_json::from_slice::<Json>(broken)
                .unwrap_err()
                .to_string();
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(broken));
        }
    }

    #[test]
    fn deep_nesting_never_recurses_and_is_no_field_value() {
        // Nested values inside a field are skipped without recursion, so
        // even 100,000 levels cost no stack; the field is no number.
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let Ok(Payload::Object(f)) = Payload::parse(deep.as_bytes()) else {
            panic!("an object with one field");
        };
        assert_eq!(f.get("a"), Some(&Scalar::Other));
        // Unbalanced, it is no JSON at all.
        let broken = format!("{{\"a\":{}1}}", "[".repeat(1000));
        assert!(Payload::parse(broken.as_bytes()).is_err());
        // A pack of records keeps serde_json's own depth limit.
        let deep_pack = format!("[{}1{}]", "[".repeat(200), "]".repeat(200));
        assert!(Payload::parse(deep_pack.as_bytes()).is_err());
    }
}
