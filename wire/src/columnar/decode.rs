//! Reading the body of a version-2 batch, section by section in the order
//! of the layout in the module docs. Every count is checked against the
//! input left before anything is allocated for it.

use super::{
    malformed, Dictionaries, TsState, BATCH_BYTES, MAX_DECODED_BYTES, MAX_DECODE_SCALE, MODE_RAW,
    POW10, READING_BYTES, VALUE_BYTES,
};
use crate::codec::WireError;
use crate::message::MAX_VALUES_PER_READING;
use crate::message::{Batch, Reading, Value, MAX_BATCH_READINGS, MAX_NAME_LEN};

pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn uv(&mut self) -> Result<u64, WireError> {
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

    pub(super) fn sv(&mut self) -> Result<i64, WireError> {
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

/// Parses an uncompressed body into a batch.
pub(super) fn parse(body: &[u8]) -> Result<Batch, WireError> {
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
    let d = read_dictionaries(&mut r, n)?;
    check_decoded_size(&device, &d)?;
    let flags = read_flags(&mut r, n)?;
    let ts = read_timestamps(&mut r, &d)?;
    let positions = read_positions(&mut r, &d)?;
    let columns = read_columns(&mut r, &d)?;
    if !r.buf.is_empty() {
        return Err(WireError::TrailingBytes(r.buf.len()));
    }
    let readings = assemble(&d, columns, &flags, &ts, &positions)?;
    Ok(Batch {
        device,
        first_seq,
        readings,
    })
}

/// The sensor, quantity and shape dictionaries, then each of the `n`
/// readings' sensor and shape index.
fn read_dictionaries(r: &mut Reader, n: usize) -> Result<Dictionaries<String>, WireError> {
    let sensors = strings(r, n, "sensor")?;
    let quantities = strings(r, n * MAX_VALUES_PER_READING, "quantity")?;
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
    Ok(Dictionaries {
        sensors,
        quantities,
        shapes,
        sensor_of,
        shape_of,
    })
}

fn strings(r: &mut Reader, max: usize, what: &str) -> Result<Vec<String>, WireError> {
    let count = r.count(max, what)?;
    (0..count).map(|_| r.str()).collect()
}

/// [`super::decoded_bytes`] of the batch the dictionaries describe,
/// computed before it is built; `Err` once it passes [`MAX_DECODED_BYTES`].
fn check_decoded_size(device: &str, d: &Dictionaries<String>) -> Result<(), WireError> {
    let shape_bytes: Vec<u64> = d
        .shapes
        .iter()
        .map(|s| {
            s.iter()
                .map(|&q| (VALUE_BYTES + d.quantities[q].len()) as u64)
                .sum()
        })
        .collect();
    let mut total = (BATCH_BYTES + device.len()) as u64;
    for (&s, &shape) in d.sensor_of.iter().zip(&d.shape_of) {
        total += (READING_BYTES + d.sensors[s].len()) as u64 + shape_bytes[shape];
    }
    if total > MAX_DECODED_BYTES as u64 {
        return Err(WireError::TooLarge {
            decoded: total,
            max: MAX_DECODED_BYTES as u64,
        });
    }
    Ok(())
}

/// Each of the `n` readings' flags, from their runs.
fn read_flags(r: &mut Reader, n: usize) -> Result<Vec<u32>, WireError> {
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
    Ok(flags)
}

fn read_timestamps(r: &mut Reader, d: &Dictionaries<String>) -> Result<Vec<i64>, WireError> {
    let mut ts = Vec::with_capacity(d.sensor_of.len());
    let mut ts_state = vec![TsState::default(); d.sensors.len()];
    let mut prev_any = 0i64;
    for &s in &d.sensor_of {
        let t = ts_state[s].predict(prev_any).wrapping_add(r.sv()?);
        ts_state[s].update(t);
        ts.push(t);
        prev_any = t;
    }
    Ok(ts)
}

/// Each reading's (lat, lon), from the list of position changes.
fn read_positions(r: &mut Reader, d: &Dictionaries<String>) -> Result<Vec<(f64, f64)>, WireError> {
    let n = d.sensor_of.len();
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
    let mut pos: Vec<Option<(f64, f64)>> = vec![None; d.sensors.len()];
    let mut next_change = changes.into_iter().peekable();
    let mut positions = Vec::with_capacity(n);
    for (i, &s) in d.sensor_of.iter().enumerate() {
        if let Some(&(_, lat, lon)) = next_change.peek().filter(|c| c.0 == i) {
            next_change.next();
            pos[s] = Some((lat, lon));
        }
        positions
            .push(pos[s].ok_or_else(|| malformed("a sensor's first reading has no position"))?);
    }
    Ok(positions)
}

/// The value columns, and for each value slot of the readings the column
/// it comes from.
struct Columns {
    slots: Vec<usize>,
    columns: Vec<std::vec::IntoIter<f64>>,
}

fn read_columns(r: &mut Reader, d: &Dictionaries<String>) -> Result<Columns, WireError> {
    let (slots, n_columns) = d.column_slots();
    let mut lens = vec![0usize; n_columns];
    slots.iter().for_each(|&c| lens[c] += 1);
    let mut columns = Vec::with_capacity(n_columns);
    for len in lens {
        columns.push(read_column(r, len)?.into_iter());
    }
    Ok(Columns { slots, columns })
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

/// Builds the readings from the sections read.
fn assemble(
    d: &Dictionaries<String>,
    c: Columns,
    flags: &[u32],
    ts: &[i64],
    positions: &[(f64, f64)],
) -> Result<Vec<Reading>, WireError> {
    let Columns { slots, mut columns } = c;
    let mut slot = slots.into_iter();
    let mut readings = Vec::with_capacity(d.sensor_of.len());
    for i in 0..d.sensor_of.len() {
        let shape = &d.shapes[d.shape_of[i]];
        let mut values = Vec::with_capacity(shape.len());
        for &q in shape {
            // Both iterators were sized from the same slots in read_columns.
            let v = slot
                .next()
                .and_then(|c| columns[c].next())
                .ok_or_else(|| malformed("value columns do not match the shapes"))?;
            values.push(Value {
                quantity: d.quantities[q].clone(),
                value: v,
            });
        }
        let (lat, lon) = positions[i];
        readings.push(Reading {
            sensor: d.sensors[d.sensor_of[i]].clone(),
            ts_ms: ts[i],
            lat,
            lon,
            flags: flags[i],
            values,
        });
    }
    Ok(readings)
}
