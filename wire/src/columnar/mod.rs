//! The compact batch encoding, format version 2: a columnar, delta-coded
//! layout of a [`Batch`], zstd-compressed when that makes it smaller.
//!
//! Invariants: lossless — `decode(encode(b)) == b` bit for bit, every `f64`
//! included; decoding never panics, never allocates more than the input can
//! justify (every counted item costs at least one input byte, the body is
//! capped at [`MAX_BODY_BYTES`], and the batch it builds at
//! [`MAX_DECODED_BYTES`], checked from the dictionaries before a single
//! reading is built), and returns only batches that pass [`Batch`]'s
//! validation. Version 1 (postcard) batches stay decodable:
//! [`crate::decode::<Batch>`] reads both.
//!
//! Layout (`uv` = unsigned LEB128 varint, `sv` = zigzag then `uv`, `str` =
//! `uv` length then UTF-8 bytes, `f64` = 8 bytes little-endian IEEE-754 bits):
//!
//! ```text
//! byte 0        format version 2 (COLUMNAR_VERSION)
//! byte 1        body codec: 0 = plain, 1 = one zstd frame holding the body
//! bytes 2..     body:
//!   device      str
//!   first_seq   uv
//!   n           uv                       readings, 1..=10,000
//!   sensors     uv count, count × str    dictionary of sensor ids
//!   quantities  uv count, count × str    dictionary of quantity names
//!   shapes      uv count, count × (uv len, len × uv quantity index)
//!                                        distinct ordered quantity lists
//!   sensor      n × uv                   each reading's sensor index
//!   shape       n × uv                   each reading's shape index
//!   flags       uv runs, runs × (uv run length, uv flags)
//!   ts_ms       n × sv                   per sensor: the first reading of a
//!                                        sensor is a delta to the previous
//!                                        reading's ts (the first to 0), the
//!                                        second a delta to the sensor's
//!                                        previous ts, later ones the delta
//!                                        of deltas (wrapping i64 arithmetic)
//!   positions   uv count, count × (uv index gap, f64 lat, f64 lon)
//!                                        a reading takes its sensor's last
//!                                        position; a change is listed where
//!                                        it happens (index gap from the
//!                                        previous change, the first from 0),
//!                                        and at every sensor's first reading
//!   values      one column per (sensor, quantity), in order of first
//!               appearance; each: mode byte, then the column's values in
//!               reading order:
//!                 mode 0..=18  decimal scale k: value = m / 10^k with m an
//!                              i64; the first m as sv, then sv deltas
//!                 mode 255     raw: f64 each
//! ```
//!
//! A column uses the smallest scale `k <= 9` at which every value
//! round-trips exactly through `m as f64 / 10^k` (checked bit for bit when
//! encoding), so readings that came in as short decimals (PM2.5 to
//! 0.1 µg/m³) cost a byte or two per value; anything else travels raw.

mod builder;
mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub use builder::Builder;

use crate::codec::WireError;
use crate::message::{Batch, Reading, Value};

/// The format version byte of this encoding.
pub const COLUMNAR_VERSION: u8 = 2;
/// Largest decoded body accepted, so a tiny zstd frame cannot make the
/// decoder commit unbounded memory.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// Largest decoded batch accepted, as counted by [`decoded_bytes`].
///
/// The dictionaries let a few hundred compressed bytes name 10,000
/// readings x 64 values with 128-byte quantity names, and a decoded
/// [`Value`] owns a copy of its name: about 110 MB from 400 bytes. A real
/// batch is far below this (10,000 readings of 7 values with short names,
/// about 4 MB; the edge's default 2,000 readings, under 1 MB); a batch
/// above it is refused as [`WireError::TooLarge`] before it is built.
pub const MAX_DECODED_BYTES: usize = 16 << 20;

/// Below this many (sensor, quantity) keys, columns are found by table.
const DENSE_COLUMN_KEYS: usize = 1 << 16;

const CODEC_PLAIN: u8 = 0;
const CODEC_ZSTD: u8 = 1;
const MODE_RAW: u8 = 255;
/// Largest scale the encoder tries; the decoder accepts up to 18.
const MAX_ENCODE_SCALE: u8 = 9;
const MAX_DECODE_SCALE: u8 = 18;
/// zstd level: most of the gain is the layout. Level 1 gave the same 2.7
/// bytes per reading as level 3 in aeris-bench-edge, with a compression
/// context of tens of kilobytes instead of about 500 KB.
const ZSTD_LEVEL: i32 = 1;

const POW10: [f64; 19] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18,
];

/// Encodes `batch` in the columnar layout; the body is zstd-compressed when
/// that is smaller. The batch should be valid (the edge only sends valid
/// batches); an invalid one still round-trips but is refused on decoding.
pub fn encode(batch: &Batch) -> Vec<u8> {
    let mut b = Builder::new();
    for r in &batch.readings {
        let values = r.values.iter().map(|v| (v.quantity.as_str(), v.value));
        b.push_unchecked(&r.sensor, r.ts_ms, (r.lat, r.lon), r.flags, values);
    }
    compress(encode::body(&b, &batch.device, batch.first_seq, b.len()))
}

