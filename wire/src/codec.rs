//! Framing shared by every message.
//!
//! Layout, format version 1:
//!
//! ```text
//! byte 0      format version (FORMAT_VERSION = 1)
//! bytes 1..   postcard encoding of the message struct (varint integers,
//!             length-prefixed strings and sequences, IEEE-754 little-endian floats)
//! ```
//!
//! Invariants: `decode` never panics on any input; it rejects an empty payload,
//! an unknown version, a body postcard cannot read, bytes left over after the
//! body, and a message that fails [`WireMessage::validate`]. A change of any
//! message layout bumps [`FORMAT_VERSION`].
//!
//! Version 2 exists only for [`crate::Batch`]: the columnar layout of
//! [`crate::columnar`], which the edge sends by default. `decode::<Batch>`
//! reads versions 1 and 2; every other message is version 1 only.

use serde::{de::DeserializeOwned, Serialize};

/// The format version this build writes and the only one it reads.
pub const FORMAT_VERSION: u8 = 1;

/// Why a payload could not be decoded. [`WireError::reason`] gives a stable
/// label for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty payload")]
    Empty,
    #[error("unsupported format version {found} (this build speaks version {expected})")]
    UnsupportedVersion { found: u8, expected: u8 },
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    #[error("invalid message: {0}")]
    Invalid(String),
    /// A timestamp outside `0..=MAX_TS_MS` (years 1970 to 9999).
    #[error("timestamp {0} ms is outside 1970-01-01..=9999-12-31")]
    Timestamp(i64),
    /// A name or text with a control character (NUL, which PostgreSQL
    /// refuses in text and JSONB, or any other).
    #[error("bad text: {0}")]
    Text(String),
    /// The message would decode into more memory than a message of its
    /// kind may take (a small compressed batch naming long quantities in
    /// every value); refused before it is built.
    #[error("message would decode into {decoded} bytes, more than the {max} allowed")]
    TooLarge { decoded: u64, max: u64 },
}

impl WireError {
    /// A short, stable label for this error, used as a metric label value.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::Empty => "empty",
            WireError::UnsupportedVersion { .. } => "unsupported_version",
            WireError::Malformed(_) => "malformed",
            WireError::TrailingBytes(_) => "trailing_bytes",
            WireError::Invalid(_) => "invalid",
            WireError::Timestamp(_) => "bad_timestamp",
            WireError::Text(_) => "bad_text",
            WireError::TooLarge { .. } => "too_large",
        }
    }
}

/// A message that can travel on the wire.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// Checks the invariants postcard cannot express (ranges, lengths, ids).
    fn validate(&self) -> Result<(), WireError>;

    /// Decodes a body framed with a format version other than
    /// [`FORMAT_VERSION`], for a message that has another layout; `None`
    /// when `version` is not one of this message's.
    fn decode_other_version(version: u8, body: &[u8]) -> Option<Result<Self, WireError>> {
        let _ = (version, body);
        None
    }
}

/// Encodes `msg` as `[FORMAT_VERSION][postcard body]`.
pub fn encode<T: WireMessage>(msg: &T) -> Vec<u8> {
    let out = vec![FORMAT_VERSION];
    // Serialising into a Vec cannot fail for these types: every field is a
    // plain integer, float, string, byte vector, option or sequence.
    match postcard::to_extend(msg, out) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard cannot fail on aeris-wire types: {e}"),
    }
}

/// Decodes and validates one message; never panics.
pub fn decode<T: WireMessage>(bytes: &[u8]) -> Result<T, WireError> {
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != FORMAT_VERSION {
        let msg =
            T::decode_other_version(version, body).ok_or(WireError::UnsupportedVersion {
                found: version,
                expected: FORMAT_VERSION,
            })??;
        msg.validate()?;
        return Ok(msg);
    }
    let (msg, rest): (T, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    msg.validate()?;
    Ok(msg)
}
