//! A batch held as columns while it is put together: the edge reads its
//! buffered rows straight into one, without a [`Reading`] and its strings
//! per row, and encodes a batch from its first readings. Sensor ids and
//! quantity names are kept once each; a reading costs its numbers.

use std::collections::HashMap;

use crate::codec::WireError;
use crate::message::{Batch, Reading, Value};

/// Readings in the order they were pushed, ready to encode.
///
/// Invariant: `sensors` and `quantities` list names in order of first
/// appearance among the readings held, so the names the first `n`
/// readings use are a prefix of each list, in the order the encoding's
/// dictionaries give them.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    sensors: Names,
    quantities: Names,
    rows: Vec<Row>,
    /// (quantity index, value) of every reading, in order.
    values: Vec<(u32, f64)>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Row {
    pub sensor: u32,
    /// End of this reading's values in `values`.
    pub values_end: u32,
    pub flags: u32,
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
}

impl Builder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Adds a reading after checking it as [`Reading::check`] does; a
    /// reading that fails is not added.
    pub fn push<'v>(
        &mut self,
        sensor: &str,
        ts_ms: i64,
        (lat, lon): (f64, f64),
        flags: u32,
        values: impl ExactSizeIterator<Item = (&'v str, f64)> + Clone,
    ) -> Result<(), WireError> {
        Reading::check_fields(sensor, ts_ms, (lat, lon), values.clone())?;
        self.push_unchecked(sensor, ts_ms, (lat, lon), flags, values);
        Ok(())
    }

    /// Adds a reading as it is (the encoder of a whole [`Batch`], which
    /// encodes invalid batches too).
    pub(super) fn push_unchecked<'v>(
        &mut self,
        sensor: &str,
        ts_ms: i64,
        (lat, lon): (f64, f64),
        flags: u32,
        values: impl Iterator<Item = (&'v str, f64)>,
    ) {
        let sensor = self.sensors.index(sensor, None);
        // Readings mostly repeat the quantities of the one before, in order.
        let prev = self.values_start(self.rows.len().saturating_sub(1));
        for (k, (quantity, value)) in values.enumerate() {
            let guess = self.values.get(prev + k).map(|v| v.0);
            let q = self.quantities.index(quantity, guess);
            self.values.push((q, value));
        }
        self.rows.push(Row {
            sensor,
            values_end: self.values.len() as u32,
            flags,
            ts_ms,
            lat,
            lon,
        });
    }

    /// Adds `r` (checked as [`Builder::push`] does).
    pub fn push_reading(&mut self, r: &Reading) -> Result<(), WireError> {
        let values = r.values.iter().map(|v| (v.quantity.as_str(), v.value));
        self.push(&r.sensor, r.ts_ms, (r.lat, r.lon), r.flags, values)
    }

    /// Keeps the first `n` readings, and only the names they use.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.rows.len() {
            return;
        }
        let (sensors, quantities) = self.used(n);
        self.rows.truncate(n);
        self.values.truncate(self.values_start(n));
        self.sensors.truncate(sensors);
        self.quantities.truncate(quantities);
    }

    /// How many sensor ids and quantity names the first `n` readings use:
    /// a prefix of each list (names are listed in order of first use).
    fn used(&self, n: usize) -> (usize, usize) {
        let sensors = self.rows[..n].iter().map(|r| r.sensor + 1).max();
        let quantities = self.values[..self.values_start(n)]
            .iter()
            .map(|v| v.0 + 1)
            .max();
        (
            sensors.unwrap_or(0) as usize,
            quantities.unwrap_or(0) as usize,
        )
    }

    /// Reading `i`, built as [`Reading`] (for tests and the format-1
    /// encoding).
    pub fn reading(&self, i: usize) -> Option<Reading> {
        let row = self.rows.get(i)?;
        let values = self.values[self.values_start(i)..row.values_end as usize]
            .iter()
            .map(|&(q, value)| Value {
                quantity: self.quantities.list[q as usize].clone(),
                value,
            })
            .collect();
        Some(Reading {
            sensor: self.sensors.list[row.sensor as usize].clone(),
            ts_ms: row.ts_ms,
            lat: row.lat,
            lon: row.lon,
            flags: row.flags,
            values,
        })
    }

    /// The first `n` readings as a [`Batch`] of `device` from `first_seq`.
    pub fn to_batch(&self, device: &str, first_seq: u64, n: usize) -> Batch {
        Batch {
            device: device.to_owned(),
            first_seq,
            readings: (0..n.min(self.len()))
                .filter_map(|i| self.reading(i))
                .collect(),
        }
    }

    /// What the first `n` readings would take decoded, as
    /// [`super::decoded_bytes`] counts a batch of them from `device`.
    pub fn decoded_bytes(&self, device: &str, n: usize) -> usize {
        let n = n.min(self.len());
        let values: usize = self.values[..self.values_start(n)]
            .iter()
            .map(|&(q, _)| super::VALUE_BYTES + self.quantities.list[q as usize].len())
            .sum();
        let readings: usize = self.rows[..n]
            .iter()
            .map(|r| super::READING_BYTES + self.sensors.list[r.sensor as usize].len())
            .sum();
        super::BATCH_BYTES + device.len() + readings + values
    }

    /// The first `n` readings encoded as [`super::encode`] encodes a batch
    /// of them from `device` starting at `first_seq`.
    pub fn encode(&self, device: &str, first_seq: u64, n: usize) -> Vec<u8> {
        super::compress(super::encode::body(
            self,
            device,
            first_seq,
            n.min(self.len()),
        ))
    }

    /// Where reading `i`'s values start.
    fn values_start(&self, i: usize) -> usize {
        match i.checked_sub(1) {
            Some(prev) => self.rows[prev].values_end as usize,
            None => 0,
        }
    }

    pub(super) fn rows(&self, n: usize) -> &[Row] {
        &self.rows[..n]
    }

    /// Quantity indexes of reading `i`.
    pub(super) fn shape(&self, i: usize) -> impl Iterator<Item = u32> + Clone + '_ {
        self.values[self.values_start(i)..self.rows[i].values_end as usize]
            .iter()
            .map(|v| v.0)
    }

    /// Values of the first `n` readings, in order.
    pub(super) fn values(&self, n: usize) -> impl Iterator<Item = f64> + '_ {
        self.values[..self.values_start(n)].iter().map(|v| v.1)
    }

    /// The sensor ids and quantity names the first `n` readings use.
    pub(super) fn names(&self, n: usize) -> (&[String], &[String]) {
        let (sensors, quantities) = self.used(n);
        (
            &self.sensors.list[..sensors],
            &self.quantities.list[..quantities],
        )
    }
}

/// Names in order of first use, each with its index: a lookup costs the
/// same with ten names or a hostile batch's hundred thousand.
#[derive(Debug, Clone, Default)]
struct Names {
    list: Vec<String>,
    index: HashMap<String, u32>,
}

impl Names {
    /// The index of `name`, added if new; `guess` (a likely index) is
    /// checked first, which spares the hash in the common case.
    fn index(&mut self, name: &str, guess: Option<u32>) -> u32 {
        if let Some(g) = guess.filter(|&g| self.list.get(g as usize).is_some_and(|n| n == name)) {
            return g;
        }
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.list.len() as u32;
        self.list.push(name.to_owned());
        self.index.insert(name.to_owned(), i);
        i
    }

    /// Keeps the first `n` names.
    fn truncate(&mut self, n: usize) {
        for dropped in self.list.drain(n.min(self.list.len())..) {
            self.index.remove(&dropped);
        }
    }
}
