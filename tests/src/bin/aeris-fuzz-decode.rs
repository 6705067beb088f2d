//! Fuzzes the gateway's whole decode-and-validate path for batches:
//! `aeris_gateway::source::check::<Batch>` (format version 1 postcard and
//! version 2 columnar, plain and zstd, the size caps, `Batch` validation,
//! and the topic's device against the payload's), as the gateway runs it
//! on every `up/batch` message.
//!
//! ```sh
//! cargo run --release -p aeris-tests --bin aeris-fuzz-decode -- [inputs] [seed]
//! cargo run --release -p aeris-tests --bin aeris-fuzz-decode -- --replay FILE
//! ```
//!
//! Inputs (default 1,000,000) are mutations of valid seed batches of both
//! versions (bit flips, random bytes, interesting varints, inserted,
//! deleted, duplicated and spliced ranges; the columnar body mutated in
//! its plain form and sometimes compressed again, so mutations reach the
//! parser behind zstd), random bytes, and seeds sent on another device's
//! topic. For every input it checks: no panic; an accepted batch is valid,
//! names the topic's device, stays under `MAX_DECODED_BYTES`, and survives
//! a columnar round trip; and the heap the decoder took (a counting
//! allocator) stays under [`HEAP_BOUND`]. It prints the counts by outcome,
//! the slowest input and the largest heap (both saved under `$TMPDIR` for
//! `--replay`), and exits 1 (saving the input) at the first failure. Not
//! part of CI: a million inputs take about three minutes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use aeris_wire::columnar::{self, MAX_BODY_BYTES, MAX_DECODED_BYTES};
use aeris_wire::{encode, Batch, Reading, Value};

/// Counts live heap bytes and their high-water mark, to check what a
/// single decode may allocate. The only `unsafe` is forwarding to the
/// system allocator, as `GlobalAlloc` requires.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Most heap one decode may take: the inflated body, the decoded batch
/// and the decoder's own tables (a few vectors of `n` entries), with room
/// for `Vec` doubling.
const HEAP_BOUND: usize = MAX_BODY_BYTES + 3 * MAX_DECODED_BYTES;

const DEVICE: &str = "dev-fuzz";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

fn value(q: &str, v: f64) -> Value {
    Value {
        quantity: q.into(),
        value: v,
    }
}

/// Valid batches of many shapes: one reading, several sensors and shapes,
/// moving sensors, raw and decimal columns, flags, long names, and the
/// worst the size cap allows.
fn seeds() -> Vec<Batch> {
    let reading = |sensor: String, ts_ms: i64, lat: f64, values: Vec<Value>, flags: u32| Reading {
        sensor,
        ts_ms,
        lat,
        lon: 11.5,
        flags,
        values,
    };
    let batch = |first_seq: u64, readings: Vec<Reading>| Batch {
        device: DEVICE.into(),
        first_seq,
        readings,
    };
    let mut out = vec![batch(
        1,
        vec![reading("s".into(), 0, 0.0, vec![value("pm25", 1.5)], 0)],
    )];
    for (n, sensors, moving) in [
        (7, 3, false),
        (60, 6, true),
        (500, 10, false),
        (2_000, 50, true),
    ] {
        out.push(batch(
            1_000 + n as u64,
            (0..n)
                .map(|i| {
                    let s = i % sensors;
                    let mut values = vec![
                        value("pm25", (i % 97) as f64 / 10.0),
                        value("rh", (40 + i % 20) as f64),
                    ];
                    if s % 3 == 0 {
                        values.push(value("model:pm25_nowcast@1", (i as f64).sin()));
                    }
                    if s % 4 == 1 {
                        values.push(value("no2", -0.0));
                    }
                    let lat = if moving {
                        48.0 + i as f64 * 1e-4
                    } else {
                        48.0 + s as f64
                    };
                    reading(
                        format!("sensor-{s}"),
                        1_700_000_000_000 + (i / sensors) as i64 * 10_000 + s as i64,
                        lat,
                        values,
                        (i % 5 == 0) as u32,
                    )
                })
                .collect(),
        ));
    }
    // Long names and many values, under the cap.
    let names: Vec<String> = (0..9).map(|i| format!("{i:0>128}")).collect();
    out.push(batch(
        u64::MAX - 99,
        (0..100)
            .map(|i| {
                let values = names.iter().map(|q| value(q, i as f64)).collect();
                reading("x".repeat(128), i, 90.0, values, u32::MAX)
            })
            .collect(),
    ));
    out
}

/// `readings` readings of one 128-byte sensor, each with `values` values
/// named by 128-byte quantities: a few hundred bytes compressed.
fn heavy(readings: usize, values: usize) -> Batch {
    let names: Vec<String> = (0..values).map(|i| format!("{i:0>128}")).collect();
    Batch {
        device: DEVICE.into(),
        first_seq: 1,
        readings: (0..readings as i64)
            .map(|i| Reading {
                sensor: "s".repeat(128),
                ts_ms: i,
                lat: 1.0,
                lon: 2.0,
                flags: 0,
                values: names.iter().map(|q| value(q, 1.0)).collect(),
            })
            .collect(),
    }
}