/// The version byte, the codec byte and `body`, zstd-compressed when that
/// is smaller.
fn compress(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() / 2 + 8);
    out.push(COLUMNAR_VERSION);
    match zstd::bulk::compress(&body, ZSTD_LEVEL) {
        Ok(z) if z.len() < body.len() => {
            out.push(CODEC_ZSTD);
            out.extend_from_slice(&z);
        }
        // Compression failing (out of memory) only costs size.
        _ => {
            out.push(CODEC_PLAIN);
            out.extend_from_slice(&body);
        }
    }
    out
}

/// The memory a decoded batch takes, as the decoder bounds it: the structs
/// of the batch, its readings and values, and the bytes of every string
/// each owns (allocator overhead aside). Counts the same for a batch from
/// either format version.
pub fn decoded_bytes(batch: &Batch) -> usize {
    let strings = |r: &Reading| {
        r.values
            .iter()
            .map(|v| VALUE_BYTES + v.quantity.len())
            .fold(READING_BYTES + r.sensor.len(), usize::saturating_add)
    };
    batch
        .readings
        .iter()
        .map(strings)
        .fold(BATCH_BYTES + batch.device.len(), usize::saturating_add)
}

const BATCH_BYTES: usize = std::mem::size_of::<Batch>();
const READING_BYTES: usize = std::mem::size_of::<Reading>();
const VALUE_BYTES: usize = std::mem::size_of::<Value>();

/// Decodes what follows the version byte of a version-2 batch.
pub(crate) fn decode_body(payload: &[u8]) -> Result<Batch, WireError> {
    let (&codec, rest) = payload
        .split_first()
        .ok_or_else(|| malformed("missing body codec"))?;
    match codec {
        CODEC_PLAIN => decode::parse(rest),
        CODEC_ZSTD => decode::parse(&decompress(rest)?),
        c => Err(malformed(format!("unknown body codec {c}"))),
    }
}

fn decompress(frame: &[u8]) -> Result<Vec<u8>, WireError> {
    use std::io::Read;
    let decoder = zstd::stream::read::Decoder::with_buffer(frame)
        .map_err(|e| malformed(format!("zstd: {e}")))?;
    let mut out = Vec::new();
    decoder
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| malformed(format!("zstd: {e}")))?;
    if out.len() > MAX_BODY_BYTES {
        return Err(malformed(format!(
            "body larger than {MAX_BODY_BYTES} bytes"
        )));
    }
    Ok(out)
}

fn malformed(msg: impl Into<String>) -> WireError {
    WireError::Malformed(msg.into())
}

/// The dictionaries of a batch and each reading's indexes into them, as
/// the body lists them; the encoder borrows the names, the decoder owns
/// them.
struct Dictionaries<S> {
    sensors: Vec<S>,
    quantities: Vec<S>,
    /// Distinct ordered lists of quantity indexes.
    shapes: Vec<Vec<usize>>,
    sensor_of: Vec<usize>,
    shape_of: Vec<usize>,
}

impl<S> Dictionaries<S> {
    /// The order in which values are grouped into columns: by (sensor,
    /// quantity), columns in order of first appearance. Returns, for each
    /// reading's value slot, its column index, and the column count. Shared
    /// by both directions so they agree by construction.
    fn column_slots(&self) -> (Vec<usize>, usize) {
        let n_quantities = self.quantities.len();
        let keys = || {
            self.sensor_of
                .iter()
                .zip(&self.shape_of)
                .flat_map(move |(&s, &shape)| {
                    let qs = self.shapes.get(shape).map_or(&[][..], Vec::as_slice);
                    qs.iter().map(move |&q| s * n_quantities + q)
                })
        };
        let mut slots = Vec::with_capacity(self.sensor_of.len() * 8);
        let mut count = 0;
        // A table indexed by (sensor, quantity) when the dictionaries are
        // small (every real batch), a map otherwise.
        match keys().max() {
            Some(max) if max < DENSE_COLUMN_KEYS => {
                let mut index = vec![usize::MAX; max + 1];
                for key in keys() {
                    if index[key] == usize::MAX {
                        index[key] = count;
                        count += 1;
                    }
                    slots.push(index[key]);
                }
            }
            _ => {
                let mut index = std::collections::HashMap::new();
                for key in keys() {
                    slots.push(*index.entry(key).or_insert_with(|| {
                        count += 1;
                        count - 1
                    }));
                }
            }
        }
        (slots, count)
    }
}

/// Per-sensor timestamp predictor shared by both directions: returns the
/// value to code for `ts` (encoding) given the sensor's history.
#[derive(Clone, Copy, Default)]
struct TsState {
    last: Option<i64>,
    delta: Option<i64>,
}

impl TsState {
    fn predict(&self, prev_any: i64) -> i64 {
        match (self.last, self.delta) {
            (None, _) => prev_any,
            (Some(last), None) => last,
            (Some(last), Some(d)) => last.wrapping_add(d),
        }
    }
    fn update(&mut self, ts: i64) {
        if let Some(last) = self.last {
            self.delta = Some(ts.wrapping_sub(last));
        }
        self.last = Some(ts);
    }
}
