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

use crate::codec::WireError;
use crate::message::MAX_VALUES_PER_READING;
use crate::message::{Batch, Reading, Value, MAX_BATCH_READINGS, MAX_NAME_LEN};

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
    let body = body(batch);
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

/// [`decoded_bytes`] of the batch the dictionaries describe, computed
/// before it is built; `Err` once it passes [`MAX_DECODED_BYTES`].
fn check_decoded_size(
    device: &str,
    sensors: &[String],
    quantities: &[String],
    shapes: &[Vec<usize>],
    sensor_of: &[usize],
    shape_of: &[usize],
) -> Result<(), WireError> {
    let shape_bytes: Vec<u64> = shapes
        .iter()
        .map(|s| {
            s.iter()
                .map(|&q| (VALUE_BYTES + quantities[q].len()) as u64)
                .sum()
        })
        .collect();
    let mut total = (BATCH_BYTES + device.len()) as u64;
    for (&s, &shape) in sensor_of.iter().zip(shape_of) {
        total += (READING_BYTES + sensors[s].len()) as u64 + shape_bytes[shape];
    }
    if total > MAX_DECODED_BYTES as u64 {
        return Err(WireError::TooLarge {
            decoded: total,
            max: MAX_DECODED_BYTES as u64,
        });
    }
    Ok(())
}