/// Seeds near and past the decoded-size cap: the worst batch it allows
/// (valid) and the decode bomb of issue 14 (refused). Decoding them takes
/// milliseconds, so they are picked one time in [`HEAVY_ONE_IN`].
fn heavy_seeds() -> (Vec<Batch>, Vec<Batch>) {
    let mut values = 1;
    while columnar::decoded_bytes(&heavy(10_000, values + 1)) <= MAX_DECODED_BYTES {
        values += 1;
    }
    (vec![heavy(10_000, values)], vec![heavy(10_000, 64)])
}

const HEAVY_ONE_IN: usize = 256;

/// The forms of a seed the mutator starts from: v1 postcard, v2 with a
/// plain body (mutations reach the parser directly) and v2 as encoded.
fn forms(b: &Batch) -> Vec<Vec<u8>> {
    let v2 = columnar::encode(b);
    let mut plain = v2.clone();
    if v2[1] == 1 {
        let body = zstd::bulk::decompress(&v2[2..], MAX_BODY_BYTES).expect("seed inflates");
        plain = [vec![v2[0], 0], body].concat();
    }
    vec![encode(b), plain, v2]
}

const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    63,
    64,
    127,
    128,
    255,
    10_000,
    10_001,
    1 << 32,
    u64::MAX,
];

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// One to four mutations of `input`; the first two bytes (version,
/// codec) are mutated only sometimes, so most inputs reach a parser.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        let from = if rng.chance(16) {
            0
        } else {
            2.min(input.len())
        };
        let span = input.len().saturating_sub(from);
        let at = from + rng.below(span + 1);
        match rng.below(8) {
            0 | 1 if span > 0 => {
                let i = from + rng.below(span);
                input[i] ^= 1 << rng.below(8);
            }
            2 if span > 0 => {
                let i = from + rng.below(span);
                input[i] = rng.next() as u8;
            }
            3 => {
                let v = varint(INTERESTING[rng.below(INTERESTING.len())]);
                let end = (at + v.len()).min(input.len());
                input.splice(at..end, v);
            }
            4 => {
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            5 if span > 0 => {
                let end = (at + 1 + rng.below(16)).min(input.len());
                input.drain(at..end);
            }
            6 if span > 0 => {
                let start = from + rng.below(span);
                let end = (start + 1 + rng.below(32)).min(input.len());
                let copy = input[start..end].to_vec();
                input.splice(at..at, copy);
            }
            _ if !other.is_empty() => {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(64)).min(other.len());
                let end_here = (at + end - start).min(input.len());
                input.splice(at..end_here, other[start..end].iter().copied());
            }
            _ => input.truncate(at),
        }
    }
}

#[derive(Default)]
struct Worst {
    time: Duration,
    time_input: Vec<u8>,
    heap: usize,
    heap_input: Vec<u8>,
    decoded: usize,
}

fn fail(what: &str, input: &[u8]) -> ! {
    let path = std::env::temp_dir().join(format!("aeris-fuzz-failure-{}.bin", std::process::id()));
    let _ = std::fs::write(&path, input);
    eprintln!(
        "FAILURE: {what}; input ({} bytes) saved to {}",
        input.len(),
        path.display()
    );
    std::process::exit(1);
}

/// `--replay FILE`: decodes one saved input (a failure, the slowest) and
/// prints the verdict, time and heap.
fn replay(path: &str) {
    let input = std::fs::read(path).unwrap_or_else(|e| {
        eprintln!("cannot read {path}: {e}");
        std::process::exit(2)
    });
    for _ in 0..3 {
        let base = LIVE.load(Relaxed);
        PEAK.store(base, Relaxed);
        let t0 = Instant::now();
        let verdict = aeris_gateway::source::check::<Batch>(DEVICE, &input, |b| &b.device);
        let took = t0.elapsed();
        let heap = PEAK.load(Relaxed).saturating_sub(base);
        let verdict = match verdict {
            Ok(b) => format!("accepted, {} readings", b.readings.len()),
            Err((reason, e)) => format!("refused: {reason}: {e}"),
        };
        println!(
            "{verdict}; {:.2} ms, heap {:.1} MB",
            took.as_secs_f64() * 1e3,
            heap as f64 / 1e6
        );
    }
}

