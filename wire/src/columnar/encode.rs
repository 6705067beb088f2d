//! Writing the body of a version-2 batch, section by section in the order
//! of the layout in the module docs, from the first readings of a
//! [`Builder`].

use super::builder::{Builder, Row};
use super::{Dictionaries, TsState, MAX_ENCODE_SCALE, MODE_RAW, POW10};

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

pub(super) fn put_sv(out: &mut Vec<u8>, v: i64) {
    put_uv(out, zigzag(v));
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uv(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The body of the first `n` readings of `b`: everything after the codec
/// byte, uncompressed.
pub(super) fn body(b: &Builder, device: &str, first_seq: u64, n: usize) -> Vec<u8> {
    let d = dictionaries(b, n);
    let rows = b.rows(n);
    let mut out = Vec::with_capacity(64 + n * 12);
    put_header(&mut out, (device, first_seq, n), &d);
    put_flags(&mut out, rows);
    put_timestamps(&mut out, rows, &d);
    put_positions(&mut out, rows, &d);
    for column in columns(b, n, &d) {
        put_column(&mut out, &column);
    }
    out
}

fn dictionaries(b: &Builder, n: usize) -> Dictionaries<&str> {
    let (sensors, quantities) = b.names(n);
    let mut d = Dictionaries {
        sensors: sensors.iter().map(String::as_str).collect(),
        quantities: quantities.iter().map(String::as_str).collect(),
        shapes: Vec::new(),
        sensor_of: Vec::with_capacity(n),
        shape_of: Vec::with_capacity(n),
    };
    for (i, row) in b.rows(n).iter().enumerate() {
        d.sensor_of.push(row.sensor as usize);
        let shape = b.shape(i);
        let known = d
            .shapes
            .iter()
            .position(|s| s.iter().copied().eq(shape.clone().map(|q| q as usize)));
        let index = known.unwrap_or_else(|| {
            d.shapes.push(shape.map(|q| q as usize).collect());
            d.shapes.len() - 1
        });
        d.shape_of.push(index);
    }
    d
}

/// device, first_seq, n, the three dictionaries, and each reading's
/// sensor and shape index.
fn put_header(
    out: &mut Vec<u8>,
    (device, first_seq, n): (&str, u64, usize),
    d: &Dictionaries<&str>,
) {
    put_str(out, device);
    put_uv(out, first_seq);
    put_uv(out, n as u64);
    for dict in [&d.sensors, &d.quantities] {
        put_uv(out, dict.len() as u64);
        dict.iter().for_each(|s| put_str(out, s));
    }
    put_uv(out, d.shapes.len() as u64);
    for s in &d.shapes {
        put_uv(out, s.len() as u64);
        s.iter().for_each(|&q| put_uv(out, q as u64));
    }
    d.sensor_of.iter().for_each(|&s| put_uv(out, s as u64));
    d.shape_of.iter().for_each(|&s| put_uv(out, s as u64));
}

fn put_flags(out: &mut Vec<u8>, rows: &[Row]) {
    let runs = runs(rows.iter().map(|r| r.flags));
    put_uv(out, runs.len() as u64);
    for (len, flags) in runs {
        put_uv(out, len);
        put_uv(out, u64::from(flags));
    }
}

fn put_timestamps(out: &mut Vec<u8>, rows: &[Row], d: &Dictionaries<&str>) {
    let mut ts_state = vec![TsState::default(); d.sensors.len()];
    let mut prev_any = 0i64;
    for (r, &s) in rows.iter().zip(&d.sensor_of) {
        put_sv(out, r.ts_ms.wrapping_sub(ts_state[s].predict(prev_any)));
        ts_state[s].update(r.ts_ms);
        prev_any = r.ts_ms;
    }
}

fn put_positions(out: &mut Vec<u8>, rows: &[Row], d: &Dictionaries<&str>) {
    let mut pos: Vec<Option<(u64, u64)>> = vec![None; d.sensors.len()];
    let mut changes = Vec::new();
    for (i, (r, &s)) in rows.iter().zip(&d.sensor_of).enumerate() {
        let p = (r.lat.to_bits(), r.lon.to_bits());
        if pos[s] != Some(p) {
            pos[s] = Some(p);
            changes.push((i, p));
        }
    }
    put_uv(out, changes.len() as u64);
    let mut at = 0;
    for (i, (lat, lon)) in changes {
        put_uv(out, (i - at) as u64);
        at = i;
        out.extend_from_slice(&lat.to_le_bytes());
        out.extend_from_slice(&lon.to_le_bytes());
    }
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

fn columns(b: &Builder, n: usize, d: &Dictionaries<&str>) -> Vec<Vec<f64>> {
    let (slots, count) = d.column_slots();
    let mut lens = vec![0usize; count];
    slots.iter().for_each(|&c| lens[c] += 1);
    let mut cols: Vec<Vec<f64>> = lens.into_iter().map(Vec::with_capacity).collect();
    for (&c, v) in slots.iter().zip(b.values(n)) {
        cols[c].push(v);
    }
    cols
}

/// `m` such that `m as f64 / 10^k` is `v` bit for bit, if there is one.
pub(super) fn scaled(v: f64, k: u8) -> Option<i64> {
    let m = (v * POW10[k as usize]).round();
    // Beyond 2^53 (or NaN) is not exactly an i64 here.
    if m.is_nan() || m.abs() > 9_007_199_254_740_992.0 {
        return None;
    }
    let m = m as i64;
    ((m as f64 / POW10[k as usize]).to_bits() == v.to_bits()).then_some(m)
}

pub(super) fn put_column(out: &mut Vec<u8>, col: &[f64]) {
    let exact = |k: u8| col.iter().all(|&v| scaled(v, k).is_some());
    if let Some(k) = (0..=MAX_ENCODE_SCALE).find(|&k| exact(k)) {
        out.push(k);
        let mut prev = 0i64;
        for m in col.iter().filter_map(|&v| scaled(v, k)) {
            put_sv(out, m.wrapping_sub(prev));
            prev = m;
        }
        return;
    }
    out.push(MODE_RAW);
    col.iter()
        .for_each(|v| out.extend_from_slice(&v.to_bits().to_le_bytes()));
}