/// Decodes what follows the version byte of a version-2 batch.
pub(crate) fn decode_body(payload: &[u8]) -> Result<Batch, WireError> {
    let (&codec, rest) = payload
        .split_first()
        .ok_or_else(|| malformed("missing body codec"))?;
    match codec {
        CODEC_PLAIN => parse(rest),
        CODEC_ZSTD => parse(&decompress(rest)?),
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

// ---- writing ----

fn put_uv(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn put_sv(out: &mut Vec<u8>, v: i64) {
    put_uv(out, zigzag(v));
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uv(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Index of `key` in `dict`, adding it if new.
fn intern<T: PartialEq + Clone>(dict: &mut Vec<T>, key: &T) -> usize {
    match dict.iter().position(|k| k == key) {
        Some(i) => i,
        None => {
            dict.push(key.clone());
            dict.len() - 1
        }
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

fn body(b: &Batch) -> Vec<u8> {
    let n = b.readings.len();
    let mut sensors: Vec<&str> = Vec::new();
    let mut quantities: Vec<&str> = Vec::new();
    let mut shapes: Vec<Vec<usize>> = Vec::new();
    let mut sensor_of = Vec::with_capacity(n);
    let mut shape_of = Vec::with_capacity(n);
    for r in &b.readings {
        sensor_of.push(intern(&mut sensors, &r.sensor.as_str()));
        let shape: Vec<usize> = r
            .values
            .iter()
            .map(|v| intern(&mut quantities, &v.quantity.as_str()))
            .collect();
        shape_of.push(intern(&mut shapes, &shape));
    }
    let mut out = Vec::with_capacity(64 + n * 12);
    put_str(&mut out, &b.device);
    put_uv(&mut out, b.first_seq);
    put_uv(&mut out, n as u64);
    for dict in [&sensors, &quantities] {
        put_uv(&mut out, dict.len() as u64);
        dict.iter().for_each(|s| put_str(&mut out, s));
    }
    put_uv(&mut out, shapes.len() as u64);
    for s in &shapes {
        put_uv(&mut out, s.len() as u64);
        s.iter().for_each(|&q| put_uv(&mut out, q as u64));
    }
    sensor_of.iter().for_each(|&s| put_uv(&mut out, s as u64));
    shape_of.iter().for_each(|&s| put_uv(&mut out, s as u64));

    let runs = runs(b.readings.iter().map(|r| r.flags));
    put_uv(&mut out, runs.len() as u64);
    for (len, flags) in runs {
        put_uv(&mut out, len);
        put_uv(&mut out, u64::from(flags));
    }

    let mut ts_state = vec![TsState::default(); sensors.len()];
    let mut prev_any = 0i64;
    for (r, &s) in b.readings.iter().zip(&sensor_of) {
        put_sv(
            &mut out,
            r.ts_ms.wrapping_sub(ts_state[s].predict(prev_any)),
        );
        ts_state[s].update(r.ts_ms);
        prev_any = r.ts_ms;
    }

    let mut pos: Vec<Option<(u64, u64)>> = vec![None; sensors.len()];
    let mut changes = Vec::new();
    for (i, (r, &s)) in b.readings.iter().zip(&sensor_of).enumerate() {
        let p = (r.lat.to_bits(), r.lon.to_bits());
        if pos[s] != Some(p) {
            pos[s] = Some(p);
            changes.push((i, p));
        }
    }
    put_uv(&mut out, changes.len() as u64);
    let mut at = 0;
    for (i, (lat, lon)) in changes {
        put_uv(&mut out, (i - at) as u64);
        at = i;
        out.extend_from_slice(&lat.to_le_bytes());
        out.extend_from_slice(&lon.to_le_bytes());
    }

    for column in columns(
        &b.readings,
        &sensor_of,
        &shapes,
        &shape_of,
        quantities.len(),
    ) {
        put_column(&mut out, &column);
    }
    out
}

/// Run-length pairs (length, value) of a sequence.
fn runs(values: impl Iterator<Item = u32>) -> Vec<(u64, u32)> {
    let mut out: Vec<(u64, u32)> = Vec::new();
    for v in values {
        match out.last_mut() {
            Some((len, last)) if *last == v => *len += 1,
            _ => out.push((1, v)),
        }
    }
    out
}

/// The order in which values are grouped into columns: by (sensor,
/// quantity), columns in order of first appearance. Returns, for each
/// reading's value slot, its column index, and the column count. Shared by
/// both directions so they agree by construction.
fn column_slots(
    sensor_of: &[usize],
    shape_of: &[usize],
    shapes: &[Vec<usize>],
    n_quantities: usize,
) -> (Vec<usize>, usize) {
    let mut index = std::collections::HashMap::new();
    let mut slots = Vec::new();
    for (&s, &shape) in sensor_of.iter().zip(shape_of) {
        for &q in &shapes[shape] {
            let key = s * n_quantities + q;
            let next = index.len();
            slots.push(*index.entry(key).or_insert(next));
        }
    }
    let count = index.len();
    (slots, count)
}

fn columns(
    readings: &[Reading],
    sensor_of: &[usize],
    shapes: &[Vec<usize>],
    shape_of: &[usize],
    n_quantities: usize,
) -> Vec<Vec<f64>> {
    let (slots, count) = column_slots(sensor_of, shape_of, shapes, n_quantities);
    let mut cols = vec![Vec::new(); count];
    let values = readings.iter().flat_map(|r| r.values.iter());
    for (&c, v) in slots.iter().zip(values) {
        cols[c].push(v.value);
    }
    cols
}

/// `m` such that `m as f64 / 10^k` is `v` bit for bit, if there is one.
fn scaled(v: f64, k: u8) -> Option<i64> {
    let m = (v * POW10[k as usize]).round();
    // Beyond 2^53 (or NaN) is not exactly an i64 here.
    if m.is_nan() || m.abs() > 9_007_199_254_740_992.0 {
        return None;
    }
    let m = m as i64;
    ((m as f64 / POW10[k as usize]).to_bits() == v.to_bits()).then_some(m)
}

fn put_column(out: &mut Vec<u8>, col: &[f64]) {
    for k in 0..=MAX_ENCODE_SCALE {
        let ms: Option<Vec<i64>> = col.iter().map(|&v| scaled(v, k)).collect();
        if let Some(ms) = ms {
            out.push(k);
            let mut prev = 0i64;
            for m in ms {
                put_sv(out, m.wrapping_sub(prev));
                prev = m;
            }
            return;
        }
    }
    out.push(MODE_RAW);
    col.iter()
        .for_each(|v| out.extend_from_slice(&v.to_bits().to_le_bytes()));
}

// ---- reading ----

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn uv(&mut self) -> Result<u64, WireError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| malformed("truncated varint"))?;
            self.buf = rest;
            if shift == 63 && b > 1 {
                return Err(malformed("varint overflows u64"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed("varint overflows u64"))
    }

    fn sv(&mut self) -> Result<i64, WireError> {
        let u = self.uv()?;
        Ok((u >> 1) as i64 ^ -((u & 1) as i64))
    }

    /// A count of items that each take at least one more input byte.
    fn count(&mut self, max: usize, what: &str) -> Result<usize, WireError> {
        let c = self.uv()?;
        if c > max as u64 || c > self.buf.len() as u64 {
            return Err(malformed(format!("{what} count {c} out of range")));
        }
        Ok(c as usize)
    }

    /// An index below `len`.
    fn index(&mut self, len: usize, what: &str) -> Result<usize, WireError> {
        let i = self.uv()?;
        if i >= len as u64 {
            return Err(malformed(format!("{what} index {i} out of range")));
        }
        Ok(i as usize)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(malformed("truncated body"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn str(&mut self) -> Result<String, WireError> {
        let len = self.count(MAX_NAME_LEN, "string length")?;
        let bytes = self.bytes(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| malformed("string is not UTF-8"))
    }

    fn f64(&mut self) -> Result<f64, WireError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_bits(u64::from_le_bytes(a)))
    }
}

fn parse(body: &[u8]) -> Result<Batch, WireError> {
    let mut r = Reader { buf: body };
    let device = r.str()?;
    let first_seq = r.uv()?;
    let n = r.uv()?;
    if n == 0 || n > MAX_BATCH_READINGS as u64 {
        return Err(WireError::Invalid(format!(
            "a batch carries 1..={MAX_BATCH_READINGS} readings"
        )));
    }
    let n = n as usize;
    let sensors = strings(&mut r, n, "sensor")?;
    let quantities = strings(&mut r, n * MAX_VALUES_PER_READING, "quantity")?;
    let n_shapes = r.count(n, "shape")?;
    let mut shapes = Vec::with_capacity(n_shapes);
    for _ in 0..n_shapes {
        let len = r.count(MAX_VALUES_PER_READING, "shape length")?;
        let shape = (0..len)
            .map(|_| r.index(quantities.len(), "quantity"))
            .collect::<Result<Vec<_>, _>>()?;
        shapes.push(shape);
    }
    let sensor_of = (0..n)
        .map(|_| r.index(sensors.len(), "sensor"))
        .collect::<Result<Vec<_>, _>>()?;
    let shape_of = (0..n)
        .map(|_| r.index(shapes.len(), "shape"))
        .collect::<Result<Vec<_>, _>>()?;
    check_decoded_size(
        &device,
        &sensors,
        &quantities,
        &shapes,
        &sensor_of,
        &shape_of,
    )?;

    let mut flags = Vec::with_capacity(n);
    let n_runs = r.count(n, "flag run")?;
    for _ in 0..n_runs {
        let len = r.uv()?;
        let f = u32::try_from(r.uv()?).map_err(|_| malformed("flags overflow u32"))?;
        if len == 0 || len > (n - flags.len()) as u64 {
            return Err(malformed("flag runs do not cover the readings"));
        }
        flags.extend(std::iter::repeat_n(f, len as usize));
    }
    if flags.len() != n {
        return Err(malformed("flag runs do not cover the readings"));
    }

    let mut ts = Vec::with_capacity(n);
    let mut ts_state = vec![TsState::default(); sensors.len()];
    let mut prev_any = 0i64;
    for &s in &sensor_of {
        let t = ts_state[s].predict(prev_any).wrapping_add(r.sv()?);
        ts_state[s].update(t);
        ts.push(t);
        prev_any = t;
    }

    let n_changes = r.count(n, "position change")?;
    let mut changes = Vec::with_capacity(n_changes);
    let mut at = 0u64;
    for i in 0..n_changes {
        let gap = r.uv()?;
        if i > 0 && gap == 0 {
            return Err(malformed("two position changes at one reading"));
        }
        at = at.saturating_add(gap);
        if at >= n as u64 {
            return Err(malformed("position change beyond the last reading"));
        }
        changes.push((at as usize, r.f64()?, r.f64()?));
    }
    let mut pos: Vec<Option<(f64, f64)>> = vec![None; sensors.len()];
    let mut next_change = changes.into_iter().peekable();
    let mut positions = Vec::with_capacity(n);
    for (i, &s) in sensor_of.iter().enumerate() {
        if let Some(&(_, lat, lon)) = next_change.peek().filter(|c| c.0 == i) {
            next_change.next();
            pos[s] = Some((lat, lon));
        }
        positions
            .push(pos[s].ok_or_else(|| malformed("a sensor's first reading has no position"))?);
    }

    let (slots, n_columns) = column_slots(&sensor_of, &shape_of, &shapes, quantities.len());
    let mut lens = vec![0usize; n_columns];
    slots.iter().for_each(|&c| lens[c] += 1);
    let mut columns = Vec::with_capacity(n_columns);
    for len in lens {
        columns.push(read_column(&mut r, len)?.into_iter());
    }
    if !r.buf.is_empty() {
        return Err(WireError::TrailingBytes(r.buf.len()));
    }

    let mut slot = slots.into_iter();
    let mut readings = Vec::with_capacity(n);
    for i in 0..n {
        let shape = &shapes[shape_of[i]];
        let mut values = Vec::with_capacity(shape.len());
        for &q in shape {
            // Both iterators were sized from the same slots above.
            let v = slot
                .next()
                .and_then(|c| columns[c].next())
                .ok_or_else(|| malformed("value columns do not match the shapes"))?;
            values.push(Value {
                quantity: quantities[q].clone(),
                value: v,
            });
        }
        let (lat, lon) = positions[i];
        readings.push(Reading {
            sensor: sensors[sensor_of[i]].clone(),
            ts_ms: ts[i],
            lat,
            lon,
            flags: flags[i],
            values,
        });
    }
    Ok(Batch {
        device,
        first_seq,
        readings,
    })
}

fn strings(r: &mut Reader, max: usize, what: &str) -> Result<Vec<String>, WireError> {
    let count = r.count(max, what)?;
    (0..count).map(|_| r.str()).collect()
}

fn read_column(r: &mut Reader, len: usize) -> Result<Vec<f64>, WireError> {
    let mode = *r.bytes(1)?.first().unwrap_or(&MODE_RAW);
    if len > r.buf.len() {
        return Err(malformed("truncated value column"));
    }
    let mut out = Vec::with_capacity(len);
    match mode {
        MODE_RAW => {
            for _ in 0..len {
                out.push(r.f64()?);
            }
        }
        k if k <= MAX_DECODE_SCALE => {
            let mut m = 0i64;
            for _ in 0..len {
                m = m.wrapping_add(r.sv()?);
                out.push(m as f64 / POW10[k as usize]);
            }
        }
        k => return Err(malformed(format!("unknown value column mode {k}"))),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag_round_trip_at_the_edges() {
        for v in [0i64, 1, -1, 63, -64, 64, i64::MAX, i64::MIN, 1 << 40] {
            let mut out = Vec::new();
            put_sv(&mut out, v);
            let mut r = Reader { buf: &out };
            assert_eq!(r.sv().unwrap(), v);
            assert!(r.buf.is_empty());
        }
        // 11 continuation bytes, or a 10th byte above 1, overflow.
        let mut r = Reader {
            buf: &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
        };
        assert!(r.uv().is_err());
    }

    #[test]
    fn short_decimals_use_the_smallest_exact_scale() {
        assert_eq!(scaled(12.3, 1), Some(123));
        assert_eq!(scaled(12.3, 0), None);
        assert_eq!(scaled(0.1 + 0.2, 1), None, "0.30000000000000004 is not 0.3");
        assert_eq!(
            scaled(-0.0, 0),
            None,
            "-0.0 must travel raw to keep its sign"
        );
        assert_eq!(scaled(1e300, 0), None);
        let mut out = Vec::new();
        put_column(&mut out, &[12.3, 12.4, 12.2]);
        assert_eq!(out, vec![1, 246, 1, 2, 3]);
    }
}