fn main() {
    if let [flag, path] = &std::env::args().skip(1).collect::<Vec<_>>()[..] {
        if flag == "--replay" {
            return replay(path);
        }
    }
    let mut args = std::env::args().skip(1);
    let inputs: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    let mut rng = Rng(seed | 1);
    let (heavy_valid, bombs) = heavy_seeds();
    let light: Vec<Vec<u8>> = seeds().iter().flat_map(forms).collect();
    let heavy: Vec<Vec<u8>> = heavy_valid.iter().flat_map(forms).collect();
    for c in light.iter().chain(&heavy) {
        if let Err((reason, e)) = aeris_gateway::source::check::<Batch>(DEVICE, c, |b| &b.device) {
            fail(&format!("a seed is refused: {reason}: {e}"), c);
        }
    }
    let heavy: Vec<Vec<u8>> = heavy
        .into_iter()
        .chain(bombs.iter().flat_map(forms))
        .collect();
    // Each corpus holds three forms per seed: v1, v2 plain, v2 as encoded.
    let pick = |rng: &mut Rng| -> &Vec<Vec<u8>> {
        if rng.chance(HEAVY_ONE_IN) {
            &heavy
        } else {
            &light
        }
    };
    // Panics are failures, reported with their input below; keep the
    // default hook quiet.
    std::panic::set_hook(Box::new(|_| {}));
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut worst = Worst::default();
    let start = Instant::now();
    let mut last_report = Instant::now();
    for i in 0..inputs {
        let mut topic_device = DEVICE;
        let input = match rng.below(64) {
            0 => (0..rng.below(256)).map(|_| rng.next() as u8).collect(),
            1 => {
                topic_device = "dev-other";
                let corpus = pick(&mut rng);
                corpus[rng.below(corpus.len())].clone()
            }
            2 | 3 => {
                // A mutated plain columnar body, compressed again.
                let corpus = pick(&mut rng);
                let plain = &corpus[1 + 3 * rng.below(corpus.len() / 3)];
                let mut body = plain[2..].to_vec();
                let other = &light[rng.below(light.len())];
                mutate(&mut rng, &mut body, other);
                let z = zstd::bulk::compress(&body, 1).unwrap_or_default();
                [vec![2, 1], z].concat()
            }
            _ => {
                let corpus = pick(&mut rng);
                let mut input = corpus[rng.below(corpus.len())].clone();
                let other = &light[rng.below(light.len())];
                mutate(&mut rng, &mut input, other);
                input
            }
        };
        let base = LIVE.load(Relaxed);
        PEAK.store(base, Relaxed);
        let t0 = Instant::now();
        let result = std::panic::catch_unwind(|| {
            aeris_gateway::source::check::<Batch>(topic_device, &input, |b| &b.device)
        });
        let took = t0.elapsed();
        let heap = PEAK.load(Relaxed).saturating_sub(base);
        let verdict = match result {
            Err(_) => fail("the decoder panicked", &input),
            Ok(v) => v,
        };
        if heap > worst.heap {
            worst.heap = heap;
            worst.heap_input = input.clone();
        }
        if took > worst.time {
            worst.time = took;
            worst.time_input = input.clone();
        }
        if heap > HEAP_BOUND {
            fail(&format!("one decode took {heap} bytes of heap"), &input);
        }
        let key = match verdict {
            Ok(b) => {
                use aeris_wire::WireMessage;
                if b.validate().is_err() || b.device != topic_device {
                    fail(
                        "an accepted batch is invalid or names another device",
                        &input,
                    );
                }
                let size = columnar::decoded_bytes(&b);
                worst.decoded = worst.decoded.max(size);
                if input[0] == 2 && size > MAX_DECODED_BYTES {
                    fail("an accepted batch is over MAX_DECODED_BYTES", &input);
                }
                if aeris_wire::decode::<Batch>(&columnar::encode(&b))
                    .ok()
                    .as_ref()
                    != Some(&b)
                {
                    fail(
                        "an accepted batch does not survive a columnar round trip",
                        &input,
                    );
                }
                format!("accepted v{}", input[0])
            }
            Err((reason, _)) => format!("refused: {reason}"),
        };
        *outcomes.entry(key).or_default() += 1;
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!("{} inputs, {:.0} s", i + 1, start.elapsed().as_secs_f64());
        }
    }
    let elapsed = start.elapsed();
    println!(
        "{inputs} inputs in {:.1} s ({:.0}/s), seed {seed}, no failure",
        elapsed.as_secs_f64(),
        inputs as f64 / elapsed.as_secs_f64()
    );
    for (k, n) in &outcomes {
        println!("  {k:<32} {n:>10}");
    }
    let save = |name: &str, input: &[u8]| {
        let path = std::env::temp_dir().join(format!("aeris-fuzz-{name}.bin"));
        match std::fs::write(&path, input) {
            Ok(()) => path.display().to_string(),
            Err(e) => format!("not saved: {e}"),
        }
    };
    println!(
        "  slowest input       {:>10.2} ms ({} bytes, version byte {:?}; {})",
        worst.time.as_secs_f64() * 1e3,
        worst.time_input.len(),
        worst.time_input.first(),
        save("slowest", &worst.time_input)
    );
    println!(
        "  largest decode heap {:>10.1} MB ({} bytes, version byte {:?}; bound {:.0} MB; {})",
        worst.heap as f64 / 1e6,
        worst.heap_input.len(),
        worst.heap_input.first(),
        HEAP_BOUND as f64 / 1e6,
        save("largest-heap", &worst.heap_input)
    );
    println!(
        "  largest accepted batch decoded_bytes {:.1} MB (cap {:.1} MB)",
        worst.decoded as f64 / 1e6,
        MAX_DECODED_BYTES as f64 / 1e6
    );
}
